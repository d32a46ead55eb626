//! `keelctl`: kubectl's verbs and habits for Keel — `apply`, `get`, `describe`, `delete`,
//! `edit`, `diff`, `wait`, `explain`, `cluster status`, `completion` — with kubectl's config
//! (`--kubeconfig`, `$KUBECONFIG`, `~/.keel/config`) and overrides.
//!
//! Modules: `resource` (kind names and paths), `manifest` (YAML/JSON files), `apply` (apply,
//! diff, delete -f), `get` (get, watch, describe, columns), `explain`, `ops` (edit, wait,
//! cluster status), `access` (auth can-i and whoami, tokens, service accounts, kubeconfigs).

mod access;
mod apply;
mod explain;
mod get;
mod manifest;
mod ops;
mod resource;
mod rollout;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use keel_client::kubeconfig::{Kubeconfig, Overrides};
use keel_client::{Client, ClientError};

/// A failed command, as the one line `keelctl` prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CtlError(pub String);

impl From<ClientError> for CtlError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Api { message, code, .. } if !message.is_empty() => {
                CtlError(format!("{message} ({code})"))
            }
            other => CtlError(other.to_string()),
        }
    }
}

/// Manage Keel's objects: kubectl's verbs, for Keel's kinds.
#[derive(Parser, Debug)]
#[command(name = "keelctl", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    global: Global,
}

