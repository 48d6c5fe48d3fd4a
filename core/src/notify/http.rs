//! One webhook POST (ureq, blocking) and the reading of its answer.

use std::time::{Duration, SystemTime};

use ureq::http::Uri;

use crate::error::{Error, Result};

/// What came back from one attempt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outcome {
    /// The HTTP status; `None` when no answer came (refused, reset, timeout, TLS).
    pub(crate) status: Option<u16>,
    /// The answer's `Retry-After`, as a delay from now.
    pub(crate) retry_after: Option<Duration>,
    /// Why the attempt failed (absent on 2xx).
    pub(crate) error: Option<String>,
}

impl Outcome {
    pub(crate) fn is_success(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// Checks a webhook URL: absolute `http` or `https`, with a host. Anything else is
/// `invalid_config` naming `url`.
pub(crate) fn check_url(url: &str) -> Result<()> {
    let bad = |reason: String| Error::config("url", reason);
    if url.is_empty() {
        return Err(bad("is empty".into()));
    }
    if url.len() > 2048 {
        return Err(bad(format!("is {} bytes long; at most 2048", url.len())));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(format!("`{url}` contains whitespace or control characters")));
    }
    let uri: Uri = url.parse().map_err(|e| bad(format!("`{url}` is not a URL ({e})")))?;
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("http") | Some("https") => {}
        Some(other) => return Err(bad(format!("`{url}`: the scheme must be http or https, not `{other}`"))),
        None => return Err(bad(format!("`{url}` has no scheme; it must start with http:// or https://"))),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad(format!("`{url}` has no host")));
    }
    Ok(())
}

/// `Retry-After`: delay-seconds or an HTTP date (then relative to `now`; a past date is 0).
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(v.parse::<u64>().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// POSTs `body` to `url` with `headers`; never follows redirects (a 3xx is a failure).
pub(crate) fn post(url: &str, headers: &[(&str, String)], body: &str, timeout: Duration) -> Outcome {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("anneal/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut req = agent.post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    match req.send(body) {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            // Read (a bounded part of) the answer so the exchange completes; its start
            // goes into the error of a failed attempt.
            let text = resp.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
            let error = if (200..300).contains(&status) {
                None
            } else {
                let snippet: String = text.chars().take(200).collect();
                Some(if snippet.trim().is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {}", snippet.trim())
                })
            };
            Outcome { status: Some(status), retry_after, error }
        }
        Err(e) => Outcome { status: None, retry_after: None, error: Some(e.to_string()) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_http_with_a_host() {
        for ok in ["http://127.0.0.1:8080/hook", "https://discord.com/api/webhooks/1/abc", "HTTPS://example.com"] {
            check_url(ok).unwrap();
        }
        for bad in
            ["", "ftp://example.com/x", "file:///etc/passwd", "example.com/hook", "http://", "http:///x", "http://a b"]
        {
            let e = check_url(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_config", "{bad}");
            assert!(e.to_string().contains("`url`"), "{bad}: {e}");
        }
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
