//! The default seed data every sandbox starts with, under fixed identifiers.
//!
//! * Organisation **Acme Group** ([`ACME_ORG`]) with two companies: **Acme Denmark ApS**
//!   ([`ACME_DK`]) and **Acme Sweden AB** ([`ACME_SE`]).
//! * A standalone company **Globex Ltd** ([`GLOBEX`]), in no organisation.
//! * The OAuth client [`DEMO_CLIENT_ID`] / [`DEMO_CLIENT_SECRET`], named [`DEMO_CLIENT_NAME`],
//!   with the loopback redirect URIs [`DEMO_REDIRECT_URIS`] and the scopes [`DEMO_CLIENT_SCOPES`].
//!
//! Every company also has a few employees and vendors (deterministic identifiers).

use uuid::Uuid;

use crate::{ClientRegistration, Company, Organisation};

/// The organisation "Acme Group": `0a000000-0000-4000-8000-000000000001`.
pub const ACME_ORG: Uuid = Uuid::from_u128(0x0a000000_0000_4000_8000_000000000001);
/// The company "Acme Denmark ApS" in [`ACME_ORG`]: `0c000000-0000-4000-8000-000000000001`.
pub const ACME_DK: Uuid = Uuid::from_u128(0x0c000000_0000_4000_8000_000000000001);
/// The company "Acme Sweden AB" in [`ACME_ORG`]: `0c000000-0000-4000-8000-000000000002`.
pub const ACME_SE: Uuid = Uuid::from_u128(0x0c000000_0000_4000_8000_000000000002);
/// The standalone company "Globex Ltd" (no organisation): `0c000000-0000-4000-8000-000000000003`.
pub const GLOBEX: Uuid = Uuid::from_u128(0x0c000000_0000_4000_8000_000000000003);

/// Client ID of the default registered OAuth client.
pub const DEMO_CLIENT_ID: &str = "pleo-auth-demo";
/// Client secret of the default registered OAuth client (public knowledge: sandbox only).
pub const DEMO_CLIENT_SECRET: &str = "pleo-auth-demo-secret";
/// Display name of the default registered OAuth client, shown on the consent page.
pub const DEMO_CLIENT_NAME: &str = "Pleo Auth Demo";
/// Redirect URIs of the default client. They are loopback URIs, so any port matches (RFC 8252 §7.3).
pub const DEMO_REDIRECT_URIS: [&str; 3] = [
    "http://127.0.0.1/callback",
    "http://localhost/callback",
    "http://[::1]/callback",
];
/// Scopes the default client may request.
pub const DEMO_CLIENT_SCOPES: [&str; 5] = [
    "users:read",
    "export-jobs:read",
    "export-jobs:write",
    "vendors:read",
    "test:test",
];

/// The default client registration ([`DEMO_CLIENT_ID`]); client_secret_post is refused.
pub fn demo_client() -> ClientRegistration {
    ClientRegistration {
        id: DEMO_CLIENT_ID.to_owned(),
        secret: DEMO_CLIENT_SECRET.to_owned(),
        name: DEMO_CLIENT_NAME.to_owned(),
        redirect_uris: DEMO_REDIRECT_URIS.iter().map(|s| (*s).to_owned()).collect(),
        scopes: DEMO_CLIENT_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        accept_client_secret_post: false,
    }
}

/// The default organisations ([`ACME_ORG`]).
pub fn organisations() -> Vec<Organisation> {
    vec![Organisation::new(ACME_ORG, "Acme Group")]
}

/// The default companies ([`ACME_DK`], [`ACME_SE`], [`GLOBEX`]).
pub fn companies() -> Vec<Company> {
    vec![
        Company::new(ACME_DK, "Acme Denmark ApS").in_organisation(ACME_ORG),
        Company::new(ACME_SE, "Acme Sweden AB").in_organisation(ACME_ORG),
        Company::new(GLOBEX, "Globex Ltd"),
    ]
}
