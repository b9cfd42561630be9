//! The `relais` command: `serve`, `token`, `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use relais::auth::{KeyMaterial, TokenMinter};

/// mimalloc instead of the system allocator: under webhook load glibc's malloc spent
/// about half of relais' CPU consolidating and unlinking chunks (see docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use relais::config::{parse_duration, Config};

/// Real-time relay: Grist and DiagPV webhooks in, Mercure SSE out, Matrix alerts.
#[derive(Parser)]
#[command(name = "relais", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve {
        /// Configuration file (TOML). Without it: embedded defaults plus RELAIS_* variables.
        #[arg(long, env = "RELAIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Mint a JWT signed with the configured (or generated) key.
    Token {
        /// Subject (who holds the token).
        #[arg(long)]
        sub: String,
        /// Topic selector the holder may subscribe to (repeatable).
        #[arg(long = "subscribe")]
        subscribe: Vec<String>,
        /// Topic selector the holder may publish to (repeatable).
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// Lifetime, e.g. 8h, 30m, 7d.
        #[arg(long, default_value = "8h", value_parser = parse_duration)]
        ttl: Duration,
        /// Configuration file (TOML).
        #[arg(long, env = "RELAIS_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a configuration and print the effective settings (secrets masked).
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, env = "RELAIS_CONFIG")]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("relais: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration, checked by `config` and by ingestion (its sources).
fn load(file: Option<&std::path::Path>) -> Result<Config, String> {
    let config = Config::load(file).map_err(|e| e.to_string())?;
    relais::ingest::check_sources(&config).map_err(|e| e.to_string())?;
    Ok(config)
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { config } => {
            let config = load(config.as_deref())?;
            relais::telemetry::init_logging(&config.log);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the runtime: {e}"))?;
            runtime
                .block_on(relais::server::serve(config))
                .map_err(|e| e.to_string())
        }
        Command::Token {
            sub,
            subscribe,
            publish,
            ttl,
            config,
        } => {
            let config = load(config.as_deref())?;
            for selector in subscribe.iter().chain(&publish) {
                relais::hub::Selector::parse(selector).map_err(|e| e.to_string())?;
            }
            let keys = KeyMaterial::load_or_create(&config).map_err(|e| e.to_string())?;
            let minter = TokenMinter::new(&keys, &config).map_err(|e| e.to_string())?;
            let claims = TokenMinter::claims_for(&sub, subscribe, publish, ttl);
            let token = minter.mint(&claims).map_err(|e| e.to_string())?;
            println!("{token}");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let config = load(config.as_deref())?;
            let keys = KeyMaterial::load_or_create(&config).map_err(|e| e.to_string())?;
            relais::auth::Authenticator::new(&keys, &config).map_err(|e| e.to_string())?;
            println!("# relais: configuration is valid; effective settings (secrets masked):");
            print!("{}", config.to_masked_toml());
            Ok(())
        }
    }
}
