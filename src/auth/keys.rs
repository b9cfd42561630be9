//! Key material: the configured HS256 secret or PEM keys, or the HS256 key that relais
//! generates once and keeps in its state directory (mode 0600) when none is configured.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use rand::RngCore;

use crate::config::{Config, JwtAlgorithm};

/// Name of the generated key file inside the state directory.
pub const GENERATED_KEY_FILE: &str = "jwt-hs256.key";

/// Why keys could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum KeySetupError {
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The generated key could not be stored.
    #[error("cannot store the generated signing key in {path}: {source}")]
    Store {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A PEM key was not usable for the configured algorithm.
    #[error("{what} ({path}) is not a valid {algorithm:?} PEM key: {reason}")]
    BadPem {
        /// `jwt.public_key` or `jwt.private_key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// The parser's reason.
        reason: String,
    },
    /// `relais token` with RS256/ES256 needs the private key.
    #[error("jwt.private_key is required to mint {0:?} tokens")]
    NoPrivateKey(JwtAlgorithm),
}

/// Where the HS256 key came from, for the start-up message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `jwt.secret` in the configuration.
    Configured,
    /// Generated now and stored at this path.
    Generated(PathBuf),
    /// Read back from a key generated earlier.
    Stored(PathBuf),
    /// PEM files (RS256 / ES256).
    Pem,
}

/// The raw key material for verification and minting.
pub struct KeyMaterial {
    /// The pinned algorithm.
    pub algorithm: JwtAlgorithm,
    /// HS256 secret bytes, or the public key PEM.
    pub verify: Vec<u8>,
    /// HS256 secret bytes, or the private key PEM when configured.
    pub sign: Option<Vec<u8>>,
    /// Where the key came from.
    pub origin: KeyOrigin,
}

impl KeyMaterial {
    /// Reads or creates the key material the configuration designates.
    pub fn load_or_create(config: &Config) -> Result<Self, KeySetupError> {
        let jwt = &config.jwt;
        match jwt.algorithm {
            JwtAlgorithm::HS256 => {
                let (secret, origin) = match &jwt.secret {
                    Some(s) => (s.expose().as_bytes().to_vec(), KeyOrigin::Configured),
                    None => hs256_from_state_dir(&config.state_dir())?,
                };
                Ok(Self {
                    algorithm: jwt.algorithm,
                    verify: secret.clone(),
                    sign: Some(secret),
                    origin,
                })
            }
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                let public = jwt.public_key.as_deref().ok_or(KeySetupError::BadPem {
                    what: "jwt.public_key",
                    path: PathBuf::new(),
                    algorithm: jwt.algorithm,
                    reason: "not configured".into(),
                })?;
                let verify = read(public)?;
                let sign = match &jwt.private_key {
                    Some(p) => Some(read(p)?),
                    None => None,
                };
                Ok(Self {
                    algorithm: jwt.algorithm,
                    verify,
                    sign,
                    origin: KeyOrigin::Pem,
                })
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeySetupError> {
    fs::read(path).map_err(|source| KeySetupError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn hs256_from_state_dir(dir: &Path) -> Result<(Vec<u8>, KeyOrigin), KeySetupError> {
    let path = dir.join(GENERATED_KEY_FILE);
    if let Ok(text) = fs::read_to_string(&path) {
        let key = text.trim();
        if key.len() >= 32 {
            return Ok((key.as_bytes().to_vec(), KeyOrigin::Stored(path)));
        }
    }
    let store_err = |source| KeySetupError::Store {
        path: path.clone(),
        source,
    };
    let mut raw = [0u8; 48];
    rand::rng().fill_bytes(&mut raw);
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    create_private_dir(dir).map_err(store_err)?;
    write_private_file(&path, key.as_bytes()).map_err(store_err)?;
    Ok((key.into_bytes(), KeyOrigin::Generated(path)))
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dir)
}

fn write_private_file(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(content)?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.server.state_dir = Some(dir.path().join("state"));
        let first = KeyMaterial::load_or_create(&config).unwrap();
        assert!(matches!(first.origin, KeyOrigin::Generated(_)));
        let second = KeyMaterial::load_or_create(&config).unwrap();
        assert!(matches!(second.origin, KeyOrigin::Stored(_)));
        assert_eq!(first.verify, second.verify);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join("state").join(GENERATED_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
