//! `keel`: runs a Keel server or a host agent; the commands live in [`keel_cli::keel`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = keel_cli::keel::Cli::parse();
    // Everything Keel writes (keys, tokens, the store, disks) is its owner's alone.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    if let Some(code) = keel_cli::keel::shim(&cli) {
        return code;
    }
    let raised = keel_agent::listen::raise_file_limit();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The listeners' connection caps, not the default of 1024 files, bound what is held.
    if let Err(e) = raised {
        tracing::warn!(error = %e, "cannot raise the limit of open files");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keel: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(keel_cli::keel::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = e.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !msg.contains(&text) {
                    msg.push_str(": ");
                    msg.push_str(&text);
                }
                source = cause.source();
            }
            eprintln!("keel: error: {msg}");
            ExitCode::FAILURE
        }
    }
}
