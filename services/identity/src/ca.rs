//! The provincial CA: its certificate and key (from configuration, a Kubernetes secret, or `pension ca init` for
//! development), making (制作) client certificates from a CSR or a generated key pair, signing the CRL, and
//! checking a presented certificate against the CA and the legacy roots.
//!
//! The CA's private key never leaves this module; a generated key pair's private key leaves it once, in the answer
//! to the CA operator, and is not stored.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, RevocationReason, RevokedCertParams, SerialNumber,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, UnixTime};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

/// The `identity.ca` section. The certificate and key come as files (a mounted Kubernetes secret) or inline PEM
/// (environment variables); without them the platform verifies logins but makes no certificates.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CaConfig {
    pub certificate_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub certificate_pem: Option<String>,
    pub key_pem: Option<SecretString>,
    /// How long a unit's or staff member's certificate is valid.
    pub validity_days: u32,
    /// How long a CRL stays current; it is re-signed well before that and at every revocation.
    pub crl_validity_hours: u32,
}

impl Default for CaConfig {
    fn default() -> Self {
        Self {
            certificate_file: None,
            key_file: None,
            certificate_pem: None,
            key_pem: None,
            validity_days: 730,
            crl_validity_hours: 48,
        }
    }
}

/// The CA, ready to sign.
pub struct CertificateAuthority {
    certificate_pem: String,
    certificate_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
    validity: Duration,
    crl_validity: Duration,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("validity", &self.validity).finish_non_exhaustive()
    }
}

/// The names a certificate's subject carries: the account, and its unit or role.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The login username.
    pub common_name: String,
    /// The unit's name, or the platform's for staff.
    pub organization: String,
    /// The unit's 机构编码, or the staff role.
    pub organizational_unit: String,
}

impl Subject {
    pub fn display(&self) -> String {
        format!("CN={}, OU={}, O={}, C=CN", self.common_name, self.organizational_unit, self.organization)
    }
}

/// A certificate just signed.
#[derive(Debug, Clone)]
pub struct Made {
    pub serial: String,
    pub der: Vec<u8>,
    pub pem: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub subject: String,
}

/// One entry of the CRL.
#[derive(Debug, Clone)]
pub struct Revoked {
    pub serial: String,
    pub revoked_at: OffsetDateTime,
    pub reason: String,
}

