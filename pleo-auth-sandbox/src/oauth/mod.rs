//! The authorization server: the authorization, token, introspection and revocation endpoints,
//! at the paths of the current [`ServerShape`](crate::ServerShape).

mod authorize;
mod client_auth;
mod error;
mod introspection;
mod pkce;
mod revocation;
mod token;

pub(crate) use authorize::{authorize_get, authorize_post};
pub(crate) use introspection::introspect;
pub(crate) use revocation::revoke;
pub(crate) use token::token;
