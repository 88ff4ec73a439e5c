//! Personal numbers at rest: sealed with AES-256-GCM under a configured key (its version stored beside each value,
//! so keys can be rotated), found again through a keyed HMAC blind index, never stored in clear.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The `data_key`, `data_key_version`, `retired_data_keys` and `index_key` settings of a service that seals.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct SealingConfig {
    /// The AES-256-GCM key new values are sealed with: 32 bytes, base64 (a Kubernetes secret).
    pub data_key: Option<SecretString>,
    /// The version stored beside every value sealed with `data_key`. Zero is read as 1.
    pub data_key_version: i32,
    /// Keys of earlier versions, by version: values sealed with them still open, until `pension keys rotate` has
    /// sealed every one of them again under `data_key`, after which they can go.
    pub retired_data_keys: BTreeMap<String, SecretString>,
    /// The HMAC key of the blind index. It is not rotated: the index must find numbers stored before.
    pub index_key: Option<SecretString>,
}

/// The data keys by version, the current one, and the HMAC key.
#[derive(Clone)]
pub struct Sealer {
    ciphers: BTreeMap<i32, Aes256Gcm>,
    version: i32,
    index_key: SecretString,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let versions: Vec<&i32> = self.ciphers.keys().collect();
        f.debug_struct("Sealer").field("version", &self.version).field("versions", &versions).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    #[error("the data key must be 32 bytes, base64-encoded")]
    BadKey,
    #[error("retired_data_keys: {0:?} is not a key version (a whole number)")]
    BadVersion(String),
    #[error("a sealed value does not open with the key of its version")]
    Open,
    #[error("no data key of version {0} is configured: add it to retired_data_keys")]
    UnknownVersion(i32),
}

fn cipher(data_key: &SecretString) -> Result<Aes256Gcm, SealingError> {
    let decoded = base64::engine::general_purpose::STANDARD.decode(data_key.expose_secret().trim());
    let key: [u8; 32] = match decoded {
        Ok(bytes) => bytes.try_into().map_err(|_| SealingError::BadKey)?,
        Err(_) => Sha256::digest(data_key.expose_secret().as_bytes()).into(),
    };
    Aes256Gcm::new_from_slice(&key).map_err(|_| SealingError::BadKey)
}

impl Sealer {
    /// `data_key` is 32 bytes in base64; a passphrase-like development key is stretched with SHA-256 instead.
    pub fn new(data_key: &SecretString, version: i32, index_key: SecretString) -> Result<Self, SealingError> {
        Ok(Self { ciphers: BTreeMap::from([(version, cipher(data_key)?)]), version, index_key })
    }

    /// The sealer of a service's settings; unset keys are development keys named after the service, with a warning.
    pub fn from_config(config: &SealingConfig, service: &str) -> Result<Self, SealingError> {
        let development = |key: &Option<SecretString>, name: &str| {
            key.clone().unwrap_or_else(|| {
                tracing::warn!("{service}.{name} is not set: using the development key (never do this in production)");
                SecretString::from(format!("development-only-{service}-{}", name.replace('_', "-")))
            })
        };
        let version = if config.data_key_version == 0 { 1 } else { config.data_key_version };
        let mut sealer = Self::new(
            &development(&config.data_key, "data_key"),
            version,
            development(&config.index_key, "index_key"),
        )?;
        for (retired, key) in &config.retired_data_keys {
            let retired_version: i32 = retired.trim().parse().map_err(|_| SealingError::BadVersion(retired.clone()))?;
            if retired_version != version {
                sealer.ciphers.insert(retired_version, cipher(key)?);
            }
        }
        Ok(sealer)
    }

    /// The version new values are sealed with.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// nonce (12 bytes) ‖ ciphertext with tag, under the current key.
    pub fn seal(&self, plain: &str) -> Vec<u8> {
        self.seal_bytes(plain.as_bytes())
    }

    /// As [`Sealer::seal`], for binary values (documents).
    pub fn seal_bytes(&self, plain: &[u8]) -> Vec<u8> {
        let nonce: [u8; 12] = rand::random();
        let mut sealed = nonce.to_vec();
        let cipher = self.ciphers.get(&self.version).unwrap_or_else(|| unreachable!("the current key is always held"));
        // Encryption with a valid key and a 12-byte nonce cannot fail.
        let ciphertext = cipher.encrypt(&Nonce::from(nonce), plain).unwrap_or_default();
        sealed.extend(ciphertext);
        sealed
    }

    /// Opens a value sealed with the key of `version`.
    pub fn open(&self, version: i32, sealed: &[u8]) -> Result<String, SealingError> {
        String::from_utf8(self.open_bytes(version, sealed)?).map_err(|_| SealingError::Open)
    }

