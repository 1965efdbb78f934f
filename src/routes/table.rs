//! The one route table: each row says a route's method and path, who may call it, which body
//! limit applies, whether the engine's check runs after its answer, and its handler. Matching,
//! 404/405 (with `Allow`), authentication, body limits, refusal counting and the follow-up all
//! read the matched row, so a new route (a CRM receiver, say) is one row here.

use crate::bridge::Bridge;
use crate::ports::{Request, Response};
use crate::problem::ApiError;
use crate::routes;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Anyone, even while the bridge is misconfigured: it holds no data.
    Open,
    /// `Authorization: Bearer <api_token>`.
    Bearer,
    /// The route authenticates the caller itself (a webhook's signature or token).
    SelfAuth,
}

/// Which body limit applies (decided from the path before the body is read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyClass {
    /// `webhook_max_bytes`; refusals are counted as refused deliveries.
    Webhook,
    /// Gong's own 200 MB file limit (`POST /records`).
    Records,
    /// `management_max_bytes`.
    Management,
}

/// The matched path's `{name}` segments.
pub struct Params<'p> {
    template: &'static str,
    segments: &'p [&'p str],
}

impl Params<'_> {
    /// The segment that stands where the template has `{name}` (empty if none does).
    pub fn get(&self, name: &str) -> &str {
        let placeholder = format!("{{{name}}}");
        self.template
            .split('/')
            .filter(|s| !s.is_empty())
            .zip(self.segments.iter())
            .find(|(t, _)| *t == placeholder)
            .map_or("", |(_, s)| s)
    }
}

/// Handlers get the request mutably only so that `POST /records` can take its body and free it
/// once validated (a body-sized copy less at the peak).
pub type Handler = fn(&Bridge, &mut Request, &Params) -> Result<Response, ApiError>;

pub struct Route {
    pub method: &'static str,
    /// A `{name}` segment matches any one segment; a literal one wins over it (`/failures/retry`
    /// is not `/failures/{objectType}`).
    pub path: &'static str,
    pub auth: Auth,
    pub body: BodyClass,
    /// Whether the engine's cheap check (flush if due) runs after a 2xx answer.
    pub check_after: bool,
    pub handler: Handler,
}

const fn row(
    method: &'static str,
    path: &'static str,
    auth: Auth,
    body: BodyClass,
    check_after: bool,
    handler: Handler,
) -> Route {
    Route {
        method,
        path,
        auth,
        body,
        check_after,
        handler,
    }
}

use Auth::{Bearer, Open, SelfAuth};
use BodyClass::{Management, Records, Webhook};

/// Every route the bridge serves; `docs/openapi.json` is checked against it
/// (`routes::openapi_tests`). One row a line: it is a table.
#[rustfmt::skip]
pub const ROUTES: &[Route] = &[
    row("GET", "/", Open, Management, false, |_, r, _| Ok(routes::status::page(r))),
    row("HEAD", "/", Open, Management, false, |_, r, _| Ok(routes::status::page(r))),
    row("GET", "/healthz", Open, Management, false, |b, _, _| Ok(routes::health::get(b))),
    row("HEAD", "/healthz", Open, Management, false, |b, _, _| Ok(routes::health::get(b))),
    row("GET", "/openapi.json", Open, Management, false, |_, r, _| Ok(routes::embedded::OPENAPI.response(r))),
    row("HEAD", "/openapi.json", Open, Management, false, |_, r, _| Ok(routes::embedded::OPENAPI.response(r))),
    row("POST", "/webhooks", SelfAuth, Webhook, true, |b, r, _| routes::webhooks::receive(b, r)),
    row("POST", "/webhooks/pipedrive", SelfAuth, Webhook, true, |b, r, _| routes::crm::receive(b, r, &crate::crm::pipedrive::Pipedrive)),
    row("POST", "/webhooks/close", SelfAuth, Webhook, true, |b, r, _| routes::crm::receive(b, r, &crate::crm::close::Close)),
    row("POST", "/webhooks/attio", SelfAuth, Webhook, true, |b, r, _| routes::crm::receive(b, r, &crate::crm::attio::Attio)),
    row("POST", "/webhooks/custom/{source}", SelfAuth, Webhook, true, |b, r, p| routes::crm::receive_custom(b, r, p.get("source"))),
    row("GET", "/status", Bearer, Management, true, |b, _, _| routes::status::status(b)),
    row("GET", "/metrics", Bearer, Management, true, |b, _, _| routes::status::metrics(b)),
    row("GET", "/integration", Bearer, Management, true, |b, _, _| routes::integration::list(b)),
    row("PUT", "/integration", Bearer, Management, true, |b, r, _| routes::integration::register(b, r)),
    row("DELETE", "/integration", Bearer, Management, true, |b, r, _| routes::integration::delete(b, r)),
    row("GET", "/schema", Bearer, Management, true, |b, _, _| routes::schema::list(b, None)),
    row("GET", "/schema/{objectType}", Bearer, Management, true, |b, _, p| routes::schema::list(b, Some(p.get("objectType")))),
    row("POST", "/schema/{objectType}", Bearer, Management, true, |b, r, p| routes::schema::upload(b, r, p.get("objectType"))),
    row("GET", "/records/{objectType}", Bearer, Management, true, |b, r, p| routes::records::get(b, r, p.get("objectType"))),
    row("POST", "/records/{objectType}", Bearer, Records, true, |b, r, p| routes::records::upload(b, r, p.get("objectType"))),
    row("GET", "/records/{objectType}/{objectId}/status", Bearer, Management, true, |b, _, p| routes::requests::record_status(b, p.get("objectType"), p.get("objectId"))),
    row("GET", "/requests", Bearer, Management, true, |b, r, _| routes::requests::list(b, r)),
    row("GET", "/requests/{clientRequestId}", Bearer, Management, true, |b, _, p| routes::requests::get(b, p.get("clientRequestId"))),
    row("POST", "/requests/{clientRequestId}/retry", Bearer, Management, true, |b, _, p| routes::requests::retry(b, p.get("clientRequestId"))),
    row("GET", "/mappings", Bearer, Management, true, |b, _, _| routes::mappings::list(b)),
    row("GET", "/mappings/{source}", Bearer, Management, true, |b, _, p| routes::mappings::get(b, p.get("source"))),
    row("PUT", "/mappings/{source}", Bearer, Management, true, |b, r, p| routes::mappings::put(b, r, p.get("source"))),
    row("GET", "/mappings/{source}/suggest", Bearer, Management, true, |b, _, p| routes::suggest::suggest(b, p.get("source"))),
    row("POST", "/mappings/{source}/preview", Bearer, Management, true, |b, r, p| routes::mappings::preview(b, r, p.get("source"))),
    row("POST", "/sync/{source}", Bearer, Management, true, |b, _, p| routes::sync::start(b, p.get("source"))),
    row("GET", "/sync/{source}", Bearer, Management, true, |b, _, p| routes::sync::get(b, p.get("source"))),
    row("DELETE", "/sync/{source}", Bearer, Management, true, |b, _, p| routes::sync::cancel(b, p.get("source"))),
    row("POST", "/sweep", Bearer, Management, true, |b, _, _| routes::failures::sweep(b)),
    // Its own run is the engine's work: no second check after it.
    row("POST", "/flush", Bearer, Management, false, |b, r, _| routes::failures::flush_now(&b.with_budget(b.clock.now()), r)),
    row("GET", "/failures", Bearer, Management, true, |b, r, _| routes::failures::list(b, r)),
    row("POST", "/failures/retry", Bearer, Management, true, |b, r, _| routes::failures::retry(b, r)),
    row("DELETE", "/failures/{objectType}/{objectId}", Bearer, Management, true, |b, _, p| routes::failures::discard(b, p.get("objectType"), p.get("objectId"))),
];

