//! API scopes (`resource:permission`) and sets of them.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One API scope such as `export-jobs:read`: a resource and a permission separated by `:`.
///
/// Each side is 1 to 64 characters of `a-z`, `0-9`, `-`, `_` and `.`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Scope(String);

impl Scope {
    /// Validates a scope.
    pub fn new(raw: impl Into<String>) -> Result<Self> {
        let raw = raw.into();
        let valid_part = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                })
        };
        match raw.split_once(':') {
            Some((resource, permission)) if valid_part(resource) && valid_part(permission) => {
                Ok(Self(raw))
            }
            _ => Err(Error::invalid_input(format!(
                "scope {:?} is not of the form resource:permission",
                truncate(&raw)
            ))),
        }
    }

    /// The scope as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl TryFrom<String> for Scope {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

impl From<Scope> for String {
    fn from(value: Scope) -> Self {
        value.0
    }
}

/// A set of scopes, displayed and parsed as a space-separated list (the OAuth `scope` format).
///
/// ```
/// use pleo_auth_core::ScopeSet;
///
/// let granted: ScopeSet = "users:read export-jobs:read".parse()?;
/// let needed: ScopeSet = "export-jobs:read export-jobs:write".parse()?;
/// assert!(!granted.contains_all(&needed));
/// assert_eq!(granted.missing(&needed).to_string(), "export-jobs:write");
/// # Ok::<(), pleo_auth_core::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether every scope of `other` is in this set.
    pub fn contains_all(&self, other: &ScopeSet) -> bool {
        other.0.is_subset(&self.0)
    }

    /// Whether the set holds `scope`.
    pub fn contains(&self, scope: &Scope) -> bool {
        self.0.contains(scope)
    }

    /// The scopes of `needed` that this set lacks.
    pub fn missing(&self, needed: &ScopeSet) -> ScopeSet {
        ScopeSet(needed.0.difference(&self.0).cloned().collect())
    }

    /// Adds a scope.
    pub fn insert(&mut self, scope: Scope) {
        self.0.insert(scope);
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The number of scopes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The scopes in sorted order.
    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<T: IntoIterator<Item = Scope>>(iter: T) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(s.as_str())?;
        }
        Ok(())
    }
}

impl FromStr for ScopeSet {
    type Err = Error;

    /// Parses a list separated by single spaces (RFC 6749 §3.3); leading, trailing or doubled
    /// spaces and other whitespace are refused. The empty string is the empty set.
    fn from_str(s: &str) -> Result<Self> {
        if s.is_empty() {
            return Ok(Self::new());
        }
        s.split(' ').map(Scope::new).collect()
    }
}

impl TryFrom<String> for ScopeSet {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        value.parse()
    }
}

impl From<ScopeSet> for String {
    fn from(value: ScopeSet) -> Self {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn scope_validation() {
        for good in [
            "users:read",
            "export-jobs:write",
            "tag_groups:read",
            "a.b:c.d",
            "test:test",
        ] {
            assert!(Scope::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "users",
            ":read",
            "users:",
            "Users:read",
            "users:read:x",
            "users :read",
            "users:read\n",
        ] {
            assert!(Scope::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn set_parsing_and_display_are_canonical() {
        let set: ScopeSet = "vendors:read users:read vendors:read".parse().unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.to_string(), "users:read vendors:read");
        assert!("".parse::<ScopeSet>().unwrap().is_empty());
        for bad in [
            " users:read",
            "users:read ",
            "users:read  vendors:read",
            "users:read\tvendors:read",
        ] {
            assert!(bad.parse::<ScopeSet>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contains_all_and_missing() {
        let granted: ScopeSet = "a:read b:read".parse().unwrap();
        assert!(granted.contains_all(&"a:read".parse().unwrap()));
        assert!(granted.contains_all(&ScopeSet::new()));
        let needed: ScopeSet = "a:read c:write".parse().unwrap();
        assert!(!granted.contains_all(&needed));
        assert_eq!(granted.missing(&needed).to_string(), "c:write");
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in "\\PC*") {
            let _ = s.parse::<ScopeSet>();
        }
    }
}