impl CertificateAuthority {
    /// The configured CA, or `None` when none is configured.
    pub fn load(config: &CaConfig) -> anyhow::Result<Option<Self>> {
        let certificate = match (&config.certificate_pem, &config.certificate_file) {
            (Some(pem), _) => Some(pem.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("identity.ca.certificate_file: cannot read {}", path.display()))?,
            ),
            (None, None) => None,
        };
        let key = match (&config.key_pem, &config.key_file) {
            (Some(pem), _) => Some(SecretString::from(pem.expose_secret().to_owned())),
            (None, Some(path)) => Some(SecretString::from(
                std::fs::read_to_string(path)
                    .with_context(|| format!("identity.ca.key_file: cannot read {}", path.display()))?,
            )),
            (None, None) => None,
        };
        match (certificate, key) {
            (Some(certificate), Some(key)) => Ok(Some(Self::from_pem(&certificate, &key, config)?)),
            (None, None) => Ok(None),
            (Some(_), None) => {
                anyhow::bail!("identity.ca: a certificate is configured but no key (key_file or key_pem)")
            }
            (None, Some(_)) => anyhow::bail!("identity.ca: a key is configured but no certificate"),
        }
    }

    pub fn from_pem(certificate_pem: &str, key_pem: &SecretString, config: &CaConfig) -> anyhow::Result<Self> {
        let key =
            KeyPair::from_pem(key_pem.expose_secret()).context("identity.ca: the key is not a PEM private key")?;
        let certificate_der = CertificateDer::from_pem_slice(certificate_pem.as_bytes())
            .context("identity.ca: the certificate is not PEM")?;
        let issuer = Issuer::from_ca_cert_der(&certificate_der, key).context("identity.ca: unusable CA certificate")?;
        Ok(Self {
            certificate_pem: certificate_pem.trim().to_owned() + "\n",
            certificate_der,
            issuer,
            validity: Duration::days(i64::from(config.validity_days.max(1))),
            crl_validity: Duration::hours(i64::from(config.crl_validity_hours.max(2))),
        })
    }

    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    pub fn certificate_der(&self) -> &[u8] {
        &self.certificate_der
    }

    pub fn crl_validity(&self) -> Duration {
        self.crl_validity
    }

    /// Signs a client certificate for `public_key` with the account's names in the subject.
    pub fn issue(&self, subject: &Subject, public_key: &impl PublicKeyData) -> anyhow::Result<Made> {
        let now = OffsetDateTime::now_utc();
        // Back-dated a little so a client whose clock runs slow can use it at once.
        let not_before = (now - Duration::minutes(5)).replace_nanosecond(0)?;
        let not_after = (now + self.validity).replace_nanosecond(0)?;
        let serial = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(subject);
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let certificate = params.signed_by(public_key, &self.issuer).context("cannot sign the certificate")?;
        Ok(Made {
            serial: hex_upper(&serial),
            der: certificate.der().to_vec(),
            pem: certificate.pem(),
            not_before,
            not_after,
            subject: subject.display(),
        })
    }

    /// Signs a CRL listing `revoked`.
    pub fn sign_crl(
        &self,
        number: u64,
        revoked: &[Revoked],
    ) -> anyhow::Result<(Vec<u8>, OffsetDateTime, OffsetDateTime)> {
        let this_update = OffsetDateTime::now_utc().replace_nanosecond(0)?;
        let next_update = this_update + self.crl_validity;
        let revoked_certs = revoked
            .iter()
            .map(|entry| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&parse_hex(&entry.serial)?),
                    revocation_time: entry.revoked_at.replace_nanosecond(0)?,
                    reason_code: Some(revocation_reason(&entry.reason)),
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).context("cannot sign the CRL")?;
        Ok((crl.der().to_vec(), this_update, next_update))
    }
}

fn distinguished_name(subject: &Subject) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, "CN");
    name.push(DnType::OrganizationName, subject.organization.as_str());
    name.push(DnType::OrganizationalUnitName, subject.organizational_unit.as_str());
    name.push(DnType::CommonName, subject.common_name.as_str());
    name
}

fn revocation_reason(reason: &str) -> RevocationReason {
    match reason {
        "key_compromise" => RevocationReason::KeyCompromise,
        "affiliation_changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation_of_operation" => RevocationReason::CessationOfOperation,
        _ => RevocationReason::Unspecified,
    }
}

/// The revocation reasons the CA operator may give.
pub const REVOCATION_REASONS: [&str; 5] =
    ["unspecified", "key_compromise", "affiliation_changed", "superseded", "cessation_of_operation"];

/// 16 random bytes with the top bit clear, so the serial is a positive integer of at most 20 octets (RFC 5280).
fn random_serial() -> Vec<u8> {
    let mut serial: [u8; 16] = rand::random();
    serial[0] &= 0x7f;
    serial[0] |= 0x01;
    serial.to_vec()
}

pub fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02X}")).collect()
}

fn parse_hex(hex: &str) -> anyhow::Result<Vec<u8>> {
    let hex = hex.trim();
    anyhow::ensure!(
        hex.len().is_multiple_of(2) && hex.chars().all(|c| c.is_ascii_hexdigit()),
        "not a hex serial: {hex}"
    );
    (0..hex.len()).step_by(2).map(|at| Ok(u8::from_str_radix(&hex[at..at + 2], 16)?)).collect()
}

