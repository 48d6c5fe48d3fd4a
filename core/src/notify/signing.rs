//! Standard Webhooks signatures (<https://www.standardwebhooks.com>).
//!
//! A delivery carries three headers:
//!
//! ```text
//! webhook-id:        msg_3f2a9c0d1b7e4a56          the outbox row's id, the same on every attempt
//! webhook-timestamp: 1767225600                    unix seconds of this attempt
//! webhook-signature: v1,<base64 HMAC-SHA256>       of "{id}.{timestamp}.{body}", keyed by the secret
//! ```
//!
//! The secret is `whsec_` followed by the base64 of the key (24 to 64 random bytes).
//! A receiver recomputes the HMAC over the raw body it received, compares in constant
//! time with each space-separated `v1,` signature, rejects a timestamp too far from its
//! clock (replays), and drops an id it has already processed (re-sends).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::error::{Error, Location, Result};

/// The prefix of a signing secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// The tolerance receivers usually allow between `webhook-timestamp` and their clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// A new random secret: `whsec_` + base64 of 32 random bytes.
pub fn generate_secret() -> String {
    let key: [u8; 32] = rand::rng().random();
    format!("{SECRET_PREFIX}{}", B64.encode(key))
}

/// The key bytes of a `whsec_<base64>` secret (the prefix is optional). A secret that is
/// not base64, or whose key is empty, is `invalid_config` naming `secret`.
pub(crate) fn secret_key(secret: &str) -> Result<Vec<u8>> {
    let b64 = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    let key = B64
        .decode(b64)
        .map_err(|e| Error::config("secret", format!("must be `{SECRET_PREFIX}` followed by base64 ({e})")))?;
    if key.is_empty() {
        return Err(Error::config("secret", "the key is empty"));
    }
    Ok(key)
}

/// Checks a secret a webhook is registered with: `whsec_` + base64 of 24 to 64 bytes.
pub(crate) fn check_secret(secret: &str) -> Result<()> {
    if !secret.starts_with(SECRET_PREFIX) {
        return Err(Error::config("secret", format!("must start with `{SECRET_PREFIX}`")));
    }
    let n = secret_key(secret)?.len();
    if !(24..=64).contains(&n) {
        return Err(Error::config("secret", format!("the key must be 24 to 64 bytes, got {n}")));
    }
    Ok(())
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> Result<Vec<u8>> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).map_err(|e| Error::config("secret", e.to_string()))?;
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.as_bytes());
    m.update(b".");
    m.update(body);
    Ok(m.finalize().into_bytes().to_vec())
}

/// The `webhook-signature` header value (`v1,<base64>`) of `body` sent as message `id`
/// at `timestamp` (unix seconds).
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    let key = secret_key(secret)?;
    Ok(format!("v1,{}", B64.encode(mac(&key, id, &timestamp.to_string(), body)?)))
}

/// Verifies a delivery with the headers it came with, against the current clock:
/// `id` = `webhook-id`, `timestamp` = `webhook-timestamp`, `signature` =
/// `webhook-signature` (one or more space-separated `v1,<base64>`), `body` = the raw
/// body as received. `Ok(())` when one `v1` signature matches and the timestamp is
/// within `tolerance` of now (either way).
///
/// Errors: a malformed secret is `invalid_config` (field `secret`); a timestamp that is
/// not an integer or is out of tolerance is `invalid_data` (field `webhook-timestamp`);
/// no matching signature is `invalid_data` (field `webhook-signature`).
pub fn verify_signature(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    tolerance: Duration,
) -> Result<()> {
    verify_signature_at(secret, id, timestamp, body, signature, tolerance, SystemTime::now())
}

/// [`verify_signature`] against the clock reading `now`.
pub fn verify_signature_at(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signature: &str,
    tolerance: Duration,
    now: SystemTime,
) -> Result<()> {
    let key = secret_key(secret)?;
    let bad = |field: &str, reason: String| Error::data(Location::default().field(field), reason);
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| bad("webhook-timestamp", format!("`{timestamp}` is not a unix time in seconds")))?;
    let now_s = unix_seconds(now);
    let tol = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
    if ts < now_s.saturating_sub(tol) {
        return Err(bad("webhook-timestamp", format!("{ts} is more than {tol} s before now ({now_s}): too old")));
    }
    if ts > now_s.saturating_add(tol) {
        return Err(bad("webhook-timestamp", format!("{ts} is more than {tol} s after now ({now_s}): in the future")));
    }
    let expected = mac(&key, id, timestamp.trim(), body)?;
    let mut matched = false;
    for part in signature.split_whitespace() {
        let Some(b64) = part.strip_prefix("v1,") else { continue };
        if let Ok(sig) = B64.decode(b64) {
            // Every candidate is compared in full (no early exit on a match either).
            matched |= constant_time_eq(&sig, &expected);
        }
    }
    if !matched {
        return Err(bad("webhook-signature", "no `v1` signature matches the body".into()));
    }
    Ok(())
}

