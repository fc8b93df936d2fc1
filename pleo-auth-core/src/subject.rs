//! Who a credential belongs to: a Pleo company or organisation, named by URN.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// Wraps a UUID.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                parse_uuid(s, $what).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A Pleo company id (a UUID), as sent in the `company_id` query parameter.
    CompanyId,
    "company id"
);
uuid_id!(
    /// A Pleo organisation id (a UUID). An organisation groups several companies.
    OrganisationId,
    "organisation id"
);

fn parse_uuid(s: &str, what: &str) -> Result<Uuid> {
    // Only the canonical hyphenated form: no braces, no urn:uuid:, no surrounding spaces.
    if s.len() != 36 {
        return Err(Error::invalid_input(format!(
            "{what} must be a hyphenated UUID"
        )));
    }
    Uuid::try_parse(s).map_err(|e| {
        Error::invalid_input(format!("{what} must be a hyphenated UUID")).with_source(e)
    })
}

/// The resource a credential grants access to: `urn:pleo:company:<uuid>` or
/// `urn:pleo:organisation:<uuid>`.
///
/// ```
/// use pleo_auth_core::Subject;
///
/// let s: Subject = "urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10".parse()?;
/// assert!(s.company().is_some());
/// assert_eq!(s.to_string(), "urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10");
/// assert!("urn:pleo:user:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10".parse::<Subject>().is_err());
/// # Ok::<(), pleo_auth_core::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Subject {
    /// One company.
    Company(CompanyId),
    /// An organisation, which may act for each of its companies when a request names one.
    Organisation(OrganisationId),
}

/// Hashes the kind and the UUID as one `u128`: token caches look a subject up on every request,
/// and one wide write is cheaper for fast hashers than the derived form's length-prefixed bytes.
impl std::hash::Hash for Subject {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (kind, id) = match self {
            Subject::Company(c) => (0u8, c.as_uuid()),
            Subject::Organisation(o) => (1u8, o.as_uuid()),
        };
        state.write_u8(kind);
        state.write_u128(id.as_u128());
    }
}

const COMPANY_PREFIX: &str = "urn:pleo:company:";
const ORGANISATION_PREFIX: &str = "urn:pleo:organisation:";

impl Subject {
    /// The company, if this subject is a company.
    pub fn company(&self) -> Option<CompanyId> {
        match self {
            Subject::Company(c) => Some(*c),
            Subject::Organisation(_) => None,
        }
    }

    /// The organisation, if this subject is an organisation.
    pub fn organisation(&self) -> Option<OrganisationId> {
        match self {
            Subject::Organisation(o) => Some(*o),
            Subject::Company(_) => None,
        }
    }

    /// `"company"` or `"organisation"`.
    pub fn kind_str(&self) -> &'static str {
        match self {
            Subject::Company(_) => "company",
            Subject::Organisation(_) => "organisation",
        }
    }
}

impl From<CompanyId> for Subject {
    fn from(value: CompanyId) -> Self {
        Subject::Company(value)
    }
}

impl From<OrganisationId> for Subject {
    fn from(value: OrganisationId) -> Self {
        Subject::Organisation(value)
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Company(c) => write!(f, "{COMPANY_PREFIX}{c}"),
            Subject::Organisation(o) => write!(f, "{ORGANISATION_PREFIX}{o}"),
        }
    }
}

impl FromStr for Subject {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(rest) = s.strip_prefix(COMPANY_PREFIX) {
            return Ok(Subject::Company(rest.parse()?));
        }
        if let Some(rest) = s.strip_prefix(ORGANISATION_PREFIX) {
            return Ok(Subject::Organisation(rest.parse()?));
        }
        Err(Error::invalid_input(
            "subject must be urn:pleo:company:<uuid> or urn:pleo:organisation:<uuid>",
        ))
    }
}

impl TryFrom<String> for Subject {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        value.parse()
    }
}

impl From<Subject> for String {
    fn from(value: Subject) -> Self {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10";

    #[test]
    fn parses_both_kinds_and_round_trips() {
        let c: Subject = format!("urn:pleo:company:{ID}").parse().unwrap();
        let o: Subject = format!("urn:pleo:organisation:{ID}").parse().unwrap();
        assert_eq!(c.company().unwrap().to_string(), ID);
        assert_eq!(o.organisation().unwrap().to_string(), ID);
        assert_eq!(c.to_string().parse::<Subject>().unwrap(), c);
        assert_ne!(c, o);
        let json = serde_json::to_string(&o).unwrap();
        assert_eq!(json, format!("\"urn:pleo:organisation:{ID}\""));
        assert_eq!(serde_json::from_str::<Subject>(&json).unwrap(), o);
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "",
            ID,
            "urn:pleo:company:",
            "urn:pleo:company:not-a-uuid",
            "URN:PLEO:COMPANY:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10",
            " urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10",
            "urn:pleo:company:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10 ",
            "urn:pleo:company:{0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10}",
            "urn:pleo:company:0b6f1c7e8a554c2e9d430d8a2a7a1f10",
            "urn:pleo:employee:0b6f1c7e-8a55-4c2e-9d43-0d8a2a7a1f10",
        ] {
            let err = bad.parse::<Subject>().unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(serde_json::from_str::<Subject>("\"urn:pleo:x:1\"").is_err());
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_input(s in "\\PC*") {
            let _ = s.parse::<Subject>();
        }

        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 16]>(), org in any::<bool>()) {
            let uuid = Uuid::from_bytes(bytes);
            let subject = if org {
                Subject::Organisation(OrganisationId::from_uuid(uuid))
            } else {
                Subject::Company(CompanyId::from_uuid(uuid))
            };
            prop_assert_eq!(subject.to_string().parse::<Subject>().unwrap(), subject);
        }
    }
}
