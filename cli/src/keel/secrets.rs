//! `keel secrets-encrypt`: prepare, rotate and list the keys Secrets are encrypted with at
//! rest, in a server's data dir.

use clap::Subcommand;
use keel_schemas::datadir::ServerDir;

#[derive(Subcommand, Debug)]
pub(super) enum SecretsEncryptCommand {
    /// Add a new key that reads but does not write yet. In a cluster, do this first, give
    /// every server the file (`encryption-config.json`) and restart them, then rotate.
    Prepare,
    /// Make the prepared key write (or, with none prepared, a new one: enough on a single
    /// server); the old keys stay, to read. After a restart the server writes with it, and
    /// its leader rewrites every Secret stored under an older key. In a cluster, give every
    /// server the file before restarting them.
    Rotate,
    /// The keys, newest first, and which one writes.
    Status,
}

/// Runs `keel secrets-encrypt COMMAND` on the data dir `data_dir`.
pub(super) fn secrets_encrypt(
    command: SecretsEncryptCommand,
    data_dir: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use keel_apiserver::auth::encryption::EncryptionConfig;
    let path = ServerDir::new(data_dir).encryption_config();
    if !path.exists() {
        return Err(format!(
            "{} does not exist: is {} a server's data dir?",
            path.display(),
            data_dir.display()
        )
        .into());
    }
    let mut config = EncryptionConfig::load_or_create(&path)?;
    match command {
        SecretsEncryptCommand::Prepare => {
            let name = config.prepare();
            config.save(&path)?;
            println!(
                "{name} added: it reads, and does not write yet. Copy {} to every server and restart them, then run rotate.",
                path.display()
            );
            return Ok(());
        }
        SecretsEncryptCommand::Rotate => {
            let name = config.rotate();
            config.save(&path)?;
            println!(
                "{name} now writes (the older keys still read). Copy {} to every server, then restart them: the leader rewrites every Secret with {name}.",
                path.display()
            );
            return Ok(());
        }
        SecretsEncryptCommand::Status => {}
    }
    for entry in &config.resources {
        for provider in &entry.providers {
            match &provider.aesgcm {
                Some(list) => {
                    for (i, key) in list.keys.iter().enumerate() {
                        let role = if i == 0 { "writes and reads" } else { "reads" };
                        println!(
                            "{}: aesgcm key {} ({role})",
                            entry.resources.join(","),
                            key.name
                        );
                    }
                }
                None => println!("{}: identity (reads plaintext)", entry.resources.join(",")),
            }
        }
    }
    Ok(())
}