/// Equality whose time depends only on the lengths, not on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

pub(crate) fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks specification (its reference libraries'
    // tests use the same secret, id, timestamp and payload).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(ts: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(ts as u64)
    }

    #[test]
    fn signs_the_specifications_example() {
        assert_eq!(sign(SECRET, ID, 1614265330, BODY).unwrap(), SIG);
    }

    #[test]
    fn verifies_within_tolerance_and_among_several_signatures() {
        let now = at(1614265330 + 10);
        verify_signature_at(SECRET, ID, TS, BODY, SIG, DEFAULT_TOLERANCE, now).unwrap();
        let several = format!("v1,AAAA v2,zzz {SIG}");
        verify_signature_at(SECRET, ID, TS, BODY, &several, DEFAULT_TOLERANCE, now).unwrap();
    }

    #[test]
    fn refuses_a_changed_body_id_or_secret() {
        let now = at(1614265330);
        let err = |r: Result<()>| r.unwrap_err();
        let e = err(verify_signature_at(SECRET, ID, TS, br#"{"test": 2432232315}"#, SIG, DEFAULT_TOLERANCE, now));
        assert_eq!(e.code(), "invalid_data");
        assert!(e.to_string().contains("webhook-signature"), "{e}");
        let e = err(verify_signature_at(SECRET, "msg_other", TS, BODY, SIG, DEFAULT_TOLERANCE, now));
        assert!(e.to_string().contains("webhook-signature"), "{e}");
        let other = generate_secret();
        assert!(verify_signature_at(&other, ID, TS, BODY, SIG, DEFAULT_TOLERANCE, now).is_err());
        // A truncated signature or a v2 one is not a match.
        let short = &SIG[..SIG.len() - 4];
        assert!(verify_signature_at(SECRET, ID, TS, BODY, short, DEFAULT_TOLERANCE, now).is_err());
        let v2 = SIG.replace("v1,", "v2,");
        assert!(verify_signature_at(SECRET, ID, TS, BODY, &v2, DEFAULT_TOLERANCE, now).is_err());
    }

    #[test]
    fn refuses_old_future_and_malformed_timestamps() {
        let tol = Duration::from_secs(60);
        let e = verify_signature_at(SECRET, ID, TS, BODY, SIG, tol, at(1614265330 + 61)).unwrap_err();
        assert!(e.to_string().contains("webhook-timestamp") && e.to_string().contains("too old"), "{e}");
        let e = verify_signature_at(SECRET, ID, TS, BODY, SIG, tol, at(1614265330 - 61)).unwrap_err();
        assert!(e.to_string().contains("future"), "{e}");
        verify_signature_at(SECRET, ID, TS, BODY, SIG, tol, at(1614265330 + 60)).unwrap();
        let e = verify_signature_at(SECRET, ID, "yesterday", BODY, SIG, tol, at(1614265330)).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        assert!(e.to_string().contains("webhook-timestamp"), "{e}");
    }

    #[test]
    fn secrets_are_checked() {
        check_secret(&generate_secret()).unwrap();
        for bad in ["", "whsec_", "whsec_!!!", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_AAAA"] {
            let e = check_secret(bad).unwrap_err();
            assert_eq!(e.code(), "invalid_config", "{bad}");
            assert!(e.to_string().contains("`secret`"), "{e}");
        }
        assert_eq!(verify_signature(SECRET, ID, TS, BODY, SIG, DEFAULT_TOLERANCE).unwrap_err().code(), "invalid_data");
        assert_eq!(
            verify_signature("whsec_%%", ID, TS, BODY, SIG, DEFAULT_TOLERANCE).unwrap_err().code(),
            "invalid_config"
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
