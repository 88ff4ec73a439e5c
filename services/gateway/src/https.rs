//! The logged-in port (8443). Either the gateway terminates mutual TLS itself and takes the client certificate from
//! the handshake, or, behind a Kubernetes ingress that does, it takes the certificate from a configured header that
//! the ingress sets (nginx: `ssl-client-cert`, URL-encoded PEM). Either way each request carries a
//! [`ClientCertificate`] extension, and nothing else of the platform knows which mode is on.
//!
//! In header mode the port must be reachable only from the ingress (the chart's NetworkPolicy), since anyone who
//! can reach it can set the header; the public port never reads the header.

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

use crate::trust::Trust;

/// How the client certificate reaches the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientCertificateMode {
    /// The gateway terminates mutual TLS on 8443.
    #[default]
    Tls,
    /// A trusted ingress terminates it and passes the certificate in a header; 8443 is plain HTTP.
    Header,
}

/// The client certificate (DER) a request came with, if any.
#[derive(Debug, Clone, Default)]
pub struct ClientCertificate(pub Option<Vec<u8>>);

/// How long a client may take over the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then lets the requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mode: ClientCertificateMode,
    header: String,
    trust: Trust,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection on the https port");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (router, trust, header, shutdown) = (router.clone(), trust.clone(), header.clone(), shutdown.clone());
        connections.spawn(async move {
            match mode {
                ClientCertificateMode::Tls => {
                    let Some(config) = trust.server_config() else {
                        tracing::warn!("no trust bundle from identity yet: refusing a TLS connection");
                        return;
                    };
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            tracing::info!(%error, %remote, "TLS handshake refused");
                            return;
                        }
                        Err(_) => return,
                    };
                    let peer = tls.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|c| c.to_vec());
                    let service = router.map_request(move |mut request: axum::extract::Request| {
                        request.extensions_mut().insert(ClientCertificate(peer.clone()));
                        request.extensions_mut().insert(ConnectInfo(remote));
                        request
                    });
                    serve_connection(TokioIo::new(tls), service, shutdown).await;
                }
                ClientCertificateMode::Header => {
                    let service = router.map_request(move |mut request: axum::extract::Request| {
                        let certificate = request
                            .headers()
                            .get(header.as_str())
                            .and_then(|value| value.to_str().ok())
                            .and_then(certificate_from_header);
                        request.extensions_mut().insert(ClientCertificate(certificate));
                        request.extensions_mut().insert(ConnectInfo(remote));
                        request
                    });
                    serve_connection(TokioIo::new(stream), service, shutdown).await;
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(Duration::from_secs(10), connections.wait()).await.is_err() {
        tracing::warn!("https connections did not finish in time");
    }
    Ok(())
}

async fn serve_connection<I, S>(io: I, service: S, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<axum::extract::Request, Response = axum::response::Response, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let service = TowerToHyperService::new(
        service.map_request(|request: hyper::Request<hyper::body::Incoming>| request.map(axum::body::Body::new)),
    );
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "https connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// The certificate an ingress passed: URL-encoded PEM (nginx `ssl-client-cert`), or plain PEM.
fn certificate_from_header(value: &str) -> Option<Vec<u8>> {
    let pem = percent_decode(value)?;
    CertificateDer::from_pem_slice(pem.as_bytes()).ok().map(|der| der.to_vec())
}

fn percent_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(at + 1..at + 3)?).ok()?;
                decoded.push(u8::from_str_radix(hex, 16).ok()?);
                at += 3;
            }
            byte => {
                decoded.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(decoded).ok()
}
