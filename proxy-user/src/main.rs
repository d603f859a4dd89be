//! The `agent-proxy` command: parse the CLI, set up logging, hand over to the library.
use std::{path::PathBuf, process::ExitCode};

use agent_proxy::{config, daemon};
use clap::{Parser, Subcommand};

/// Where `run` and `check` read the config unless `-c` says otherwise.
const DEFAULT_CONFIG: &str = "/etc/agent-proxy/agent-proxy.toml";

#[derive(Parser)]
#[command(
    name = "agent-proxy",
    version = agent_proxy::VERSION,
    about = "Proxy for monitoring-agent traffic, with an eBPF data path"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy in the foreground.
    Run {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Validate a configuration: exit 0, or 1 with FILE:LINE:COL: message.
    Check {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Print a ready, commented config for one kind of agent (it passes `check` as printed).
    Init {
        /// datadog, stackstate or datakit.
        #[arg(long, value_name = "NAME")]
        preset: String,
        /// Datadog site: datadoghq.com (default), datadoghq.eu, us3.datadoghq.com,
        /// us5.datadoghq.com, ap1.datadoghq.com, ddog-gov.com.
        #[arg(long)]
        site: Option<String>,
        /// Datadog: connect (default; a CONNECT proxy for `proxy: https:`) or ports (one port
        /// per intake, the proxy originating TLS, as Datadog's HAProxy guide).
        #[arg(long)]
        style: Option<String>,
        /// StackState: the receiver, https://HOST[:PORT][/PATH], http://... or HOST:PORT;
        /// without it a placeholder host to replace.
        #[arg(long, value_name = "URL")]
        receiver: Option<String>,
    },
    /// The iptables/ip6tables rules of the transparent frontends (`intercept`), by hand.
    Redirect {
        #[command(subcommand)]
        action: RedirectAction,
    },
}

#[derive(Subcommand)]
enum RedirectAction {
    /// Make the proxy's chains hold exactly the config's rules (idempotent).
    Install {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Remove the proxy's chains and the jumps to them (idempotent).
    Remove {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Show the proxy's chains; exit 0 when they hold what the config asks for, else 1.
    Status {
        /// Configuration file (TOML).
        #[arg(short, long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config: path } => match config::load(&path) {
            Ok(config) => {
                for warning in config.warnings() {
                    eprintln!("{}: warning: {warning}", path.display());
                }
                // The files the config names must be usable too, and the limits met.
                match daemon::validate(&config) {
                    Ok(_) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("{}: {}", path.display(), daemon::error_chain(&e));
                        ExitCode::FAILURE
                    }
                }
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        },
        Command::Init {
            preset,
            site,
            style,
            receiver,
        } => init(agent_proxy::preset::Options {
            preset: &preset,
            site: site.as_deref(),
            style: style.as_deref(),
            receiver: receiver.as_deref(),
        }),
        Command::Redirect { action } => redirect(action),
        Command::Run { config: path } => {
            let config = match config::load(&path) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            init_tracing(config.global.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("agent-proxy: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(daemon::run(config, path, shutdown_signal())) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %daemon::error_chain(&e), "cannot start");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints the preset's config on stdout; a refused option is a usage error (exit 2, as clap's).
fn init(options: agent_proxy::preset::Options<'_>) -> ExitCode {
    match agent_proxy::preset::Preset::from_options(options) {
        Ok(preset) => {
            print!("{}", preset.render());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("agent-proxy init: {e}");
            ExitCode::from(2)
        }
    }
}

fn redirect(action: RedirectAction) -> ExitCode {
    use agent_proxy::redirect::{self as rules, Plan};
    let (RedirectAction::Install { config: path }
    | RedirectAction::Remove { config: path }
    | RedirectAction::Status { config: path }) = &action;
    let plan = match config::load(path) {
        Ok(config) => Plan::new(&config),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let done = match action {
        RedirectAction::Install { .. } => rules::install(&plan).map(|()| {
            if plan.is_empty() {
                println!(
                    "no transparent frontend has `intercept`: no rules (any old ones removed)"
                );
            } else {
                println!("installed");
            }
            true
        }),
        RedirectAction::Remove { .. } => rules::remove().map(|()| {
            println!("removed");
            true
        }),
        RedirectAction::Status { .. } => rules::status(&plan).map(|(text, installed)| {
            print!("{text}");
            println!(
                "{}",
                if installed {
                    "rules match the config"
                } else {
                    "rules do not match the config"
                }
            );
            installed
        }),
    };
    match done {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("agent-proxy: {}", daemon::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: config::LogFormat) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file, a pipe or journald gets plain text, and
    // NO_COLOR (https://no-color.org) turns them off anywhere.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or SIGINT. SIGHUP (reload) is handled by `daemon::run`.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
