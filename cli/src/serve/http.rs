//! What every request goes through: a request id, one JSON log line, CORS (only when
//! configured), the bearer token and its scope; and the extractors handlers share (a
//! JSON body, options from a query string, checked path parameters).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anneal::{TokenScope, Tokens};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};
use super::state::{blocking, Shared};

pub(crate) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

fn new_request_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, Ordering::Relaxed));
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    format!("req_{:016x}", h.finish())
}

/// A client's id is kept when it is short printable ASCII; anything else gets a new one.
fn client_request_id(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(REQUEST_ID)?.to_str().ok()?;
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())).then(|| v.to_string())
}

/// Outermost layer: request id in and out, counts, one JSON log line per request on
/// stderr (method, path without the query, status, ms, request id).
pub(crate) async fn log_layer(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let id = client_request_id(req.headers()).unwrap_or_else(new_request_id);
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let mut res = next.run(req).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, v);
    }
    let status = res.status().as_u16();
    state.metrics.request(status);
    if state.config.log {
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let line = serde_json::json!({
            "ts_ms": ts,
            "msg": "request",
            "method": method.as_str(),
            "path": path,
            "status": status,
            "ms": (t0.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            "request_id": id,
        });
        eprintln!("{line}");
    }
    res
}

/// CORS, only for the origins given with `--cors-origin` (`*`: any). Preflights are
/// answered here, before the token check.
pub(crate) async fn cors_layer(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let origins = &state.config.cors_origins;
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_string);
    let allowed = origin.filter(|o| origins.iter().any(|a| a == "*" || a == o));
    let Some(origin) = allowed else { return next.run(req).await };
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let mut res = if preflight { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    h.append(header::VARY, HeaderValue::from_static("origin"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("x-request-id, retry-after"));
    if preflight {
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, DELETE, OPTIONS"));
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, x-request-id, last-event-id"),
        );
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    }
    res
}

/// Paths anyone may read (an uptime checker needs no token; the dashboard page asks
/// for one itself when the API answers 401).
fn public(path: &str) -> bool {
    path == "/health" || super::dashboard::is_dashboard_path(path)
}

/// The scope a request needs: `GET` reads; deleting and tokens are admin; any other
/// method writes (create, cancel, resume, generate, import).
pub(crate) fn needed_scope(method: &Method, path: &str) -> TokenScope {
    if path == "/api/tokens" || path.starts_with("/api/tokens/") || method == Method::DELETE {
        TokenScope::Admin
    } else if method == Method::GET || method == Method::HEAD {
        TokenScope::Read
    } else {
        TokenScope::Write
    }
}

/// The bearer token: `Authorization: Bearer <token>`, or for a `GET` (a browser's
/// EventSource cannot set headers) an `access_token` query parameter.
fn bearer(req: &Request) -> Option<String> {
    if let Some(h) = req.headers().get(header::AUTHORIZATION) {
        let v = h.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_string());
    }
    if req.method() != Method::GET {
        return None;
    }
    let q = req.uri().query()?;
    q.split('&').find_map(|kv| kv.strip_prefix("access_token=")).map(str::to_string)
}

/// Checks the token and its scope; `--no-auth` (loopback only) skips it. A missing,
/// malformed, unknown, revoked or wrong token is the same 401; a valid token without
/// the scope is 403.
pub(crate) async fn auth_layer(State(state): State<Shared>, req: Request, next: Next) -> Response {
    if state.config.no_auth || public(req.uri().path()) {
        return next.run(req).await;
    }
    let needed = needed_scope(req.method(), req.uri().path());
    let Some(token) = bearer(&req) else {
        return ApiError::unauthorized("a bearer token is required (Authorization: Bearer <token>)").into_response();
    };
    let tokens: Tokens = state.home.tokens();
    let found = match blocking(move || tokens.verify(&token)).await {
        Ok(f) => f,
        Err(e) => return e.into_response(),
    };
    let Some(rec) = found else {
        return ApiError::unauthorized("invalid or revoked token").into_response();
    };
    if !rec.scope.allows(needed) {
        return ApiError::forbidden(format!(
            "this token's scope ({}) does not allow {} {} (needs {needed})",
            rec.scope,
            req.method(),
            req.uri().path()
        ))
        .into_response();
    }
    next.run(req).await
}

/// Unknown paths: a JSON 404.
pub(crate) async fn no_route(req: Request) -> ApiError {
    ApiError::not_found(format!("no route {} {}", req.method(), req.uri().path()))
}

/// A known path with another method: a JSON 405.
pub(crate) async fn wrong_method(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

/// 408: the body (or a piece of an upload) did not come within `--body-timeout`.
pub(crate) fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive in time (--body-timeout)",
    )
}

/// A request body parsed as JSON. Too large: 413 `payload_too_large`; not JSON: 400
/// `invalid_config` naming `body`.
pub(crate) struct JsonBody(pub(crate) Value);

impl FromRequest<Shared> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &Shared) -> Result<Self, ApiError> {
        let read = tokio::time::timeout(state.config.body_timeout, Bytes::from_request(req, state))
            .await
            .map_err(|_| body_timeout())?;
        let bytes = read.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(e.status(), "payload_too_large", "the request body is larger than --max-body")
            } else {
                ApiError::config("body", e.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonBody(Value::Null));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::config("body", format!("not valid JSON: {e}")))
    }
}

impl JsonBody {
    /// The body as an object (`null` / empty: `{}`).
    pub(crate) fn object(self) -> ApiResult<Map<String, Value>> {
        match self.0 {
            Value::Object(m) => Ok(m),
            Value::Null => Ok(Map::new()),
            _ => Err(ApiError::config("body", "must be a JSON object")),
        }
    }
}

/// Options from a query string (`?status=running&recent=5`): each value is read as
/// JSON when it parses (numbers, booleans) and as a string otherwise, then checked as
/// the core checks options (unknown keys are `invalid_config` naming them).
pub(crate) fn query_options<T: DeserializeOwned + schemars::JsonSchema>(query: Option<&str>) -> ApiResult<T> {
    let pairs: Vec<(String, String)> = query.map(parse_query).unwrap_or_default();
    let pairs: Vec<_> = pairs.into_iter().filter(|(k, _)| k != "access_token").collect();
    let typed: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                serde_json::from_str::<Value>(v)
                    .ok()
                    .filter(|j| !j.is_object() && !j.is_array())
                    .unwrap_or_else(|| Value::String(v.clone())),
            )
        })
        .collect();
    match anneal::options_from_json::<T>(Value::Object(typed)) {
        Ok(t) => Ok(t),
        Err(first) => {
            let strings: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
            anneal::options_from_json::<T>(Value::Object(strings)).map_err(|_| first.into())
        }
    }
}

/// `a=1&b=x%20y` as decoded pairs.
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex =
            b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'+', _) => out.push(b' '),
            (b'%', Some(x)) => {
                out.push(x);
                i += 2;
            }
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A path parameter naming a catalog object (an id, a name, `name@alias`): non-empty,
/// at most 256 bytes, printable, with no `..`, backslash or leading `/` or `.`, so
/// nothing can walk out of the home whatever a handler does with it.
pub(crate) fn check_param(field: &str, value: &str) -> ApiResult<()> {
    let ok = !value.is_empty()
        && value.len() <= 256
        && !value.contains("..")
        && !value.starts_with(['/', '.'])
        && !value.chars().any(|c| c.is_control() || c == '\\');
    if ok {
        Ok(())
    } else {
        Err(ApiError::config(field, format!("{value:?} is not a valid id or name")))
    }
}
