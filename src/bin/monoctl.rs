//! `monoctl`: log in to Monoskope and use its clusters with kubectl.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};
use monoskope::config::go_duration;
use monoskope::monoctl::cluster_manifest::{ClusterSource, cluster_manifest};
use monoskope::monoctl::config::MonoctlConfig;
use monoskope::monoctl::credentials::{CredentialRequest, cluster_credentials};
use monoskope::monoctl::kubeconfig::{self, ContextEntry};
use monoskope::monoctl::login::{LoginOptions, login};
use monoskope::monoctl::session::Session;
use monoskope::monoctl::{MonoctlError, cache, client::IssuerClient};

#[derive(Parser)]
#[command(name = "monoctl", version, about = "Log in to Monoskope and reach its Kubernetes clusters with kubectl")]
struct Cli {
    /// Issuer URL, overriding the configured one.
    #[arg(long, global = true, env = "MONOCTL_SERVER")]
    server: Option<String>,
    /// CA certificate that signs the issuer's TLS certificate.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Log in through your identity provider in a browser.
    Login(LoginArgs),
    /// Remove the session and every cached cluster token.
    Logout,
    /// Show resources.
    #[command(subcommand)]
    Get(GetCommand),
    /// Create kubeconfig entries or cluster manifests.
    #[command(subcommand)]
    Create(CreateCommand),
    /// Print the version.
    Version,
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
}

#[derive(clap::Args, Clone)]
struct LoginArgs {
    /// Print the login URL instead of opening a browser.
    #[arg(long)]
    no_browser: bool,
    /// How long to wait for the browser, as a Go duration.
    #[arg(long, default_value = "5m", value_parser = go_duration::parse)]
    timeout: Duration,
    /// Loopback port for the login callback; 0 picks a free port.
    #[arg(long, default_value_t = 0)]
    callback_port: u16,
}

#[derive(Subcommand)]
enum GetCommand {
    /// List the clusters and roles you may use.
    Clusters,
    /// Print an ExecCredential for kubectl (used by kubeconfig entries).
    ClusterCredentials {
        /// Cluster name, as `monoctl get clusters` lists it.
        cluster: String,
        /// Role on that cluster, such as `default`.
        role: String,
        /// Options of the login that runs when the session has expired and
        /// kubectl reports an interactive terminal.
        #[command(flatten)]
        login: LoginArgs,
    },
}