#[derive(Args, Debug, Clone)]
struct Global {
    /// The kubeconfig file (default: $KUBECONFIG, ~/.keel/config, ~/.kube/config).
    #[arg(long, global = true, env = "KEELCONFIG")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The API server's URL, over the kubeconfig's.
    #[arg(long, short = 's', global = true)]
    server: Option<String>,
    /// A bearer token, over the kubeconfig's.
    #[arg(long, global = true)]
    token: Option<String>,
    /// The CA certificate file to trust, over the kubeconfig's.
    #[arg(long, global = true)]
    certificate_authority: Option<PathBuf>,
    /// The namespace (default: the context's, or `default`).
    #[arg(long, short = 'n', global = true)]
    namespace: Option<String>,
    /// Act as this user (impersonation; the requester must be allowed to impersonate).
    #[arg(long = "as", global = true)]
    impersonate: Option<String>,
    /// Act in this group too (with --as); repeat for more.
    #[arg(long = "as-group", global = true, requires = "impersonate")]
    impersonate_groups: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create or update objects from files, folders or stdin (`-f -`).
    Apply {
        /// Files, folders or `-`.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// List objects of a kind, or show some by name.
    Get(get::GetArgs),
    /// Show an object's spec, status, conditions and recent events.
    Describe {
        /// The kind.
        kind: String,
        /// The object's name.
        name: String,
    },
    /// Delete objects by file, or by kind and name.
    Delete {
        /// Files, folders or `-`.
        #[arg(short = 'f', long = "filename")]
        files: Vec<String>,
        /// The kind, then names (or KIND/NAME).
        args: Vec<String>,
        /// Wait until the objects are gone.
        #[arg(long, default_value_t = false)]
        wait: bool,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Edit an object in $EDITOR, then write it back.
    Edit {
        /// The kind (or KIND/NAME).
        kind: String,
        /// The object's name.
        name: Option<String>,
    },
    /// Show what `apply` would change, as a unified diff; exits 1 when there are changes.
    Diff {
        /// Files, folders or `-`.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<String>,
    },
    /// Wait until an object has a condition (`--for=condition=Ready`) or is gone (`--for=delete`).
    Wait {
        /// KIND/NAME.
        target: String,
        /// `condition=NAME[=STATUS]` or `delete`.
        #[arg(long = "for")]
        condition: String,
        /// How long to wait, in seconds (or with an `s` suffix).
        #[arg(long, default_value = "30s")]
        timeout: String,
    },
    /// Start a VM (KubeVirt's `virtctl start`): a Halted VM runs Always again; a Manual one
    /// is started once.
    Start {
        /// vm/NAME.
        target: String,
    },
    /// Stop a VM: an Always or RerunOnFailure VM becomes Halted; a Manual one is shut down.
    Stop {
        /// vm/NAME.
        target: String,
    },
    /// Restart a VM's guest (shut down, then started again).
    Restart {
        /// vm/NAME.
        target: String,
    },
    /// An object's rollouts: its Revisions, and undo, pause and resume.
    Rollout {
        #[command(subcommand)]
        command: RolloutCommand,
    },
    /// Print a VM's serial console, read from its node (`logs vm/NAME`).
    Logs {
        /// KIND/NAME (a VirtualMachine).
        target: String,
        /// Keep printing what the console prints.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines (-1: all).
        #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
        tail: i64,
        /// At most this many bytes (the last ones).
        #[arg(long)]
        limit_bytes: Option<u64>,
    },
    /// Describe a kind or a field, from the schemas.
    Explain {
        /// KIND or KIND.field.path.
        target: String,
    },
    /// The cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// The kinds the API serves.
    ApiResources,
    /// What the requester may do, and who it is.
    Auth {
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Make a token or a service account.
    Create {
        #[command(subcommand)]
        command: CreateCommand,
    },
    /// Kubeconfig files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a shell completion script.
    Completion {
        /// bash, zsh or fish.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
enum RolloutCommand {
    /// List the revisions of KIND/NAME (their phase and outcome), or print one's spec.
    History {
        /// KIND/NAME (vm, lb, dnszone).
        target: String,
        /// Print this revision's spec.
        #[arg(long)]
        revision: Option<u64>,
    },
    /// Show the newest revision of KIND/NAME and wait until it is healthy (exit 0) or rolled
    /// back or failed (exit 1).
    Status {
        /// KIND/NAME.
        target: String,
        /// Wait for an outcome (`--watch=false`: print and return).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
        /// How long to wait, in seconds (or with an `s` suffix).
        #[arg(long, default_value = "600s")]
        timeout: String,
    },
    /// Write an earlier revision's spec back: the last good one before the current spec, or
    /// --to-revision N. Only the spec: a VM's disks keep their data (an automatic rollback
    /// restores the snapshot taken before the failing change).
    Undo {
        /// KIND/NAME.
        target: String,
        /// The revision to return to.
        #[arg(long)]
        to_revision: Option<u64>,
    },
    /// Stop automatic rollbacks of KIND/NAME (revisions are still recorded).
    Pause {
        /// KIND/NAME.
        target: String,
    },
    /// Allow automatic rollbacks of KIND/NAME again; an overdue unhealthy change is rolled
    /// back at once.
    Resume {
        /// KIND/NAME.
        target: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuthCommand {
    /// Whether the requester may do VERB on RESOURCE (prints yes or no; exits 0 or 1), or
    /// with --list every rule it holds in the namespace.
    CanI {
        /// The verb (get, list, create, *...); with --list, nothing.
        verb: Option<String>,
        /// RESOURCE[.GROUP][/SUBRESOURCE] (vm, virtualmachines/log, secrets), or a path
        /// such as /metrics.
        resource: Option<String>,
        /// The object's name.
        name: Option<String>,
        /// List every rule instead.
        #[arg(long)]
        list: bool,
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Who the server says the requester is.
    Whoami,
}

#[derive(Subcommand, Debug)]
enum CreateCommand {
    /// Print a bearer token: a service account's (`create token NAME`, through TokenRequest)
    /// or a user's (`create token --user NAME`, a UserToken).
    Token {
        /// The service account.
        #[arg(required_unless_present = "user", conflicts_with = "user")]
        serviceaccount: Option<String>,
        /// Make a user token for this user instead.
        #[arg(long)]
        user: Option<String>,
        /// A group of the user; repeat for more.
        #[arg(long = "group", requires = "user")]
        groups: Vec<String>,
        /// How long a user token works (720h, 30d; default: until revoked).
        #[arg(long, requires = "user")]
        ttl: Option<String>,
        /// What a user token is for.
        #[arg(long, requires = "user")]
        description: Option<String>,
        /// How long a service account token works (default 1h, at least 10m).
        #[arg(long, conflicts_with = "user")]
        duration: Option<String>,
        /// An audience of a service account token; repeat for more.
        #[arg(long = "audience", conflicts_with = "user")]
        audiences: Vec<String>,
    },
    /// A ServiceAccount in the namespace.
    Serviceaccount {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Write a kubeconfig for a user (a new UserToken) or a service account (a token from
    /// TokenRequest), against this cluster and namespace.
    CreateKubeconfig {
        /// For this user.
        #[arg(
            long,
            required_unless_present = "serviceaccount",
            conflicts_with = "serviceaccount"
        )]
        user: Option<String>,
        /// A group of the user; repeat for more.
        #[arg(long = "group", requires = "user")]
        groups: Vec<String>,
        /// For this service account of the namespace.
        #[arg(long)]
        serviceaccount: Option<String>,
        /// How long the token works (a user's: until revoked by default; a service
        /// account's: 1h by default).
        #[arg(long)]
        ttl: Option<String>,
        /// The file to write.
        #[arg(short = 'o', long)]
        output: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Every server's role, term and applied index.
    Status,
}

/// What every command works with: a client, the default namespace and the cluster's CA.
pub(crate) struct Ctx {
    pub client: Client,
    pub namespace: String,
    pub ca_pem: String,
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Result<ExitCode, CtlError> {
    match &cli.command {
        Command::Completion { shell } => {
            clap_complete::generate(
                *shell,
                &mut Cli::command(),
                "keelctl",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Explain { target } => {
            print!("{}", explain::explain(target)?);
            return Ok(ExitCode::SUCCESS);
        }
        Command::ApiResources => {
            println!(
                "{:<18} {:<12} {:<24} {:<11} KIND",
                "NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED"
            );
            for k in keel_schemas::registry() {
                println!(
                    "{:<18} {:<12} {:<24} {:<11} {}",
                    k.plural,
                    k.short_names.join(","),
                    k.api_version(),
                    k.scope == keel_schemas::Scope::Namespaced,
                    k.kind
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let ctx = connect(&cli.global)?;
    match cli.command {
        Command::Apply { files } => apply::apply(&ctx, &files).await.map(|()| ExitCode::SUCCESS),
        Command::Get(args) => get::get(&ctx, &args).await.map(|()| ExitCode::SUCCESS),
        Command::Describe { kind, name } => get::describe(&ctx, &kind, &name)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Delete {
            files,
            args,
            wait,
            timeout,
        } => apply::delete(&ctx, &files, &args, wait.then_some(timeout))
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Edit { kind, name } => ops::edit(&ctx, &kind, name.as_deref())
            .await
            .map(|()| ExitCode::SUCCESS),
        // kubectl's convention: 0 the same, 1 different, more for an error.
        Command::Start { target } => ops::power(&ctx, &target, ops::Power::Start)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Stop { target } => ops::power(&ctx, &target, ops::Power::Stop)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Restart { target } => ops::power(&ctx, &target, ops::Power::Restart)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Rollout { command } => rollout_command(&ctx, command).await,
        Command::Logs {
            target,
            follow,
            tail,
            limit_bytes,
        } => ops::logs(&ctx, &target, follow, tail, limit_bytes)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Diff { files } => match apply::diff(&ctx, &files).await {
            Ok(code) => Ok(code),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Wait {
            target,
            condition,
            timeout,
        } => ops::wait(&ctx, &target, &condition, &timeout)
            .await
            .map(|()| ExitCode::SUCCESS),
        Command::Cluster {
            command: ClusterCommand::Status,
        } => ops::cluster_status(&ctx).await.map(|()| ExitCode::SUCCESS),
        Command::Auth { command } => auth(&ctx, command).await,
        Command::Create { command } => create(&ctx, command).await.map(|()| ExitCode::SUCCESS),
        Command::Config {
            command:
                ConfigCommand::CreateKubeconfig {
                    user,
                    groups,
                    serviceaccount,
                    ttl,
                    output,
                },
        } => create_kubeconfig(&ctx, user, groups, serviceaccount, ttl, output).await,
        Command::Completion { .. } | Command::Explain { .. } | Command::ApiResources => {
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `keelctl rollout ...`: 0 when the rollout is healthy (or the command did its part), 1
/// when `status` finds it is not.
async fn rollout_command(ctx: &Ctx, command: RolloutCommand) -> Result<ExitCode, CtlError> {
    let (target, what) = match command {
        RolloutCommand::History { target, revision } => {
            (target, rollout::Rollout::History { revision })
        }
        RolloutCommand::Status {
            target,
            watch,
            timeout,
        } => {
            let secs: u64 = timeout
                .trim_end_matches('s')
                .parse()
                .map_err(|_| CtlError(format!("--timeout {timeout:?}: give seconds, like 600s")))?;
            let timeout = std::time::Duration::from_secs(secs.min(86_400));
            (target, rollout::Rollout::Status { watch, timeout })
        }
        RolloutCommand::Undo {
            target,
            to_revision,
        } => (target, rollout::Rollout::Undo { to: to_revision }),
        RolloutCommand::Pause { target } => (target, rollout::Rollout::Pause),
        RolloutCommand::Resume { target } => (target, rollout::Rollout::Resume),
    };
    rollout::rollout(ctx, &target, what).await.map(|ok| {
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    })
}

/// `keelctl config create-kubeconfig`: a kubeconfig with a new token for a user (and
/// groups) or a service account.
async fn create_kubeconfig(
    ctx: &Ctx,
    user: Option<String>,
    groups: Vec<String>,
    serviceaccount: Option<String>,
    ttl: Option<String>,
    output: std::path::PathBuf,
) -> Result<ExitCode, CtlError> {
    let (name, token) = match (user, serviceaccount) {
        (Some(user), _) => {
            let (_, token) = access::user_token(ctx, &user, &groups, ttl.as_deref(), None).await?;
            (user, token)
        }
        (None, Some(sa)) => {
            let token = access::service_account_token(ctx, &sa, ttl.as_deref(), &[]).await?;
            (
                keel_schemas::identity::service_account_user(&ctx.namespace, &sa),
                token,
            )
        }
        (None, None) => return Err(CtlError("give --user or --serviceaccount".into())),
    };
    access::write_kubeconfig(ctx, &ctx.ca_pem, &output, &name, &token)?;
    println!("wrote {} for {name}", output.display());
    Ok(ExitCode::SUCCESS)
}

async fn auth(ctx: &Ctx, command: AuthCommand) -> Result<ExitCode, CtlError> {
    match command {
        AuthCommand::CanI { list: true, .. } => {
            access::can_i_list(ctx).await.map(|()| ExitCode::SUCCESS)
        }
        AuthCommand::CanI {
            verb: Some(verb),
            resource: Some(resource),
            name,
            all_namespaces,
            list: false,
        } => {
            let ask = access::CanI {
                verb,
                resource,
                name,
                all_namespaces,
            };
            access::can_i(ctx, &ask).await.map(|yes| {
                if yes {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            })
        }
        AuthCommand::CanI { .. } => Err(CtlError("give VERB and RESOURCE, or --list".into())),
        AuthCommand::Whoami => access::whoami(ctx).await.map(|()| ExitCode::SUCCESS),
    }
}

async fn create(ctx: &Ctx, command: CreateCommand) -> Result<(), CtlError> {
    match command {
        CreateCommand::Token {
            user: Some(user),
            groups,
            ttl,
            description,
            ..
        } => {
            let (name, token) =
                access::user_token(ctx, &user, &groups, ttl.as_deref(), description.as_deref())
                    .await?;
            eprintln!("usertoken.keel.dev/{name} created (delete it to revoke the token)");
            println!("{token}");
            Ok(())
        }
        CreateCommand::Token {
            serviceaccount: Some(sa),
            duration,
            audiences,
            ..
        } => {
            println!(
                "{}",
                access::service_account_token(ctx, &sa, duration.as_deref(), &audiences).await?
            );
            Ok(())
        }
        CreateCommand::Token { .. } => Err(CtlError("give a service account, or --user".into())),
        CreateCommand::Serviceaccount { name } => access::create_service_account(ctx, &name).await,
    }
}

/// Resolves the kubeconfig and overrides into a client.
fn connect(global: &Global) -> Result<Ctx, CtlError> {
    let overrides = Overrides {
        kubeconfig: global.kubeconfig.clone(),
        context: global.context.clone(),
        server: global.server.clone(),
        token: global.token.clone(),
        certificate_authority: global.certificate_authority.clone(),
        impersonate: global.impersonate.clone(),
        impersonate_groups: global.impersonate_groups.clone(),
    };
    let config = match Kubeconfig::default_path(&overrides) {
        Some(path) => Kubeconfig::load(&path)?,
        None => Kubeconfig::default(),
    };
    let connection = config.resolve(&overrides)?;
    Ok(Ctx {
        client: connection.client()?,
        namespace: global.namespace.clone().unwrap_or(connection.namespace),
        ca_pem: connection.ca_pem,
    })
}
