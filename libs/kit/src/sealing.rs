//! Personal numbers at rest: sealed with AES-256-GCM under a configured key (its version stored beside each value,
//! so keys can be rotated), found again through a keyed HMAC blind index, never stored in clear.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The current data key and the HMAC key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
    version: i32,
    index_key: SecretString,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("version", &self.version).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    #[error("the data key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("a sealed value does not open with the configured key")]
    Open,
}

impl Sealer {
    /// `data_key` is 32 bytes in base64; a passphrase-like development key is stretched with SHA-256 instead.
    pub fn new(data_key: &SecretString, version: i32, index_key: SecretString) -> Result<Self, SealingError> {
        let decoded = base64::engine::general_purpose::STANDARD.decode(data_key.expose_secret().trim());
        let key: [u8; 32] = match decoded {
            Ok(bytes) => bytes.try_into().map_err(|_| SealingError::BadKey)?,
            Err(_) => Sha256::digest(data_key.expose_secret().as_bytes()).into(),
        };
        let cipher = Aes256Gcm::new_from_slice(&key).map_err(|_| SealingError::BadKey)?;
        Ok(Self { cipher, version, index_key })
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    /// nonce (12 bytes) ‖ ciphertext with tag.
    pub fn seal(&self, plain: &str) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let mut sealed = nonce.to_vec();
        // Encryption with a valid key and a 12-byte nonce cannot fail.
        let ciphertext = self.cipher.encrypt(&Nonce::from(nonce), plain.as_bytes()).unwrap_or_default();
        sealed.extend(ciphertext);
        sealed
    }

    pub fn open(&self, sealed: &[u8]) -> Result<String, SealingError> {
        if sealed.len() < 12 {
            return Err(SealingError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| SealingError::Open)?;
        let plain = self.cipher.decrypt(&nonce, ciphertext).map_err(|_| SealingError::Open)?;
        String::from_utf8(plain).map_err(|_| SealingError::Open)
    }

    /// The blind index of an ID number: equal numbers, equal digests; without the key, nothing to learn.
    pub fn index(&self, id_type: &str, id_number: &str) -> Vec<u8> {
        let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(self.index_key.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(id_type.as_bytes());
        mac.update(b"\0");
        mac.update(id_number.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_and_is_never_the_same_twice() {
        let sealer = Sealer::new(&SecretString::from("dev"), 1, SecretString::from("index")).expect("sealer");
        let (a, b) = (sealer.seal("230502199002152344"), sealer.seal("230502199002152344"));
        assert_ne!(a, b);
        assert_eq!(sealer.open(&a).expect("opens"), "230502199002152344");
        let other = Sealer::new(&SecretString::from("other"), 2, SecretString::from("index")).expect("sealer");
        assert!(other.open(&a).is_err());
        assert_eq!(sealer.index("01", "x"), other.index("01", "x"));
    }
}
