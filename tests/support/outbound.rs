//! Outbound HTTP of the test host: Spin's `allowed_outbound_hosts` check and the sender.
//!
//! The component's manifest says `allowed_outbound_hosts = ["{{ gong_base_url }}"]`, so a
//! request is allowed only when its scheme, host and port equal those of the
//! `gong_base_url` variable (ports defaulted per scheme). Anything else fails with
//! `error-code::HTTP-request-denied`, as under Spin.
//!
//! Allowed requests are sent by [`send_request`], a port of wasmtime-wasi-http's
//! `default_send_request` that honours the guest's `request-options` timeouts
//! (connect / first-byte / between-bytes) the same way. wasmtime-wasi-http is built
//! without its `default-send-request` feature here (no rustls), so `https://` targets
//! are refused with an internal error; tests only talk plain HTTP to `MockGong`.

use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

/// Spin's default for each of the three outbound timeouts when the guest sets none.
pub const SPIN_DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// scheme + host + port of an `allowed_outbound_hosts` entry or of a request URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: String,
    pub host: String,
    pub port: u16,
}

impl Origin {
    /// Parses an absolute `http(s)://host[:port][/...]` URL; the path is ignored.
    pub fn parse(url: &str) -> Result<Origin, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("invalid URL {url:?}: {e}"))?;
        let scheme = parsed.scheme().to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(format!("unsupported scheme in {url:?}"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("no host in {url:?}"))?
            .to_ascii_lowercase();
        let port = parsed
            .port_or_known_default()
            .ok_or_else(|| format!("no port for {url:?}"))?;
        Ok(Origin { scheme, host, port })
    }

    /// The origin of an outgoing request's URI (as built by wasmtime-wasi-http: always
    /// absolute). `None` if it has no scheme/host.
    pub fn of_uri(uri: &http::Uri) -> Option<Origin> {
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let host = uri.host()?.to_ascii_lowercase();
        let port = match uri.port_u16() {
            Some(p) => p,
            None => match scheme.as_str() {
                "http" => 80,
                "https" => 443,
                _ => return None,
            },
        };
        Some(Origin { scheme, host, port })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// Whether `uri` may be requested under `allowed` (Spin's exact scheme/host/port match).
pub fn is_allowed(allowed: &[Origin], uri: &http::Uri) -> bool {
    match Origin::of_uri(uri) {
        Some(origin) => allowed.contains(&origin),
        None => false,
    }
}

/// One outbound request as the host saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundAttempt {
    pub method: String,
    pub url: String,
    pub allowed: bool,
}

/// Outbound-request counters shared by every request of a `TestApp`.
#[derive(Debug, Default)]
pub struct OutboundLog {
    attempts: AtomicU64,
    denied: AtomicU64,
    log: Mutex<Vec<OutboundAttempt>>,
}

impl OutboundLog {
    /// Outbound requests the guest made (allowed or not).
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }

    /// Requests that were actually sent (allowed).
    pub fn sent(&self) -> u64 {
        self.attempts() - self.denied()
    }

    /// Requests refused by the allow-list.
    pub fn denied(&self) -> u64 {
        self.denied.load(Ordering::SeqCst)
    }

    /// Every attempt, in order.
    pub fn all(&self) -> Vec<OutboundAttempt> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// URLs of the denied attempts, in order.
    pub fn denied_urls(&self) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|a| !a.allowed)
            .map(|a| a.url)
            .collect()
    }

    pub fn reset(&self) {
        self.attempts.store(0, Ordering::SeqCst);
        self.denied.store(0, Ordering::SeqCst);
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    fn record(&self, method: &http::Method, uri: &http::Uri, allowed: bool) {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if !allowed {
            self.denied.fetch_add(1, Ordering::SeqCst);
        }
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(OutboundAttempt {
                method: method.to_string(),
                url: uri.to_string(),
                allowed,
            });
    }
}

/// The `WasiHttpHooks` of one request's store.
pub struct OutboundHooks {
    pub allowed: Vec<Origin>,
    pub log: Arc<OutboundLog>,
}

type SendResult = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ),
    HttpError,
>;

