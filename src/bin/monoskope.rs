//! `monoskope`: the issuer server and its tools.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kube::CustomResourceExt;
use monoskope::config::{Config, UpstreamConfig, go_duration};
use monoskope::operator::{self, LeaseSettings, OperatorOptions};
use monoskope::registry::Registry;
use monoskope::render::{self, IssuerSettings};
use monoskope::resource::MonoskopeCluster;
use monoskope::standalone::{self, KeyFiles, Standalone, dev};
use monoskope::token::{Identity, TokenIssuer};

#[derive(Parser)]
#[command(name = "monoskope", version, about = "OpenID Connect issuer of cluster-scoped tokens for kube-apiserver")]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator in Kubernetes: reconcile MonoskopeClusters, follow
    /// the cert-manager signing key, and serve the issuer.
    Run(RunArgs),
    /// Serve the issuer from files: cluster manifests and a signing key.
    Serve(ServeArgs),
    /// Print the MonoskopeCluster CustomResourceDefinition as YAML.
    Crd,
    /// Print what a cluster's kube-apiserver needs to trust this issuer.
    Render(RenderArgs),
    /// Mint a session token for automation or a break-glass login.
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file (YAML).
    #[arg(long, required_unless_present = "dev")]
    config: Option<PathBuf>,
    /// Generate a CA, a TLS certificate and a signing key into --state-dir
    /// and serve the example clusters: a complete local issuer in one command.
    #[arg(long)]
    dev: bool,
    /// Address to listen on [dev default: 127.0.0.1:8443].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the key history and, with --dev, generated material
    /// [dev default: .monoskope-dev].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Directory of MonoskopeCluster manifests [dev default: examples/clusters].
    #[arg(long)]
    clusters_dir: Option<PathBuf>,
    /// Directory holding tls.key (and tls.crt) of the signing key.
    #[arg(long)]
    signing_key_dir: Option<PathBuf>,
    /// Exact issuer URL, overriding the configuration.
    #[arg(long)]
    issuer: Option<String>,
    /// Issuer URL of the identity provider users log in with.
    #[arg(long, requires_all = ["upstream_client_id", "upstream_client_secret_file"])]
    upstream_issuer: Option<String>,
    /// Client ID of Monoskope at the identity provider.
    #[arg(long, requires = "upstream_issuer")]
    upstream_client_id: Option<String>,
    /// File holding the client secret of Monoskope at the identity provider.
    #[arg(long, requires = "upstream_issuer")]
    upstream_client_secret_file: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Configuration file (YAML).
    #[arg(long)]
    config: PathBuf,
    /// Namespace whose MonoskopeClusters are reconciled, overriding
    /// watchNamespace; "" for all namespaces.
    #[arg(long, env = "MONOSKOPE_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address to listen on, overriding the configuration.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Name of the Lease that elects the leader.
    #[arg(long, env = "MONOSKOPE_LEASE_NAME", default_value = "monoskope-operator")]
    lease_name: String,
    /// Namespace of the Lease [default: the signing certificate's namespace].
    #[arg(long, env = "MONOSKOPE_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// How long the Lease is valid without renewal, as a Go duration.
    #[arg(long, value_parser = go_duration::parse, default_value = "15s")]
    lease_duration: std::time::Duration,
    /// Identity of this replica in the Lease [default: $POD_NAME, else the
    /// host name].
    #[arg(long)]
    identity: Option<String>,
    /// Secret, in the signing certificate's namespace, that records the
    /// published signing keys.
    #[arg(long, default_value = "monoskope-signing-keys")]
    key_history_secret: String,
}

