//! Bearer tokens of `anneal serve`: scopes, records, options.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::names::named_enum;

named_enum! {
    /// What a token may do; each scope includes the ones before it.
    pub enum TokenScope("token scope") {
        /// Read: every `GET`.
        Read = "read",
        /// Write: creating, cancelling and resuming jobs, imports, generation.
        Write = "write",
        /// Admin: tokens and deletions.
        Admin = "admin",
    }
}

impl TokenScope {
    /// Whether a token of this scope may do what `needed` allows.
    pub fn allows(self, needed: TokenScope) -> bool {
        let rank = |s: TokenScope| TokenScope::ALL.iter().position(|&x| x == s).unwrap_or(usize::MAX);
        rank(self) >= rank(needed)
    }
}

/// Options of [`crate::Tokens::create`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TokenOptions {
    /// A label to recognise the token by in listings (not secret, not unique).
    pub name: Option<String>,
    pub scope: TokenScope,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self { name: None, scope: TokenScope::Read }
    }
}

/// A stored token (never the secret: only its sha256 is kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TokenRecord {
    /// `tok_<16 hex>`: the public half of the token.
    pub id: String,
    pub name: String,
    pub scope: TokenScope,
    pub created_at: String,
    /// Updated at most once a minute.
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

/// A token just created: its record and the token itself, shown this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NewToken {
    pub record: TokenRecord,
    /// `<id>.<64 hex>`: what a client sends as `Authorization: Bearer <token>`.
    pub token: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_the_lower_ones() {
        use TokenScope::*;
        assert!(Admin.allows(Write) && Admin.allows(Read) && Write.allows(Read));
        assert!(!Read.allows(Write) && !Write.allows(Admin) && !Read.allows(Admin));
        assert!(Read.allows(Read));
    }
}