/// A serial as the platform writes it: upper-case hex without leading zero bytes, as in a certificate's DER.
pub fn normalize_serial(raw: &str) -> String {
    let cleaned: String = raw.chars().filter(|c| c.is_ascii_hexdigit()).collect::<String>().to_ascii_uppercase();
    let trimmed = cleaned.trim_start_matches("00");
    if !trimmed.len().is_multiple_of(2) { format!("0{trimmed}") } else { trimmed.to_owned() }
}

pub fn fingerprint(der: &[u8]) -> Vec<u8> {
    Sha256::digest(der).to_vec()
}

/// A fresh P-256 key pair for a software key.
pub fn generate_key_pair() -> anyhow::Result<KeyPair> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("cannot generate a key pair")
}

/// The PKCS#12 bundle of a generated key: the key, its certificate and the CA, under `password`
/// (PBES2 AES-256 and an HMAC-SHA256, which browsers and Windows import).
pub fn pkcs12(
    key_der: &[u8],
    certificate_der: &[u8],
    ca_der: &[u8],
    alias: &str,
    password: &str,
) -> anyhow::Result<Vec<u8>> {
    use p12_keystore::{Certificate, KeyStore, KeyStoreEntry, PrivateKey, PrivateKeyChain};
    let key = PrivateKey::from_der(key_der).map_err(|error| anyhow::anyhow!("pkcs12 key: {error}"))?;
    let chain = [certificate_der, ca_der]
        .into_iter()
        .map(|der| Certificate::from_der(der).map_err(|error| anyhow::anyhow!("pkcs12 certificate: {error}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let local_key_id = fingerprint(certificate_der);
    let mut store = KeyStore::new();
    store.add_entry(alias, KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, key, chain)));
    store.writer(password).write().map_err(|error| anyhow::anyhow!("pkcs12: {error}"))
}

/// A one-time password for a PKCS#12 bundle: 16 characters without look-alikes, to be read off a screen.
pub fn one_time_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    (0..16).map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())])).collect()
}

/// What a presented certificate turned out to be.
#[derive(Debug, Clone)]
pub struct Presented {
    pub serial: String,
    pub fingerprint: Vec<u8>,
    /// Chains to the platform's CA (else to a legacy root).
    pub issued_by_platform: bool,
    pub subject: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// Why a presented certificate was refused.
#[derive(Debug, thiserror::Error)]
pub enum PresentedError {
    #[error("the certificate cannot be parsed")]
    Unparsable,
    #[error("the certificate has expired or is not yet valid")]
    Expired,
    #[error("the certificate does not chain to a trusted CA")]
    Untrusted,
}

/// Checks a client certificate against the platform's CA and the legacy roots: signature chain, validity period,
/// client-authentication usage. Revocation is the caller's business (the database knows it first).
pub fn verify_presented(
    der: &[u8],
    platform_ca: Option<&[u8]>,
    legacy_roots: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<Presented, PresentedError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(der).map_err(|_| PresentedError::Unparsable)?;
    let certificate = CertificateDer::from(der);
    let end_entity = webpki::EndEntityCert::try_from(&certificate).map_err(|_| PresentedError::Unparsable)?;
    let time =
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(u64::try_from(now.unix_timestamp()).unwrap_or(0)));
    let verify = |anchors_der: &[&[u8]]| -> Result<(), webpki::Error> {
        let anchor_certificates: Vec<CertificateDer<'_>> =
            anchors_der.iter().map(|der| CertificateDer::from(*der)).collect();
        let anchors = anchor_certificates
            .iter()
            .filter_map(|anchor| webpki::anchor_from_trusted_cert(anchor).ok())
            .collect::<Vec<_>>();
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &anchors,
                &[],
                time,
                webpki::KeyUsage::client_auth(),
                None,
                None,
            )
            .map(|_| ())
    };
    let outcome = |result: Result<(), webpki::Error>| match result {
        Ok(()) => Ok(()),
        Err(webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. }) => Err(PresentedError::Expired),
        Err(_) => Err(PresentedError::Untrusted),
    };
    let from_platform = platform_ca.map(|ca| outcome(verify(&[ca])));
    let issued_by_platform = match from_platform {
        Some(Ok(())) => true,
        Some(Err(PresentedError::Expired)) => return Err(PresentedError::Expired),
        _ => {
            let legacy: Vec<&[u8]> = legacy_roots.iter().map(Vec::as_slice).collect();
            if legacy.is_empty() {
                return Err(PresentedError::Untrusted);
            }
            outcome(verify(&legacy))?;
            false
        }
    };
    let to_time = |at: x509_parser::time::ASN1Time| OffsetDateTime::from_unix_timestamp(at.timestamp()).unwrap_or(now);
    Ok(Presented {
        serial: normalize_serial(&hex_upper(parsed.raw_serial())),
        fingerprint: fingerprint(der),
        issued_by_platform,
        subject: parsed.subject().to_string(),
        not_before: to_time(parsed.validity().not_before),
        not_after: to_time(parsed.validity().not_after),
    })
}

