//! The two one-way transformations identity applies to secrets and personal numbers: argon2id for passwords, with
//! concurrent hashing bounded so a burst of applications or logins cannot starve other work, and a keyed HMAC of ID
//! numbers, so the service can tell whether a number is the one given before without storing it.

use std::sync::Arc;

use argon2::{Argon2, PasswordHash, PasswordHasher as _, PasswordVerifier as _};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tokio::sync::Semaphore;

/// Hashes passwords with argon2id (the crate's defaults: an OWASP profile, ~46 ms a hash on this hardware).
#[derive(Debug, Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
}

impl PasswordHasher {
    /// At most one hash per core at a time; the rest wait, so other requests keep their share of the CPU.
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(2);
        Self { permits: Arc::new(Semaphore::new(cores)) }
    }

    /// The PHC string of `password`, hashed on a blocking thread.
    pub async fn hash(&self, password: SecretString) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        let hash = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|error| anyhow::anyhow!("argon2: {error}"))
        })
        .await??;
        Ok(hash)
    }

    /// Whether `password` matches the PHC string `hash`, under the same bound as hashing: a login storm waits its
    /// turn instead of starving every other request of CPU. A hash that cannot be parsed matches nothing.
    pub async fn verify(&self, hash: String, password: SecretString) -> anyhow::Result<bool> {
        let _permit = self.permits.acquire().await?;
        let matches = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else { return false };
            Argon2::default().verify_password(password.expose_secret().as_bytes(), &parsed).is_ok()
        })
        .await?;
        Ok(matches)
    }

    /// Whether `hash` is a PHC string this hasher can check (for imported legacy hashes).
    pub fn is_valid_hash(hash: &str) -> bool {
        PasswordHash::new(hash).is_ok_and(|parsed| parsed.algorithm.as_str().starts_with("argon2"))
    }
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// HMAC-SHA256 of ID numbers under a configured key: equal numbers give equal digests, and without the key a digest
/// reveals nothing.
#[derive(Clone)]
pub struct IdNumberHasher {
    key: SecretString,
}

impl std::fmt::Debug for IdNumberHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdNumberHasher")
    }
}

impl IdNumberHasher {
    pub fn new(key: SecretString) -> Self {
        Self { key }
    }

    pub fn digest(&self, id_number: &validators::IdNumber) -> Vec<u8> {
        self.keyed(&[id_number.as_str().as_bytes()])
    }

    /// HMAC of `parts` under the same key, with a purpose prefix so no digest of one purpose is valid for another
    /// (activation tickets use "activation").
    pub fn tag(&self, purpose: &str, parts: &[&[u8]]) -> Vec<u8> {
        let mut all: Vec<&[u8]> = vec![purpose.as_bytes(), b"\0"];
        all.extend_from_slice(parts);
        self.keyed(&all)
    }

    fn keyed(&self, parts: &[&[u8]]) -> Vec<u8> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }
}
