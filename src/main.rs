//! The `relais` command: `serve`, `token`, `check-config`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use relais::auth::{AccessTokenClaims, KeyMaterial, MatchType, TokenMinter, TopicMatcher};

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

// Parsed once at start-up: the size of the `token` variant costs nothing.
#[allow(clippy::large_enum_variant)]
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
        /// Topic selector the holder may subscribe to (repeatable). 0.x: a topic, a URI
        /// template or *; 1.0: an exact topic or *.
        #[arg(long = "subscribe")]
        subscribe: Vec<String>,
        /// Topic selector the holder may publish to (repeatable), as --subscribe.
        #[arg(long = "publish")]
        publish: Vec<String>,
        /// URL pattern the holder may subscribe to (repeatable; 1.0 only).
        #[arg(long = "subscribe-urlpattern")]
        subscribe_urlpattern: Vec<String>,
        /// URL pattern the holder may publish to (repeatable; 1.0 only).
        #[arg(long = "publish-urlpattern")]
        publish_urlpattern: Vec<String>,
        /// Token generation: 0.x (a `mercure` claim) or 1.0 (an OAuth access token with
        /// `authorization_details`).
        #[arg(long, default_value = "0.x", value_parser = ["0.x", "1.0"])]
        format: String,
        /// 1.0: the hub's resource identifier for `aud` (default: jwt.audience, else
        /// server.public_url + /.well-known/mercure).
        #[arg(long)]
        aud: Option<String>,
        /// 1.0: the issuer for `iss` (default: the first of jwt.issuers, else "relais").
        #[arg(long)]
        iss: Option<String>,
        /// Lifetime, e.g. 8h, 30m, 7d.
        #[arg(long, default_value = "8h", value_parser = parse_duration)]
        ttl: Duration,
        /// `mercure.payload`, a JSON value others see in presence, e.g.
        /// '{"name":"Adrien"}'.
        #[arg(long, value_parser = parse_payload)]
        payload: Option<serde_json::Value>,
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

/// The 1.0 matchers of `--subscribe`/`--publish` (exact) and `--*-urlpattern`, checked
/// as the hub will read them. A URI template is refused rather than granted as an exact
/// topic nobody publishes to.
fn matchers(exact: Vec<String>, patterns: Vec<String>) -> Result<Vec<TopicMatcher>, String> {
    let mut out = Vec::new();
    for text in exact {
        if text.contains('{') {
            return Err(format!(
                "{text:?} looks like a URI template: a 1.0 token holds exact topics and URL patterns (--subscribe-urlpattern 'audits/:token')"
            ));
        }
        relais::hub::Selector::exact(&text).map_err(|e| e.to_string())?;
        out.push(TopicMatcher {
            pattern: text,
            match_type: None,
        });
    }
    for text in patterns {
        relais::hub::Selector::url_pattern(&text).map_err(|e| e.to_string())?;
        out.push(TopicMatcher {
            pattern: text,
            match_type: Some(MatchType::UrlPattern),
        });
    }
    Ok(out)
}

/// Reads `--payload`: any JSON value.
fn parse_payload(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("--payload must be JSON ({e})"))
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
            subscribe_urlpattern,
            publish_urlpattern,
            format,
            aud,
            iss,
            ttl,
            payload,
            config,
        } => {
            let config = load(config.as_deref())?;
            let keys = KeyMaterial::load_or_create(&config).map_err(|e| e.to_string())?;
            let minter = TokenMinter::new(&keys, &config).map_err(|e| e.to_string())?;
            let token = if format == "1.0" {
                let aud = aud.or_else(|| config.resource_identifier()).ok_or(
                    "a 1.0 token names the hub in aud: give --aud https://HOST/.well-known/mercure, or set server.public_url or jwt.audience",
                )?;
                let iss = iss
                    .or_else(|| config.jwt.issuers.first().cloned())
                    .unwrap_or_else(|| "relais".to_string());
                let claims = AccessTokenClaims::new(
                    &sub,
                    &iss,
                    &aud,
                    matchers(subscribe, subscribe_urlpattern)?,
                    matchers(publish, publish_urlpattern)?,
                    ttl,
                );
                let claims = match payload {
                    Some(payload) => claims.with_payload(payload),
                    None => claims,
                };
                minter.mint_access_token(&claims)
            } else {
                if !subscribe_urlpattern.is_empty() || !publish_urlpattern.is_empty() {
                    return Err("--subscribe-urlpattern and --publish-urlpattern need --format 1.0 (a 0.x token holds URI templates: --subscribe 'audits/{token}')".into());
                }
                if aud.is_some() || iss.is_some() {
                    return Err("--aud and --iss need --format 1.0".into());
                }
                for selector in subscribe.iter().chain(&publish) {
                    relais::hub::Selector::parse(selector).map_err(|e| e.to_string())?;
                }
                let mut claims = TokenMinter::claims_for(&sub, subscribe, publish, ttl);
                claims.mercure.payload = payload;
                minter.mint(&claims)
            }
            .map_err(|e| e.to_string())?;
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