/// How well a template fits `segments`: `None` if not at all, else the number of literal
/// segments matched (a literal wins over a `{name}`).
fn fit(template: &str, segments: &[&str]) -> Option<usize> {
    let parts: Vec<&str> = template.split('/').filter(|s| !s.is_empty()).collect();
    if parts.len() != segments.len() {
        return None;
    }
    let mut literal = 0;
    for (p, s) in parts.iter().zip(segments) {
        if p.starts_with('{') {
            continue;
        }
        if p != s {
            return None;
        }
        literal += 1;
    }
    Some(literal)
}

/// The rows of the path `segments` (a path split at `/`), all methods: only the best-fitting
/// template's rows.
pub fn rows_for<'t>(segments: &[&str]) -> Vec<&'t Route> {
    let best = ROUTES.iter().filter_map(|r| fit(r.path, segments)).max();
    ROUTES
        .iter()
        .filter(|r| best.is_some() && fit(r.path, segments) == best)
        .collect()
}

/// The parameters of `route` in `segments`.
pub fn params<'p>(route: &Route, segments: &'p [&'p str]) -> Params<'p> {
    Params {
        template: route.path,
        segments,
    }
}

/// Splits a path (a query is ignored) into its segments.
pub fn segments(path: &str) -> Vec<&str> {
    path.split('?')
        .next()
        .unwrap_or("")
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect()
}

/// The body class of a request (for the limit, before the body is read): that of its row, else
/// `Management`.
pub fn body_class(method: &str, path: &str) -> BodyClass {
    rows_for(&segments(path))
        .iter()
        .find(|r| r.method == method)
        .map_or(BodyClass::Management, |r| r.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_literal_segment_wins_and_params_are_named() {
        let segs = ["failures", "retry"];
        let rows = rows_for(&segs);
        assert!(
            rows.iter().all(|r| r.path == "/failures/retry"),
            "{:?}",
            rows.iter().map(|r| r.path).collect::<Vec<_>>()
        );
        let segs = ["failures", "ACCOUNT", "a-1"];
        let rows = rows_for(&segs);
        assert_eq!(rows.len(), 1);
        let p = params(rows[0], &segs);
        assert_eq!(
            (p.get("objectType"), p.get("objectId"), p.get("nothing")),
            ("ACCOUNT", "a-1", "")
        );
        assert!(rows_for(&["nope"]).is_empty());
    }

    #[test]
    fn body_classes_follow_the_rows() {
        assert_eq!(body_class("POST", "/webhooks"), BodyClass::Webhook);
        assert_eq!(
            body_class("POST", "/records/ACCOUNT?normalize=true"),
            BodyClass::Records
        );
        assert_eq!(body_class("GET", "/records/ACCOUNT"), BodyClass::Management);
        assert_eq!(
            body_class("GET", "/records/ACCOUNT/a/status"),
            BodyClass::Management
        );
        assert_eq!(body_class("POST", "/unknown/path"), BodyClass::Management);
    }
}
