//! What the gateway trusts, refreshed from identity every `gateway.trust_refresh`: the CA certificates a client
//! certificate may chain to, the CRL, and the revoked serials. From them it builds the TLS configuration of 8443
//! (mutual TLS, client certificates checked against the CA roots and the CRL) and refuses sessions whose
//! certificate was revoked since they began. So a revocation takes effect within one refresh, without a restart.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use proto::identity::identity_client::IdentityClient;
use proto::identity::{GetTrustBundleRequest, TrustBundle};
use proto::names::Service;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

/// The gateway's own TLS certificate chain and key, for 8443.
#[derive(Debug)]
pub struct ServerIdentity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    pub fn load(certificate_file: &Path, key_file: &Path) -> anyhow::Result<Self> {
        let chain = CertificateDer::pem_file_iter(certificate_file)
            .with_context(|| format!("gateway.tls_certificate_file: cannot read {}", certificate_file.display()))?
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("gateway.tls_certificate_file: {} is not PEM", certificate_file.display()))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "gateway.tls_certificate_file: {} holds no certificate",
            certificate_file.display()
        );
        let key = PrivateKeyDer::from_pem_file(key_file)
            .with_context(|| format!("gateway.tls_key_file: cannot read a private key from {}", key_file.display()))?;
        Ok(Self { chain, key })
    }

    /// The chain and key, for another listener's TLS configuration.
    pub fn parts(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }
}

/// One refresh's worth of trust.
#[derive(Debug)]
struct Snapshot {
    bundle: TrustBundle,
    revoked: HashSet<String>,
    revoked_fingerprints: HashSet<Vec<u8>>,
    tls: Option<Arc<ServerConfig>>,
}

/// The current trust, shared by the TLS listener, the session checks and the CRL endpoint.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    // A std lock: it is held only to swap or clone an Arc, never across an await.
    current: Arc<RwLock<Option<Arc<Snapshot>>>>,
    server: Option<Arc<ServerIdentity>>,
}

impl Trust {
    /// `server` is the gateway's certificate when it terminates mutual TLS itself; `None` behind an ingress.
    pub fn new(server: Option<ServerIdentity>) -> Self {
        Self { current: Arc::default(), server: server.map(Arc::new) }
    }

    fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.current.read().ok().and_then(|current| current.clone())
    }

    /// The TLS configuration for the next handshake; `None` until identity has answered once.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.snapshot().and_then(|snapshot| snapshot.tls.clone())
    }

    /// Whether a certificate serial is revoked, as of the last refresh.
    pub fn is_revoked(&self, serial: &str) -> bool {
        self.snapshot().is_some_and(|snapshot| snapshot.revoked.contains(serial))
    }

    /// Whether an API client's certificate (by its SHA-256) is revoked, as of the last refresh.
    pub fn is_fingerprint_revoked(&self, fingerprint: &[u8]) -> bool {
        self.snapshot().is_some_and(|snapshot| snapshot.revoked_fingerprints.contains(fingerprint))
    }

    pub fn is_loaded(&self) -> bool {
        self.snapshot().is_some()
    }

    /// The CRL in DER and the CA certificate in PEM, for publishing on 8080.
    pub fn published(&self) -> Option<(Vec<u8>, String)> {
        self.snapshot().map(|snapshot| (snapshot.bundle.crl_der.clone(), snapshot.bundle.ca_certificate_pem.clone()))
    }

    /// Fetches the bundle from identity and swaps it in.
    pub async fn refresh(&self, platform: &kit::service::Platform) -> anyhow::Result<()> {
        let bundle = IdentityClient::new(platform.channel(Service::Identity))
            .get_trust_bundle(GetTrustBundleRequest {})
            .await
            .map_err(|status| anyhow::anyhow!("identity: {}", status.message()))?
            .into_inner();
        let tls = match &self.server {
            Some(server) => Some(Arc::new(server_config(server, &bundle)?)),
            None => None,
        };
        let revoked = bundle.revoked_serials.iter().cloned().collect();
        let revoked_fingerprints = bundle.revoked_client_fingerprints.iter().cloned().collect();
        let snapshot = Arc::new(Snapshot { bundle, revoked, revoked_fingerprints, tls });
        if let Ok(mut current) = self.current.write() {
            *current = Some(snapshot);
        }
        Ok(())
    }

    /// Refreshes every `interval` until shutdown; quickly at first, until identity has answered once.
    pub async fn keep_fresh(self, platform: kit::service::Platform, interval: Duration, shutdown: CancellationToken) {
        loop {
            let pause = match self.refresh(&platform).await {
                Ok(()) => interval,
                Err(error) => {
                    tracing::warn!(%error, "cannot refresh the trust bundle; keeping the previous one");
                    if self.is_loaded() { interval } else { Duration::from_millis(500) }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}

/// Mutual TLS: a client certificate is asked for, checked against the CA roots and the CRL when given; one not
/// given is let through so the page can say, in Chinese, that the key is missing.
fn server_config(server: &ServerIdentity, bundle: &TrustBundle) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    let pems = std::iter::once(&bundle.ca_certificate_pem).chain(bundle.legacy_root_pems.iter());
    for pem in pems.filter(|pem| !pem.is_empty()) {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).context("a CA certificate is not PEM")?;
        roots.add(der).context("an unusable CA certificate")?;
    }
    let crls = if bundle.crl_der.is_empty() {
        Vec::new()
    } else {
        vec![CertificateRevocationListDer::from(bundle.crl_der.clone())]
    };
    let verifier = if roots.is_empty() {
        // No CA yet: no client certificate can be trusted, and login answers so.
        WebPkiClientVerifier::no_client_auth()
    } else {
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            // Legacy roots publish no CRL here: their keys' state is identity's.
            .allow_unknown_revocation_status()
            .allow_unauthenticated()
            .build()
            .context("cannot build the client certificate verifier")?
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(server.chain.clone(), server.key.clone_key())
        .context("the gateway's TLS certificate and key do not match")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
