//! The two documents the component carries, the status page and the OpenAPI document: stored
//! gzipped by `build.rs` (98 kB of text become about 12 kB of the component, issue 12), sent as
//! they are to a client that accepts gzip, and inflated for one that does not (`curl` without
//! `--compressed`, say).

use crate::ports::{Request, Response};
use crate::problem::ApiError;

/// A gzipped document and the media type it is served as.
pub struct Embedded {
    gzip: &'static [u8],
    content_type: &'static str,
}

/// `GET /`: one self-contained HTML file (inline CSS and JS, nothing fetched from outside).
pub const STATUS_PAGE: Embedded = Embedded {
    gzip: include_bytes!(concat!(env!("OUT_DIR"), "/status_page.html.gz")),
    content_type: "text/html; charset=utf-8",
};

/// `GET /openapi.json`: `docs/openapi.json` minified, checked against the router and the real
/// bodies by `routes::openapi_tests`.
pub const OPENAPI: Embedded = Embedded {
    gzip: include_bytes!(concat!(env!("OUT_DIR"), "/openapi.min.json.gz")),
    content_type: "application/json",
};

/// The plain gzip header `build.rs` writes (no name, no extra fields), and the CRC and length
/// trailer: what lies around the deflate stream.
const GZIP_HEADER: usize = 10;
const GZIP_TRAILER: usize = 8;

impl Embedded {
    /// The 200 answer to `request`: gzip when its `Accept-Encoding` allows it, else identity.
    pub fn response(&self, request: &Request) -> Response {
        let gzip = accepts_gzip(request);
        let body = if gzip {
            Some(self.gzip.to_vec())
        } else {
            self.inflated()
        };
        // The build checked the stream and a test inflates both documents: a failure here is a
        // broken build, answered as one rather than as an empty 200.
        let Some(body) = body else {
            return ApiError::Internal(format!(
                "the embedded {} could not be inflated",
                self.content_type
            ))
            .into_response();
        };
        let mut builder = http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, self.content_type)
            .header(http::header::CACHE_CONTROL, "no-store")
            .header(http::header::VARY, "accept-encoding");
        if gzip {
            builder = builder.header(http::header::CONTENT_ENCODING, "gzip");
        }
        builder
            .body(body)
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }

    /// The document itself.
    pub fn inflated(&self) -> Option<Vec<u8>> {
        self.gzip
            .get(GZIP_HEADER..self.gzip.len().saturating_sub(GZIP_TRAILER))
            .and_then(|deflate| miniz_oxide::inflate::decompress_to_vec(deflate).ok())
    }
}

/// Whether `Accept-Encoding` lists `gzip` (or `x-gzip`, or `*`) without `q=0`. No header means
/// identity here: RFC 9110 would allow any coding, but a terminal wants the text.
fn accepts_gzip(request: &Request) -> bool {
    request
        .headers()
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            // q is at most three decimals (RFC 9110 §12.4.2): zero is `0`, `0.`, `0.0`…`0.000`.
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .is_some_and(|q| q.chars().all(|c| c == '0' || c == '.'))
            });
            ["gzip", "x-gzip", "*"]
                .iter()
                .any(|c| coding.eq_ignore_ascii_case(c))
                && !refused
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(accept_encoding: Option<&str>) -> Request {
        let mut builder = http::Request::builder().uri("/openapi.json");
        if let Some(v) = accept_encoding {
            builder = builder.header("accept-encoding", v);
        }
        builder.body(Vec::new()).unwrap()
    }

    #[test]
    fn both_documents_inflate_to_their_sources() {
        let page = STATUS_PAGE.inflated().unwrap();
        assert_eq!(page, include_bytes!("status_page.html"));
        let document: serde_json::Value =
            serde_json::from_slice(&OPENAPI.inflated().unwrap()).unwrap();
        let source: serde_json::Value =
            serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
        assert_eq!(document, source);
        assert!(
            OPENAPI.gzip.len() * 4 < document.to_string().len(),
            "compression is what they are embedded for"
        );
    }

    #[test]
    fn a_document_that_does_not_inflate_is_a_500_not_an_empty_200() {
        let broken = Embedded {
            gzip: b"\x1f\x8b\x08\0\0\0\0\0\0\xffnot deflate at all",
            content_type: "application/json",
        };
        assert!(broken.inflated().is_none());
        let response = broken.response(&request(None));
        assert_eq!(response.status(), 500);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        // A client that takes gzip gets the bytes as stored: its own decoder reports them.
        assert_eq!(broken.response(&request(Some("gzip"))).status(), 200);
    }

    #[test]
    fn gzip_only_for_a_client_that_accepts_it() {
        for (header, gzip) in [
            (None, false),
            (Some("gzip, deflate, br"), true),
            (Some("br;q=1.0, GZIP;q=0.5"), true),
            (Some("*"), true),
            (Some("identity"), false),
            (Some("gzip;q=0"), false),
            (Some("gzip; q=0.000"), false),
            (Some("deflate, gzip;q=0.0"), false),
            (Some("gzipx"), false),
        ] {
            let response = OPENAPI.response(&request(header));
            let encoding = response
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(encoding.as_deref(), gzip.then_some("gzip"), "{header:?}");
            assert_eq!(response.headers()["vary"], "accept-encoding");
            let body = if gzip {
                OPENAPI.inflated().unwrap()
            } else {
                response.body().clone()
            };
            assert!(
                serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
                "{header:?}"
            );
            assert_eq!(response.body().len() < 20_000, gzip, "{header:?}");
        }
    }
}