/// The files `pension ca init` writes.
#[derive(Debug, Clone)]
pub struct DevelopmentCaFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub crl: PathBuf,
    /// The gateway's TLS certificate for 8443, for localhost and 127.0.0.1, signed by the same CA.
    pub server_certificate: PathBuf,
    pub server_key: PathBuf,
}

impl DevelopmentCaFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            certificate: dir.join("ca.crt"),
            key: dir.join("ca.key"),
            crl: dir.join("crl.pem"),
            server_certificate: dir.join("server.crt"),
            server_key: dir.join("server.key"),
        }
    }
}

/// `pension ca init`: a development CA (P-256 key, self-signed root valid ten years, an empty CRL) and a server
/// certificate for the gateway's 8443. Refuses to overwrite an existing CA: its certificates would stop working.
pub fn init_development(dir: &Path, server_names: &[String]) -> anyhow::Result<DevelopmentCaFiles> {
    let files = DevelopmentCaFiles::in_dir(dir);
    anyhow::ensure!(!files.key.exists(), "{} exists already: the CA is initialised", files.key.display());
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let key = generate_key_pair()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CountryName, "CN");
    name.push(DnType::OrganizationName, "机关事业单位养老保险参保登记平台");
    name.push(DnType::CommonName, "养老保险参保登记平台 开发用根证书");
    params.distinguished_name = name;
    let now = OffsetDateTime::now_utc().replace_nanosecond(0)?;
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(3650);
    params.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let certificate = params.self_signed(&key).context("cannot sign the root")?;
    write_private(&files.key, &key.serialize_pem())?;
    std::fs::write(&files.certificate, certificate.pem())?;
    let config = CaConfig::default();
    let ca = CertificateAuthority::from_pem(&certificate.pem(), &SecretString::from(key.serialize_pem()), &config)?;
    let (crl, _, _) = ca.sign_crl(1, &[])?;
    std::fs::write(&files.crl, pem_block("X509 CRL", &crl))?;
    let server_key = generate_key_pair()?;
    let mut server = CertificateParams::new(server_names.to_vec()).context("server names")?;
    server.distinguished_name = DistinguishedName::new();
    server.distinguished_name.push(DnType::CommonName, server_names.first().map_or("localhost", String::as_str));
    server.not_before = now - Duration::days(1);
    server.not_after = now + Duration::days(825);
    server.serial_number = Some(SerialNumber::from_slice(&random_serial()));
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_certificate = server.signed_by(&server_key, &ca.issuer).context("cannot sign the server certificate")?;
    write_private(&files.server_key, &server_key.serialize_pem())?;
    std::fs::write(&files.server_certificate, server_certificate.pem())?;
    Ok(files)
}

pub fn pem_block(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        encoded.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).unwrap_or("")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}