#[derive(clap::Args)]
struct ConfigSource {
    /// Configuration file (YAML).
    #[arg(long, conflicts_with = "state_dir", required_unless_present = "state_dir")]
    config: Option<PathBuf>,
    /// State directory of `serve --dev`; reads its config.yaml.
    #[arg(long)]
    state_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RenderArgs {
    /// Cluster name (spec.clusterName or metadata.name).
    cluster: String,
    #[command(flatten)]
    source: ConfigSource,
    /// Directory of MonoskopeCluster manifests, overriding the configuration.
    #[arg(long)]
    clusters_dir: Option<PathBuf>,
    /// Section to print.
    #[arg(long, value_enum, default_value = "all")]
    output: RenderOutput,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RenderOutput {
    All,
    Flags,
    AuthenticationConfig,
    Gardener,
    Rbac,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[command(flatten)]
    source: ConfigSource,
    /// Verified e-mail address of the user.
    #[arg(long)]
    user: String,
    /// Group of the user; repeat for several.
    #[arg(long = "group")]
    groups: Vec<String>,
    /// Display name of the user.
    #[arg(long)]
    name: Option<String>,
    /// Lifetime as a Go duration such as 15m [default: sessionLifetime].
    #[arg(long, value_parser = go_duration::parse)]
    lifetime: Option<std::time::Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Run(args) => run_operator(args).await,
        Command::Serve(args) => serve(args).await,
        Command::Crd => {
            print!("{}", serde_yaml_ng::to_string(&MonoskopeCluster::crd())?);
            Ok(())
        }
        Command::Render(args) => render_cluster(args),
        Command::Token(args) => mint_token(args),
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(|| LossyStderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Stderr that drops what it cannot write. tracing-subscriber reports a
/// failed write with `eprintln!`, which panics when stderr is a closed pipe
/// and would take down the task that logged, such as the shutdown handler.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = if args.dev {
        let listen = args.listen.unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8443)));
        let state_dir = args.state_dir.clone().unwrap_or_else(|| PathBuf::from(".monoskope-dev"));
        let clusters_dir = args.clusters_dir.clone().unwrap_or_else(|| PathBuf::from("examples/clusters"));
        if !clusters_dir.is_dir() {
            bail!(
                "clusters directory {} not found: run from the repository root or pass --clusters-dir",
                standalone::display_path(&clusters_dir)
            );
        }
        dev::prepare(&state_dir, listen, &clusters_dir).context("failed to prepare the dev state directory")?
    } else {
        let path = args.config.as_deref().context("--config is required without --dev")?;
        Config::load(path)?
    };
    apply_overrides(&mut config, &args)?;

    let standalone = Standalone::load(config).context("failed to start the standalone issuer")?;
    if args.dev {
        print_dev_guide(&standalone, args.state_dir.as_deref().unwrap_or(Path::new(".monoskope-dev")))?;
    }
    standalone
        .serve(shutdown_signal(), |addr| tracing::info!(%addr, "Issuer listening"))
        .await
        .context("issuer stopped")?;
    Ok(())
}

async fn run_operator(args: RunArgs) -> anyhow::Result<()> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    let identity = match args.identity.or_else(|| std::env::var("POD_NAME").ok().filter(|n| !n.is_empty())) {
        Some(identity) => identity,
        None => host_name().context("cannot tell this replica's identity: set --identity or POD_NAME")?,
    };
    let options = OperatorOptions {
        watch_namespace: args.namespace.unwrap_or_else(|| config.watch_namespace.clone()),
        lease: LeaseSettings {
            name: args.lease_name,
            namespace: args.lease_namespace.unwrap_or_else(|| config.signing_certificate.namespace.clone()),
            identity,
            duration: args.lease_duration,
        },
        history_secret: args.key_history_secret,
    };
    operator::run(config, options, shutdown_signal(), |addr| tracing::info!(%addr, "Issuer listening"))
        .await
        .context("operator stopped")?;
    Ok(())
}

fn host_name() -> anyhow::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").context("failed to read the host name")?;
    Ok(name.trim().to_string())
}

fn apply_overrides(config: &mut Config, args: &ServeArgs) -> anyhow::Result<()> {
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if !args.dev {
        if let Some(dir) = &args.state_dir {
            config.state_dir = dir.clone();
        }
        if let Some(dir) = &args.clusters_dir {
            config.clusters_dir = dir.clone();
        }
    }
    if let Some(dir) = &args.signing_key_dir {
        config.signing_key_dir = dir.clone();
    }
    if let Some(issuer) = &args.issuer {
        config.issuer = issuer.clone();
    }
    if let (Some(issuer), Some(client_id), Some(secret_file)) =
        (&args.upstream_issuer, &args.upstream_client_id, &args.upstream_client_secret_file)
    {
        let secret_file = std::path::absolute(secret_file).unwrap_or_else(|_| secret_file.clone());
        config.upstream = Some(UpstreamConfig::new(issuer.clone(), client_id.clone(), secret_file));
    }
    config.check()?;
    Ok(())
}

