//! A small HTTP/1.1 client (hyper) for talking to a real `spin up` over 127.0.0.1, with the
//! bridge's credentials and Standard Webhooks signing.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::support::signing::{sign_webhook_with, API_TOKEN, WEBHOOK_SECRET_BYTES};

/// What the bridge answered, and how long it took to answer in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; an unreadable body is a test failure that shows the body.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer {} is not JSON ({e}): {}", self.status, self.text()))
    }

    /// Asserts the status; for an error also that the body is problem+json of the bridge
    /// with a detail. Returns the JSON body (`Null` when empty).
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        if status >= 400 {
            assert_eq!(
                self.header("content-type"),
                Some("application/problem+json"),
                "{}",
                self.text()
            );
            let body = self.json();
            assert_eq!(body["status"], status, "{body}");
            assert!(
                body["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("urn:gong-crm-bridge:problem:")),
                "{body}"
            );
            assert!(
                body["detail"].as_str().is_some_and(|d| !d.is_empty()),
                "{body}"
            );
            return body;
        }
        if self.body.is_empty() {
            Value::Null
        } else {
            self.json()
        }
    }
}

/// Sends one request on a fresh connection and reads the whole answer within `timeout`.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let started = Instant::now();
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // The connection ends with the exchange; its error (if any) shows in `send_request`.
            let _ = connection.await;
        });
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::from(body)))?;
        let response = sender
            .send_request(request)
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.into_body().collect().await?.to_bytes().to_vec();
        anyhow::Ok(Reply {
            status,
            headers,
            body,
            elapsed: started.elapsed(),
        })
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow!("{method} {path}: no complete answer within {timeout:?}"))?
}

/// Seconds since the Unix epoch, as a webhook sender stamps its deliveries.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A bridge served by one `spin up`, as its users call it.
#[derive(Debug, Clone, Copy)]
pub struct Bridge {
    pub addr: SocketAddr,
}

/// Bound on one ordinary call; the cases that measure time to answer set their own.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

impl Bridge {
    /// An unauthenticated request.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        send(self.addr, method, path, headers, body.into(), CALL_TIMEOUT).await
    }

    /// A management API request with the bearer token.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Vec<u8>>,
    ) -> anyhow::Result<Reply> {
        let token = format!("Bearer {API_TOKEN}");
        let mut all = vec![("authorization", token.as_str())];
        all.extend_from_slice(headers);
        self.raw(method, path, &all, body).await
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Reply> {
        self.call("GET", path, &[], Vec::new()).await
    }

    pub async fn call_json(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Reply> {
        self.call(
            method,
            path,
            &[("content-type", "application/json")],
            serde_json::to_vec(body)?,
        )
        .await
    }

    /// `POST /flush?force=true`: everything buffered goes to Gong now. While the work after an
    /// earlier answer (or a killed process, until its 30 s lease expires) holds the flush lease,
    /// the report says so; like a scheduler, ask again shortly (for at most 40 s).
    pub async fn force_flush(&self) -> anyhow::Result<Reply> {
        for _ in 0..400 {
            let reply = self
                .call("POST", "/flush?force=true", &[], Vec::new())
                .await?;
            let busy = reply.status == 200
                && reply.json()["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("flush lease"));
            if !busy {
                return Ok(reply);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!("POST /flush found the flush lease held for 40 s")
    }

    /// A delivery signed with `key` at `timestamp`, bounded by `timeout`.
    pub async fn webhook_signed(
        &self,
        key: &[u8],
        id: &str,
        timestamp: i64,
        body: &[u8],
        timeout: Duration,
    ) -> anyhow::Result<Reply> {
        let signature = sign_webhook_with(key, id, timestamp, body);
        let ts = timestamp.to_string();
        let headers = [
            ("content-type", "application/json"),
            ("webhook-id", id),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", signature.as_str()),
        ];
        send(
            self.addr,
            "POST",
            "/webhooks",
            &headers,
            body.to_vec(),
            timeout,
        )
        .await
    }

    /// A delivery signed now with the test secret.
    pub async fn webhook(&self, id: &str, body: &Value) -> anyhow::Result<Reply> {
        self.webhook_signed(
            WEBHOOK_SECRET_BYTES,
            id,
            unix_now(),
            &serde_json::to_vec(body)?,
            CALL_TIMEOUT,
        )
        .await
    }

    /// `GET /records/{type}/{id}/status`, the "where is my record" answer.
    pub async fn record_state(&self, object_type: &str, object_id: &str) -> anyhow::Result<Value> {
        Ok(self
            .get(&format!("/records/{object_type}/{object_id}/status"))
            .await?
            .expect(200))
    }
}
