//! A stand-in for the Kubernetes ingress in front of the gateway's logged-in port in header mode: it terminates
//! nothing, but adds the client certificate the test chooses as the URL-encoded PEM header `ssl-client-cert`, the
//! way ingress-nginx passes a verified client certificate upstream. The browser talks to it over plain HTTP.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

#[derive(Clone)]
struct Forwarding {
    upstream: u16,
    certificate: Arc<Mutex<Option<String>>>,
    client: reqwest::Client,
}

pub struct Ingress {
    pub port: u16,
    certificate: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Ingress {
    pub async fn start(upstream: u16) -> Self {
        let certificate = Arc::new(Mutex::new(None));
        let state = Forwarding {
            upstream,
            certificate: certificate.clone(),
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let router = Router::new().fallback(forward).with_state(state);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { port, certificate, task }
    }

    /// The certificate (PEM) passed upstream from now on; `None`: no header, as with no certificate.
    pub fn present(&self, pem: Option<&str>) {
        *self.certificate.lock().expect("lock") = pem.map(str::to_owned);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn forward(State(state): State<Forwarding>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024).await.expect("request body");
    let path = parts.uri.path_and_query().map(|path| path.as_str().to_owned()).unwrap_or_default();
    let mut upstream =
        state.client.request(parts.method, format!("http://127.0.0.1:{}{path}", state.upstream)).body(body);
    for (name, value) in &parts.headers {
        // Like an ingress, never pass on a certificate header the client made up.
        if name != "host" && name != "content-length" && name != "ssl-client-cert" {
            upstream = upstream.header(name, value);
        }
    }
    let certificate = state.certificate.lock().expect("lock").clone();
    if let Some(pem) = certificate {
        upstream = upstream.header("ssl-client-cert", url_encode(&pem));
    }
    let answer = upstream.send().await.expect("the gateway answers the ingress");
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            response = response.header(name, value);
        }
    }
    response.body(axum::body::Body::from(answer.bytes().await.expect("body"))).expect("response").into_response()
}

/// Percent-encoding as ingress-nginx applies to `ssl-client-cert`.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => char::from(byte).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
