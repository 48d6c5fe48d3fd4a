//! Bearer tokens for `anneal serve`, stored hashed in the catalog.
//!
//! A token is `<id>.<secret>`: `id` is `tok_<16 hex>` (stored in clear, it names the
//! row), `secret` is 32 random bytes from the operating system in hex. Only the
//! sha256 of the secret bytes is stored; the token is returned once, by
//! [`Tokens::create`]. [`Tokens::verify`] compares hashes in constant time and answers
//! the same `None` for a malformed, unknown, revoked or wrong token, so a caller cannot
//! tell which.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::{Home, TokenOptions, TokenScope};
//! let home = Home::open("./anneal-home")?;
//! let new = home.tokens().create(&TokenOptions { name: Some("ci".into()), scope: TokenScope::Write })?;
//! println!("{}", new.token); // shown once
//! assert!(home.tokens().verify(&new.token)?.is_some());
//! # Ok(()) }
//! ```

use std::sync::Arc;

use rand::TryRngCore;
use sha2::{Digest, Sha256};

use crate::catalog::tokens as sql;
use crate::error::{Error, Result};
use crate::store::Store;
use crate::types::{NewToken, TokenOptions, TokenRecord};
use crate::util::{new_id, now};

/// `last_used_at` is written at most this often per token (verification is per request).
const TOUCH_EVERY_MS: i64 = 60_000;

/// The longest token name, in bytes.
const MAX_NAME_BYTES: usize = 128;

/// The bearer tokens of a home ([`crate::Home::tokens`]). Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<Store>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").field("root", &self.store.root).finish()
    }
}

impl Tokens {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Creates a token; the returned [`NewToken::token`] is the only copy of it.
    pub fn create(&self, options: &TokenOptions) -> Result<NewToken> {
        let name = options.name.clone().unwrap_or_else(|| "token".to_string());
        if name.is_empty() || name.len() > MAX_NAME_BYTES || name.chars().any(char::is_control) {
            return Err(Error::config(
                "name",
                format!("must be 1 to {MAX_NAME_BYTES} bytes without control characters"),
            ));
        }
        let mut secret = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut secret)
            .map_err(|e| Error::Internal(format!("no randomness from the operating system: {e}")))?;
        let record = TokenRecord {
            id: new_id("tok"),
            name,
            scope: options.scope,
            created_at: now(),
            last_used_at: None,
            revoked_at: None,
        };
        let hash = hex::encode(Sha256::digest(secret));
        self.store.catalog.write(|tx| sql::insert(tx, &record, &hash))?;
        Ok(NewToken { token: format!("{}.{}", record.id, hex::encode(secret)), record })
    }

    /// Every token (revoked ones too), oldest first. Secrets are not stored.
    pub fn list(&self) -> Result<Vec<TokenRecord>> {
        self.store.catalog.read(sql::list)
    }

    /// A token by id; `not_found` otherwise.
    pub fn get(&self, id: &str) -> Result<TokenRecord> {
        self.store.catalog.read(|c| sql::get(c, id))
    }

    /// Revokes a token (it stops verifying at once, in every process); revoking it
    /// again changes nothing. `not_found` for an unknown id.
    pub fn revoke(&self, id: &str) -> Result<TokenRecord> {
        let at = now();
        self.store.catalog.write(|tx| {
            sql::revoke(tx, id, &at)?;
            sql::get(tx, id)
        })
    }

    /// The record of a valid, unrevoked `token`; `None` for anything else (malformed,
    /// unknown, revoked, wrong secret), alike. The secret's hash is compared in
    /// constant time. Errors are the catalog's only.
    pub fn verify(&self, token: &str) -> Result<Option<TokenRecord>> {
        let (id, secret) = token.split_once('.').unwrap_or(("", ""));
        let secret = hex::decode(secret).ok().filter(|s| s.len() == 32).unwrap_or_default();
        let given = Sha256::digest(&secret);
        let valid_id = id.len() == 20 && id.starts_with("tok_") && id.bytes().skip(4).all(|b| b.is_ascii_hexdigit());
        let found = if valid_id { self.store.catalog.read(|c| sql::with_hash(c, id))? } else { None };
        // Compared even when nothing was found, against a hash no secret has.
        let stored = found.as_ref().and_then(|(_, h)| hex::decode(h).ok()).unwrap_or_else(|| vec![0xff; 32]);
        let matches = constant_time_eq(&given, &stored) && secret.len() == 32;
        let Some((rec, _)) = found.filter(|(r, _)| matches && r.revoked_at.is_none()) else {
            return Ok(None);
        };
        let stale = rec
            .last_used_at
            .as_deref()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .is_none_or(|t| t.elapsed().map_or(true, |d| d.as_millis() as i64 >= TOUCH_EVERY_MS));
        if stale {
            let at = now();
            self.store.catalog.write(|tx| sql::touch(tx, &rec.id, &at))?;
            return Ok(Some(TokenRecord { last_used_at: Some(at), ..rec }));
        }
        Ok(Some(rec))
    }
}

/// Equality of two byte strings in time that depends on their length only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::catalog::Catalog;
    use crate::types::TokenScope;

    #[test]
    fn tokens_verify_until_revoked_and_only_the_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(&dir.path().join("anneal.db")).unwrap();
        let t = Tokens::new(Arc::new(Store { root: dir.path().to_path_buf(), catalog, memory_limit: 1 << 30 }));
        let new = t.create(&TokenOptions { name: Some("ci".into()), scope: TokenScope::Write }).unwrap();
        assert_eq!(new.record.scope, TokenScope::Write);
        let (id, secret) = new.token.split_once('.').unwrap();
        assert_eq!((id, secret.len()), (new.record.id.as_str(), 64));
        let ok = t.verify(&new.token).unwrap().unwrap();
        assert_eq!((ok.id.as_str(), ok.name.as_str()), (id, "ci"));
        assert!(ok.last_used_at.is_some());
        // The database holds the hash, never the secret.
        let db = std::fs::read(dir.path().join("anneal.db")).unwrap();
        let wal = std::fs::read(dir.path().join("anneal.db-wal")).unwrap_or_default();
        for bytes in [&db, &wal] {
            assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
        }
        // Wrong secret, unknown id, malformed: all `None`.
        let mut wrong = new.token.clone();
        wrong.pop();
        wrong.push(if new.token.ends_with('0') { '1' } else { '0' });
        for bad in [wrong.as_str(), "tok_0000000000000000.00", "", "nonsense", &format!("{id}.")] {
            assert!(t.verify(bad).unwrap().is_none(), "{bad}");
        }
        let revoked = t.revoke(id).unwrap();
        assert!(revoked.revoked_at.is_some());
        assert!(t.verify(&new.token).unwrap().is_none());
        assert_eq!(t.revoke(id).unwrap().revoked_at, revoked.revoked_at);
        assert!(matches!(t.revoke("tok_ffffffffffffffff"), Err(Error::NotFound { .. })));
        assert_eq!(t.list().unwrap().len(), 1);
        let e = t.create(&TokenOptions { name: Some("a\nb".into()), scope: TokenScope::Read }).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