    /// As [`Sealer::open`], for binary values.
    pub fn open_bytes(&self, version: i32, sealed: &[u8]) -> Result<Vec<u8>, SealingError> {
        let cipher = self.ciphers.get(&version).ok_or(SealingError::UnknownVersion(version))?;
        if sealed.len() < 12 {
            return Err(SealingError::Open);
        }
        let (nonce, ciphertext) = sealed.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| SealingError::Open)?;
        cipher.decrypt(&nonce, ciphertext).map_err(|_| SealingError::Open)
    }

    /// A value of `version` sealed again under the current key; the current key's own values come back as they are.
    pub fn reseal(&self, version: i32, sealed: &[u8]) -> Result<Vec<u8>, SealingError> {
        if version == self.version {
            return Ok(sealed.to_vec());
        }
        Ok(self.seal_bytes(&self.open_bytes(version, sealed)?))
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

/// A table whose sealed columns `pension keys rotate` seals again: its primary key (and that key's SQL type), the
/// column holding the key version of the row's sealed values, and the sealed columns (NULL allowed).
#[derive(Debug, Clone, Copy)]
pub struct SealedTable {
    pub table: &'static str,
    pub key: &'static str,
    pub key_type: &'static str,
    pub version: &'static str,
    pub sealed: &'static [&'static str],
}

/// How a rotation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotated {
    pub version: i32,
    pub resealed: u64,
    /// Rows still under an older key: locked by a save every time the rotation came by.
    pub remaining: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("{table}: {source}")]
    Sealing { table: &'static str, source: SealingError },
}

/// Rows a rotation transaction takes at a time: short transactions, so saves of the same rows wait little.
const ROTATION_BATCH: i64 = 500;

/// Seals every value of `table` under an older key again under the current one, a batch per transaction, rows that
/// a save holds skipped and taken on the next pass. The service keeps serving: its reads open either version, and
/// its writes seal under the current one.
pub async fn rotate(pool: &sqlx::PgPool, sealer: &Sealer, table: &SealedTable) -> Result<Rotated, RotateError> {
    // Names are the services' constants, never input.
    let columns = table.sealed.join(", ");
    let select = format!(
        "select {key}::text, {version}, {columns} from {name} where {version} <> $1 and ({any}) \
         order by {key} limit {ROTATION_BATCH} for update skip locked",
        key = table.key,
        version = table.version,
        name = table.table,
        any = table.sealed.iter().map(|column| format!("{column} is not null")).collect::<Vec<_>>().join(" or "),
    );
    let assignments: Vec<String> =
        table.sealed.iter().enumerate().map(|(n, column)| format!("{column} = u.c{n}")).collect();
    let arrays: Vec<String> = (0..table.sealed.len()).map(|n| format!("${}::bytea[]", n + 3)).collect();
    let aliases: Vec<String> = (0..table.sealed.len()).map(|n| format!("c{n}")).collect();
    let update = format!(
        "update {name} t set {assignments}, {version} = $1 from unnest($2::text[], {arrays}) as u(k, {aliases}) \
         where t.{key} = u.k::{key_type}",
        name = table.table,
        assignments = assignments.join(", "),
        version = table.version,
        arrays = arrays.join(", "),
        aliases = aliases.join(", "),
        key = table.key,
        key_type = table.key_type,
    );
    let mut resealed = 0;
    let mut passes_without_progress = 0;
    loop {
        let mut transaction = crate::db::begin_scoped(pool, &crate::db::Scope::All).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(select.clone()))
            .bind(sealer.version())
            .fetch_all(&mut *transaction)
            .await?;
        if rows.is_empty() {
            transaction.commit().await?;
            let count = format!(
                "select count(*) from {} where {} <> $1 and ({})",
                table.table,
                table.version,
                table.sealed.iter().map(|column| format!("{column} is not null")).collect::<Vec<_>>().join(" or ")
            );
            let mut transaction = crate::db::begin_scoped(pool, &crate::db::Scope::All).await?;
            let remaining: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
                .bind(sealer.version())
                .fetch_one(&mut *transaction)
                .await?;
            transaction.commit().await?;
            // Rows a save held are back after it commits, under the current key or not: a few more passes.
            if remaining > 0 && passes_without_progress < 20 {
                passes_without_progress += 1;
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            return Ok(Rotated {
                version: sealer.version(),
                resealed,
                remaining: u64::try_from(remaining).unwrap_or(0),
            });
        }
        passes_without_progress = 0;
        let mut keys = Vec::with_capacity(rows.len());
        let mut sealed: Vec<Vec<Option<Vec<u8>>>> = vec![Vec::with_capacity(rows.len()); table.sealed.len()];
        for row in &rows {
            use sqlx::Row as _;
            keys.push(row.try_get::<String, _>(0)?);
            let version: i32 = row.try_get(1)?;
            for (n, column) in sealed.iter_mut().enumerate() {
                let value: Option<Vec<u8>> = row.try_get(n + 2)?;
                let value = value
                    .map(|value| sealer.reseal(version, &value))
                    .transpose()
                    .map_err(|source| RotateError::Sealing { table: table.table, source })?;
                column.push(value);
            }
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(update.clone())).bind(sealer.version()).bind(&keys);
        for column in &sealed {
            query = query.bind(column);
        }
        query.execute(&mut *transaction).await?;
        transaction.commit().await?;
        resealed += u64::try_from(rows.len()).unwrap_or(0);
    }
}