impl WasiHttpHooks for OutboundHooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let allowed = is_allowed(&self.allowed, request.uri());
        self.log.record(request.method(), request.uri(), allowed);
        if !allowed {
            eprintln!(
                "[test-host] outbound request to {} denied: not in allowed_outbound_hosts {:?}",
                request.uri(),
                self.allowed
                    .iter()
                    .map(|o| o.to_string())
                    .collect::<Vec<_>>()
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// Sends `req` over a fresh HTTP/1.1 connection, like wasmtime-wasi-http's
/// `default_send_request` (plain HTTP only). Returns the response (its body enforcing the
/// between-bytes timeout) and a future driving the connection to completion.
pub async fn send_request(
    mut req: http::Request<WasiBody>,
    options: Option<RequestOptions>,
) -> Result<
    (
        http::Response<impl hyper::body::Body<Data = Bytes, Error = HttpError> + Send + 'static>,
        impl Future<Output = Result<(), HttpError>> + Send + 'static,
    ),
    HttpError,
> {
    let uri = req.uri();
    let authority = uri.authority().ok_or(HttpError::HttpRequestUriInvalid)?;
    if uri.scheme() == Some(&http::uri::Scheme::HTTPS) {
        return Err(HttpError::InternalError(Some(
            "https:// outbound requests need wasmtime-wasi-http's `default-send-request` \
             feature, which this test host is built without"
                .to_owned(),
        )));
    }
    let authority = match authority.port() {
        Some(_) => authority.to_string(),
        None => format!("{authority}:80"),
    };

    let connect_timeout = options
        .and_then(|o| o.connect_timeout)
        .unwrap_or(SPIN_DEFAULT_TIMEOUT);
    let first_byte_timeout = options
        .and_then(|o| o.first_byte_timeout)
        .unwrap_or(SPIN_DEFAULT_TIMEOUT);
    let between_bytes_timeout = options
        .and_then(|o| o.between_bytes_timeout)
        .unwrap_or(SPIN_DEFAULT_TIMEOUT)
        // tokio panics on a zero interval.
        .max(Duration::from_nanos(1));

    let stream =
        match tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(&authority))
            .await
        {
            Ok(stream) => stream.map_err(HttpError::Connect)?,
            Err(_) => return Err(HttpError::ConnectionTimeout),
        };
    let (mut sender, conn) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::Builder::new().handshake(TokioIo::new(stream)),
    )
    .await
    .map_err(|_| HttpError::ConnectionTimeout)??;

    // Origin-form request target: the scheme/authority are only for proxies.
    let path_and_query = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    *req.uri_mut() = http::Uri::builder()
        .path_and_query(path_and_query)
        .build()
        .map_err(|e| HttpError::InternalError(Some(e.to_string())))?;

    let send = async move {
        let res = tokio::time::timeout(first_byte_timeout, sender.send_request(req))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)?
            .map_err(HttpError::from)?;
        let mut timeout = tokio::time::interval(between_bytes_timeout);
        timeout.reset();
        Ok::<_, HttpError>(res.map(|incoming| TimedBody { incoming, timeout }))
    };
    let mut send = pin!(send);
    let mut conn = Some(conn);
    // Drive the connection while waiting for the response head.
    let res = std::future::poll_fn(|cx| match send.as_mut().poll(cx) {
        Poll::Ready(r) => Poll::Ready(r),
        Poll::Pending => {
            let Some(c) = conn.as_mut() else {
                return Poll::Pending;
            };
            let done = ready!(Pin::new(c).poll(cx));
            conn = None;
            match done {
                Ok(()) => send.as_mut().poll(cx),
                Err(e) => Poll::Ready(Err(HttpError::from(e))),
            }
        }
    })
    .await?;
    Ok((res, async move {
        let Some(conn) = conn else { return Ok(()) };
        match conn.await {
            Ok(()) => Ok(()),
            Err(e) if e.is_timeout() => Err(HttpError::HttpResponseTimeout),
            Err(e) => Err(e.into()),
        }
    }))
}

/// Response body enforcing the between-bytes timeout.
struct TimedBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl hyper::body::Body for TimedBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, HttpError>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                HttpError::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.incoming.size_hint()
    }
}