/// Prints what a first-time user needs: the issuer, a token command and the
/// kube-apiserver flags of each example cluster.
fn print_dev_guide(standalone: &Standalone, state_dir: &Path) -> anyhow::Result<()> {
    let settings = standalone.issuer_settings()?;
    let state_dir = standalone::display_path(state_dir);
    println!("Monoskope dev issuer: {}", settings.issuer);
    println!("  CA certificate:  {state_dir}/ca.crt");
    println!("  Signing key:     {state_dir}/signing/tls.key (kid {})", standalone.keys().load().signing().kid());
    println!(
        "  Discovery:       curl --cacert {state_dir}/ca.crt {}/.well-known/openid-configuration",
        settings.issuer
    );
    println!("  Session token:   monoskope token --state-dir {state_dir} --user jane@example.com --group developers");
    println!();
    for cluster in standalone.state.registry.clusters() {
        println!("kube-apiserver flags for cluster {}:", cluster.name);
        for flag in render::api_server_flags(&cluster, &settings) {
            println!("  {flag}");
        }
        println!();
    }
    Ok(())
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

fn load_config(source: &ConfigSource) -> anyhow::Result<Config> {
    if let Some(path) = &source.config {
        return Ok(Config::load(path)?);
    }
    let state_dir = source.state_dir.as_deref().context("pass --config FILE or --state-dir DIR")?;
    let path = state_dir.join(dev::CONFIG_FILE);
    if !path.exists() {
        bail!("{} not found: run `monoskope serve --dev --state-dir {}` first", path.display(), state_dir.display());
    }
    Ok(Config::load(&path)?)
}

fn render_cluster(args: RenderArgs) -> anyhow::Result<()> {
    let mut config = load_config(&args.source)?;
    if let Some(dir) = args.clusters_dir {
        config.clusters_dir = dir;
    }

    let registry = Registry::new();
    let problems = standalone::apply_scan(&registry, standalone::scan_clusters(&config.clusters_dir)?);
    let Some(cluster) = registry.get(&args.cluster) else {
        let known: Vec<String> = registry.clusters().iter().map(|c| c.name.clone()).collect();
        let mut message = format!(
            "cluster {:?} not found in {}; known clusters: {}",
            args.cluster,
            config.clusters_dir.display(),
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        );
        for (source, problem) in &problems {
            message.push_str(&format!("\n  skipped {source}: {problem}"));
        }
        bail!(message);
    };

    let settings = render_settings(&config)?;
    let rendered = render::render(&cluster, &settings);
    let output = args.output;
    let section = |title: &str, body: &str| {
        if output == RenderOutput::All {
            println!("# {title}");
        }
        print!("{body}");
        if output == RenderOutput::All {
            println!();
        }
    };
    if matches!(output, RenderOutput::All | RenderOutput::Flags) {
        section("kube-apiserver flags", &format!("{}\n", rendered.api_server_flags.join("\n")));
    }
    if matches!(output, RenderOutput::All | RenderOutput::AuthenticationConfig) {
        section(
            "AuthenticationConfiguration (kube-apiserver --authentication-config)",
            &rendered.authentication_config,
        );
    }
    if matches!(output, RenderOutput::All | RenderOutput::Gardener) {
        section("Gardener Shoot spec.kubernetes.kubeAPIServer.oidcConfig", &rendered.gardener_oidc_config);
    }
    if matches!(output, RenderOutput::All | RenderOutput::Rbac) {
        section("RBAC for the target cluster", &rendered.rbac);
    }
    Ok(())
}

/// Render settings use the algorithms of the keys currently published.
fn render_settings(config: &Config) -> anyhow::Result<IssuerSettings> {
    let files = KeyFiles { key_dir: config.signing_key_dir.clone(), state_dir: config.state_dir.clone() };
    let set = standalone::current_key_set(&files, config.publication_delay(), config.session_lifetime)?;
    let keys = monoskope::keys::KeyStore::new(monoskope::keys::PublishedKeys::from_key_set(&set));
    Ok(standalone::issuer_settings(config, &keys)?)
}

fn mint_token(args: TokenArgs) -> anyhow::Result<()> {
    let config = load_config(&args.source)?;
    if !args.user.contains('@') {
        bail!("--user {:?} is not an e-mail address", args.user);
    }
    let files = KeyFiles { key_dir: config.signing_key_dir.clone(), state_dir: config.state_dir.clone() };
    let set = standalone::current_key_set(&files, config.publication_delay(), config.session_lifetime)?;
    let keys = std::sync::Arc::new(monoskope::keys::KeyStore::new(monoskope::keys::PublishedKeys::from_key_set(&set)));
    let issuer = TokenIssuer::new(config.issuer.clone(), config.client_id.clone(), config.session_lifetime, keys);

    let email = args.user.to_lowercase();
    let identity = Identity { subject: email.clone(), email, name: args.name, groups: args.groups };
    let minted = issuer.mint_session(&identity, args.lifetime, SystemTime::now())?;
    eprintln!("Session token for {} (jti {}), valid for {}s", identity.email, minted.jti, minted.lifetime.as_secs());
    println!("{}", minted.token);
    Ok(())
}