#[derive(Subcommand)]
enum CreateCommand {
    /// Add a context per cluster and role you may use to your kubeconfig.
    Kubeconfig {
        /// Kubeconfig to update [default: first of $KUBECONFIG, else ~/.kube/config].
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Command kubectl runs for credentials.
        #[arg(long, default_value = "monoctl")]
        exec_command: String,
    },
    /// Print a MonoskopeCluster manifest for an existing cluster.
    Cluster {
        /// Cluster name (a DNS label).
        name: String,
        /// Namespace of the MonoskopeCluster resource.
        #[arg(long, default_value = "monoskope")]
        namespace: String,
        /// Read the API server and CA from this kubeconfig.
        #[arg(long, conflicts_with = "api_server")]
        from_kubeconfig: Option<PathBuf>,
        /// Context of --from-kubeconfig [default: its current context].
        #[arg(long, requires = "from_kubeconfig")]
        context: Option<String>,
        /// API server URL, with --api-server-ca-file.
        #[arg(long, requires = "api_server_ca_file")]
        api_server: Option<String>,
        /// CA certificate of the API server.
        #[arg(long)]
        api_server_ca_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), MonoctlError> {
    match cli.command {
        Command::Get(GetCommand::ClusterCredentials { cluster, role, login }) => {
            let request = CredentialRequest {
                cluster,
                role,
                server: cli.server,
                ca_file: cli.ca_file,
                login: login_options(&login),
            };
            println!("{}", cluster_credentials(&request)?);
            Ok(())
        }
        Command::Version => {
            println!("monoctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "monoctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Create(CreateCommand::Cluster {
            name,
            namespace,
            from_kubeconfig,
            context,
            api_server,
            api_server_ca_file,
        }) => {
            let source = match (&from_kubeconfig, &api_server, &api_server_ca_file) {
                (Some(path), _, _) => ClusterSource::Kubeconfig { path, context: context.as_deref() },
                (None, Some(server), Some(ca_file)) => ClusterSource::Explicit { server, ca_file },
                _ => {
                    return Err(MonoctlError::InvalidInput(
                        "pass --from-kubeconfig FILE, or --api-server URL with --api-server-ca-file FILE".into(),
                    ));
                }
            };
            print!("{}", cluster_manifest(&name, &namespace, source)?);
            Ok(())
        }
        Command::Logout => logout(cli.server.as_deref()),
        command => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| MonoctlError::InvalidInput(format!("cannot start the async runtime: {err}")))?;
            runtime.block_on(run_online(command, cli.server, cli.ca_file))
        }
    }
}

async fn run_online(command: Command, server: Option<String>, ca_file: Option<PathBuf>) -> Result<(), MonoctlError> {
    let mut config = MonoctlConfig::load()?;
    let server = config.server(server.as_deref())?;
    let ca_file = ca_file.or(config.ca_file.clone());
    let client = IssuerClient::new(&server, ca_file.as_deref())?;

    match command {
        Command::Login(args) => {
            let session = login(&client, &login_options(&args)).await?;
            config.server = Some(server.clone());
            config.ca_file = ca_file.map(|f| std::path::absolute(&f).unwrap_or(f));
            config.save()?;
            let until =
                jiff::Timestamp::from_second(session.expires_at as i64).map(|t| t.to_string()).unwrap_or_default();
            println!("Logged in to {server} as {} until {until}.", session.email);
            Ok(())
        }
        Command::Get(GetCommand::Clusters) => {
            let session = valid_session(&server)?;
            let list = client.clusters(&session.token).await?;
            if list.clusters.is_empty() {
                println!("No clusters: ask your platform team to add you to a role of a MonoskopeCluster.");
                return Ok(());
            }
            println!("{:<24} {:<24} {:<48} ROLES", "NAME", "DISPLAY NAME", "API SERVER");
            for cluster in list.clusters {
                let roles: Vec<String> =
                    cluster.roles.iter().map(|r| format!("{} ({})", r.name, r.cluster_role)).collect();
                println!(
                    "{:<24} {:<24} {:<48} {}",
                    cluster.name,
                    cluster.display_name.unwrap_or_default(),
                    cluster.api_server_address,
                    roles.join(", ")
                );
            }
            Ok(())
        }
        Command::Create(CreateCommand::Kubeconfig { kubeconfig: flag, exec_command }) => {
            let session = valid_session(&server)?;
            let list = client.clusters(&session.token).await?;
            let entries: Vec<ContextEntry> = list
                .clusters
                .iter()
                .flat_map(|cluster| {
                    cluster.roles.iter().map(|role| ContextEntry {
                        cluster: cluster.name.clone(),
                        role: role.name.clone(),
                        server: cluster.api_server_address.clone(),
                        ca_bundle: cluster.ca_bundle.clone(),
                    })
                })
                .collect();

            let path = kubeconfig::target_path(flag.as_deref());
            let merged = kubeconfig::merge(kubeconfig::read(&path)?, &entries, &exec_command);
            kubeconfig::write(&path, &merged)?;

            let noun = if entries.len() == 1 { "context" } else { "contexts" };
            println!("kubeconfig {} updated with {} {noun}:", path.display(), entries.len());
            for entry in &entries {
                println!("  {}", entry.name());
            }
            println!(
                "\nList them with `kubectl config get-contexts`, switch with `kubectl config use-context <CONTEXTNAME>`."
            );
            Ok(())
        }
        _ => Err(MonoctlError::InvalidInput("this command runs without the issuer".into())),
    }
}

fn valid_session(server: &str) -> Result<Session, MonoctlError> {
    let session = Session::load(server).ok_or_else(|| MonoctlError::NotLoggedIn { server: server.into() })?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    if !session.is_valid_at(now) {
        return Err(MonoctlError::SessionExpired { server: server.into() });
    }
    Ok(session)
}

fn logout(server: Option<&str>) -> Result<(), MonoctlError> {
    let removed = cache::clear_all()
        .map_err(|source| MonoctlError::Cache { path: monoskope::monoctl::paths::cache_dir(), source })?;
    let target = server.map(|s| format!(" from {s}")).unwrap_or_default();
    match removed {
        0 => println!("Logged out{target}: there was no session or cached token."),
        1 => println!("Logged out{target}: removed 1 session or cached token."),
        n => println!("Logged out{target}: removed {n} sessions and cached tokens."),
    }
    Ok(())
}

fn login_options(args: &LoginArgs) -> LoginOptions {
    LoginOptions { no_browser: args.no_browser, timeout: args.timeout, callback_port: args.callback_port }
}
