//! The dashboard: a one-page app (vanilla JS, hand-written SVG charts, no build step)
//! whose files are embedded in the binary, so `anneal serve` needs nothing at run time
//! and no CDN. `GET /` is the page; `GET /assets/<file>` its script, style and icon.
//!
//! Caching: the page is `no-cache` (revalidated with its ETag, so a new binary's page
//! is seen at once) and links every asset as `/assets/<file>?v=<digest of all files>`;
//! an asset asked for with the current digest is `immutable` for a year, without it
//! `no-cache`. Every answer carries an ETag and `If-None-Match` gets a 304.
//!
//! What the page calls, and what it expects where the server has not built it yet, is
//! written down in `dashboard/API.md`.

use std::sync::OnceLock;

use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One embedded file under `/assets/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset { name: "app.js", content_type: "text/javascript; charset=utf-8", body: include_bytes!("dashboard/app.js") },
    Asset { name: "style.css", content_type: "text/css; charset=utf-8", body: include_bytes!("dashboard/style.css") },
    Asset { name: "favicon.svg", content_type: "image/svg+xml", body: include_bytes!("dashboard/favicon.svg") },
];

/// The page, with `{{v}}` where the assets' digest goes.
const INDEX: &str = include_str!("dashboard/index.html");

/// Scripts, styles and connections only from this server; no frames, no plugins.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
                   connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The dashboard's routes, to merge into the server's router (any state).
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(index)).route("/index.html", get(index)).route("/assets/{file}", get(asset))
}

/// Paths the dashboard serves: they need no token (the page asks for one itself when
/// the API answers 401).
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path == "/index.html" || path.starts_with("/assets/")
}

/// 64-bit FNV-1a: a stable digest of the embedded files (the same in every build of
/// the same files), for ETags and the `?v=` of asset links.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator so that moving bytes between files changes the digest.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The digest of the page and every asset.
fn version() -> &'static str {
    static V: OnceLock<String> = OnceLock::new();
    V.get_or_init(|| {
        let mut parts: Vec<&[u8]> = vec![INDEX.as_bytes()];
        parts.extend(ASSETS.iter().map(|a| a.body));
        format!("{:016x}", fnv1a(&parts))
    })
}

/// The page with the digest filled in.
fn index_html() -> &'static str {
    static PAGE: OnceLock<String> = OnceLock::new();
    PAGE.get_or_init(|| INDEX.replace("{{v}}", version()))
}

fn etag_of(body: &[u8]) -> String {
    format!("\"{:016x}\"", fnv1a(&[body]))
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// An embedded file with its headers, or 304 when the client has it.
fn respond(headers: &HeaderMap, content_type: &'static str, body: &'static [u8], cache: &'static str) -> Response {
    let etag = etag_of(body);
    let mut res =
        if not_modified(headers, &etag) { StatusCode::NOT_MODIFIED.into_response() } else { body.into_response() };
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    res
}

async fn index(headers: HeaderMap) -> Response {
    let mut res = respond(&headers, "text/html; charset=utf-8", index_html().as_bytes(), "no-cache");
    let h = res.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    res
}

async fn asset(Path(file): Path<String>, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let Some(a) = ASSETS.iter().find(|a| a.name == file) else {
        let body = serde_json::json!({"error": {
            "code": "not_found",
            "message": format!("no dashboard asset {file:?}"),
            "type": "not_found_error",
        }});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let current = q.as_deref().is_some_and(|q| q.split('&').any(|kv| kv.strip_prefix("v=") == Some(version())));
    let cache = if current { "public, max-age=31536000, immutable" } else { "no-cache" };
    respond(&headers, a.content_type, a.body, cache)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::io::{Read, Write};

    use super::*;

    /// Serves the dashboard router on a loopback port for the test's life.
    struct TestServer {
        addr: std::net::SocketAddr,
        _rt: tokio::runtime::Runtime,
    }

    fn serve() -> TestServer {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move {
            let app: Router = router();
            let _ = axum::serve(listener, app).await;
        });
        TestServer { addr, _rt: rt }
    }

    /// One HTTP/1.1 request: status, headers (lower-case names), body.
    fn get(s: &TestServer, path: &str, extra: &[(&str, &str)]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut tcp = std::net::TcpStream::connect(s.addr).unwrap();
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
        for (k, v) in extra {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        tcp.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
        let head = String::from_utf8(raw[..split].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        (status, headers, raw[split + 4..].to_vec())
    }

    fn header<'a>(h: &'a [(String, String)], name: &str) -> &'a str {
        h.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or_else(|| panic!("no {name} header"))
    }

    #[test]
    fn page_and_assets_are_served_with_types_and_cache_headers() {
        let s = serve();
        let (status, h, body) = get(&s, "/", &[]);
        assert_eq!(status, 200);
        assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&h, "cache-control"), "no-cache");
        assert!(header(&h, "content-security-policy").contains("script-src 'self'"));
        let page = String::from_utf8(body).unwrap();
        assert!(!page.contains("{{v}}"), "the digest is filled in");
        // Every asset the page links exists, with the current digest, and is cached for good.
        let links: Vec<&str> = page.match_indices("/assets/").map(|(i, _)| &page[i..]).collect();
        assert!(links.len() >= 3, "script, style and icon are linked");
        for link in links {
            let url = &link[..link.find('"').unwrap()];
            assert!(url.ends_with(&format!("?v={}", version())), "{url}");
            let (status, h, body) = get(&s, url, &[]);
            assert_eq!(status, 200, "{url}");
            assert_eq!(header(&h, "cache-control"), "public, max-age=31536000, immutable", "{url}");
            assert_eq!(header(&h, "x-content-type-options"), "nosniff");
            assert!(!body.is_empty());
        }
        let (_, h, _) = get(&s, "/assets/app.js", &[]);
        assert_eq!(header(&h, "content-type"), "text/javascript; charset=utf-8");
        assert_eq!(header(&h, "cache-control"), "no-cache", "no digest: revalidate");
        let (_, h, _) = get(&s, "/assets/style.css?v=0000000000000000", &[]);
        assert_eq!(header(&h, "content-type"), "text/css; charset=utf-8");
        assert_eq!(header(&h, "cache-control"), "no-cache", "an old digest: revalidate");
        let (_, h, _) = get(&s, "/assets/favicon.svg", &[]);
        assert_eq!(header(&h, "content-type"), "image/svg+xml");
    }

    #[test]
    fn etags_give_304() {
        let s = serve();
        for path in ["/", "/assets/app.js"] {
            let (_, h, body) = get(&s, path, &[]);
            let etag = header(&h, "etag").to_string();
            let (status, h2, body2) = get(&s, path, &[("If-None-Match", &etag)]);
            assert_eq!(status, 304, "{path}");
            assert!(body2.is_empty() && !body.is_empty());
            assert_eq!(header(&h2, "etag"), etag);
            let (status, _, _) = get(&s, path, &[("If-None-Match", "\"something-else\"")]);
            assert_eq!(status, 200);
        }
    }

    #[test]
    fn unknown_assets_and_traversal_are_json_404s() {
        let s = serve();
        for path in ["/assets/nope.js", "/assets/..%2Fdashboard.rs", "/assets/%2e%2e%2fCargo.toml", "/assets/app.js%00"]
        {
            let (status, h, body) = get(&s, path, &[]);
            assert_eq!(status, 404, "{path}");
            assert!(header(&h, "content-type").starts_with("application/json"));
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["error"]["code"], "not_found");
        }
        let (status, _, _) = get(&s, "/assets/../Cargo.toml", &[]);
        assert_ne!(status, 200);
    }

    #[test]
    fn dashboard_paths_are_told_apart_from_the_api() {
        for p in ["/", "/index.html", "/assets/app.js"] {
            assert!(is_dashboard_path(p), "{p}");
        }
        for p in ["/api/jobs", "/health", "/v1/models", "/assetsx", "/index.htm"] {
            assert!(!is_dashboard_path(p), "{p}");
        }
    }

    #[test]
    fn the_digest_covers_every_file() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(version().len(), 16);
        assert_eq!(version(), version());
    }
}