/// `RotateDataKey` of a service: only the security admin or the platform's command line may ask; the rotation of
/// every sealed table is audited with its counts.
pub async fn rotate_for(
    pool: &sqlx::PgPool,
    sealer: &Sealer,
    tables: &[SealedTable],
    request: proto::common::RotateDataKeyRequest,
) -> Result<proto::common::RotateDataKeyReply, tonic::Status> {
    let caller = request.caller.unwrap_or_default();
    if !matches!(caller.role.as_str(), "security_admin" | "system") {
        return Err(crate::status::refuse(
            tonic::Code::PermissionDenied,
            "forbidden",
            "只有安全管理员可以轮换数据密钥",
        ));
    }
    let mut reply = proto::common::RotateDataKeyReply { version: sealer.version(), resealed: 0, remaining: 0 };
    for table in tables {
        let rotated = rotate(pool, sealer, table).await.map_err(|error| match error {
            RotateError::Database(error) => crate::db::status(error),
            RotateError::Sealing { table, source } => {
                tracing::error!(table, %source, "a sealed value does not open: is a retired key missing?");
                crate::status::refuse(tonic::Code::FailedPrecondition, "retired_key_missing", source.to_string())
            }
        })?;
        reply.resealed += rotated.resealed;
        reply.remaining += rotated.remaining;
    }
    let actor = crate::audit::Actor::of(&caller);
    let detail =
        serde_json::json!({ "version": reply.version, "resealed": reply.resealed, "remaining": reply.remaining });
    let record = crate::audit::Record {
        actor: &actor,
        action: "data_key.rotate",
        object: &format!("data_key:{}", reply.version),
        outcome: crate::audit::Outcome::Success,
        detail,
    };
    let mut connection = pool.acquire().await.map_err(crate::db::status)?;
    crate::audit::append(&mut connection, &record).await.map_err(crate::db::status)?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_and_is_never_the_same_twice() {
        let sealer = Sealer::new(&SecretString::from("dev"), 1, SecretString::from("index")).expect("sealer");
        let (a, b) = (sealer.seal("230502199002152344"), sealer.seal("230502199002152344"));
        assert_ne!(a, b);
        assert_eq!(sealer.open(1, &a).expect("opens"), "230502199002152344");
        let other = Sealer::new(&SecretString::from("other"), 2, SecretString::from("index")).expect("sealer");
        assert!(other.open(2, &a).is_err());
        assert!(matches!(other.open(1, &a), Err(SealingError::UnknownVersion(1))));
        assert_eq!(sealer.index("01", "x"), other.index("01", "x"));
    }

    #[test]
    fn a_retired_key_still_opens_its_values_and_resealing_moves_them_to_the_current_key() {
        let old = Sealer::new(&SecretString::from("first"), 1, SecretString::from("index")).expect("sealer");
        let sealed = old.seal("230502199002152344");
        let config = SealingConfig {
            data_key: Some(SecretString::from("second")),
            data_key_version: 2,
            retired_data_keys: BTreeMap::from([("1".to_owned(), SecretString::from("first"))]),
            index_key: Some(SecretString::from("index")),
        };
        let rotated = Sealer::from_config(&config, "test").expect("sealer");
        assert_eq!(rotated.open(1, &sealed).expect("the retired key opens"), "230502199002152344");
        let resealed = rotated.reseal(1, &sealed).expect("resealed");
        assert_eq!(rotated.open(2, &resealed).expect("the current key opens"), "230502199002152344");
        let current_only = Sealer::from_config(&SealingConfig { retired_data_keys: BTreeMap::new(), ..config }, "test")
            .expect("sealer");
        assert!(current_only.open(2, &resealed).is_ok());
        assert!(current_only.open(1, &sealed).is_err());
    }
}
