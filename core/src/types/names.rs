//! Enums with ONE name table: serde, `Display`, `FromStr`, the JSON schema and the
//! lists of allowed values in error messages all read the names given in
//! [`named_enum!`], so they cannot disagree.

use crate::error::Error;

/// Defines a fieldless enum whose variants each have one string name.
///
/// ```ignore
/// named_enum! {
///     /// What a model is.
///     pub enum ModelKind("model kind") { Base = "base", Full = "full" }
/// }
/// ```
macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every name, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];

            /// The name, as serialized.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            fn from_name(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = $crate::error::Error;
            /// Parses a name; anything else is `invalid_config` listing the allowed names.
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                Self::from_name(s).ok_or_else(|| $crate::types::names::unknown($what, s, Self::NAMES))
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> ::std::result::Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::string::String as ::serde::Deserialize>::deserialize(d)?;
                Self::from_name(&s).ok_or_else(|| <D::Error as ::serde::de::Error>::unknown_variant(&s, Self::NAMES))
            }
        }

        impl ::schemars::JsonSchema for $name {
            fn schema_name() -> ::std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut ::schemars::SchemaGenerator) -> ::schemars::Schema {
                ::schemars::json_schema!({ "type": "string", "enum": Self::NAMES })
            }
        }
    };
}

pub(crate) use named_enum;

/// The error for a name outside a table.
pub(crate) fn unknown(what: &str, got: &str, allowed: &[&str]) -> Error {
    Error::config(what, format!("unknown {what} `{got}` (expected one of: {})", allowed.join(", ")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    named_enum! {
        /// A test enum.
        #[derive(Default)]
        pub enum Colour("colour") {
            #[default]
            Red = "red",
            DarkBlue = "dark_blue",
        }
    }

    #[test]
    fn one_table_for_every_spelling() {
        for c in Colour::ALL {
            let json = serde_json::to_string(c).unwrap();
            assert_eq!(json, format!("\"{c}\""));
            assert_eq!(serde_json::from_str::<Colour>(&json).unwrap(), *c);
            assert_eq!(c.to_string().parse::<Colour>().unwrap(), *c);
        }
        assert_eq!(Colour::default(), Colour::Red);
        let e = "blue".parse::<Colour>().unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains("red, dark_blue"), "{e}");
        let e = serde_json::from_str::<Colour>("\"blue\"").unwrap_err().to_string();
        assert!(e.contains("`red` or `dark_blue`"), "{e}");
        let schema = serde_json::to_value(schemars::schema_for!(Colour)).unwrap();
        assert_eq!(schema["enum"], serde_json::json!(["red", "dark_blue"]));
    }
}
