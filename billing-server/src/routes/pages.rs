//! The pages embedded in the binary (issue 19): the customer portal
//! (`/portal`) and the vendor console (`/console`), static HTML, CSS and
//! JavaScript that speak only the public HTTP API. No CDN, no inline script:
//! every page answers with a strict Content-Security-Policy.

use crate::error::ApiError;
use crate::http::Response;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header;

/// What every page and asset is served with: scripts and connections from
/// this origin only, no inline script or style, no framing, no plugins.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self' data:; font-src 'self'; object-src 'none'; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $name)),
        }
    };
}

/// The files under `/assets/`.
const ASSETS: &[Asset] = &[
    asset!("common.js", "text/javascript; charset=utf-8"),
    asset!("portal.js", "text/javascript; charset=utf-8"),
    asset!("console.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
];

const PORTAL: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/portal.html"));
const CONSOLE: &[u8] = include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/console.html"));

fn respond(content_type: &'static str, body: &'static [u8], cache: &'static str) -> Response {
    hyper::Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, cache)
        .header(header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY)
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .header(header::REFERRER_POLICY, "no-referrer")
        .header(header::X_FRAME_OPTIONS, "DENY")
        .body(Full::new(Bytes::from_static(body)).boxed_unsync())
        .expect("static headers are valid")
}

/// `GET /portal`: the customer portal.
pub fn portal() -> Result<Response, ApiError> {
    Ok(respond("text/html; charset=utf-8", PORTAL, "no-store"))
}

/// `GET /console`: the vendor console.
pub fn console() -> Result<Response, ApiError> {
    Ok(respond("text/html; charset=utf-8", CONSOLE, "no-store"))
}

/// `GET /assets/{file}`: the pages' scripts and styles. Revalidated on
/// every use (`no-cache`): a new binary serves new files at once.
pub fn asset(name: &str) -> Result<Response, ApiError> {
    let asset = ASSETS.iter().find(|a| a.name == name).ok_or_else(|| ApiError::not_found("no such asset"))?;
    Ok(respond(asset.content_type, asset.body, "no-cache"))
}
