//! The handle a test or program holds on a running sandbox.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use url::Url;
use uuid::Uuid;

use crate::admin::RevokeTarget;
use crate::config::ClientRegistration;
use crate::error::SandboxError;
use crate::faults::{Endpoint, Fault};
use crate::rewrite::TokenResponseRewrite;
use crate::shape::ServerShape;
use crate::state::Shared;
use crate::stats::{ApiRequestRecord, Stats};

/// A running sandbox. Dropping it shuts the server down (use [`Self::shutdown`] to wait for it).
///
/// One server serves the authorization-server paths (`/oauth/...`), the External API paths
/// (`/v1/...`, `/v2/...`) and the administration paths (`/_sandbox/...`).
pub struct SandboxHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("base_url", &self.shared.base_url.as_str())
            .field("environment_name", &self.shared.config.environment_name)
            .finish_non_exhaustive()
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            // The server may already have stopped; nothing to do then.
            tx.send(()).ok();
        }
    }
}

impl SandboxHandle {
    /// The handle of a server that serves `shared` on `addr`, stops when `shutdown` fires and
    /// runs as `task`.
    pub(crate) fn new(
        shared: Arc<Shared>,
        addr: SocketAddr,
        shutdown: oneshot::Sender<()>,
        task: JoinHandle<()>,
    ) -> Self {
        Self {
            shared,
            addr,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }
}

impl SandboxHandle {
    /// The server's base URL, e.g. `http://127.0.0.1:41234/` (with a trailing slash).
    pub fn base_url(&self) -> Url {
        self.shared.base_url.clone()
    }

    /// The authorization server's base URL (the same server as [`Self::base_url`]): the
    /// endpoints of the current [`ServerShape`] live under it (see [`Self::token_endpoint`] and
    /// its siblings).
    pub fn auth_url(&self) -> Url {
        self.base_url()
    }

    /// The authorization endpoint's URL under the current [`ServerShape`].
    pub fn authorize_endpoint(&self) -> Url {
        self.endpoint(&self.shared.shape().authorize_path)
    }

    /// The token endpoint's URL under the current [`ServerShape`].
    pub fn token_endpoint(&self) -> Url {
        self.endpoint(&self.shared.shape().token_path)
    }

    /// The token introspection endpoint's URL under the current [`ServerShape`].
    pub fn introspection_endpoint(&self) -> Url {
        self.endpoint(&self.shared.shape().introspection_path)
    }

    /// The revocation endpoint's URL under the current [`ServerShape`], if it has one.
    pub fn revocation_endpoint(&self) -> Option<Url> {
        let shape = self.shared.shape();
        shape.revocation_path.as_deref().map(|p| self.endpoint(p))
    }

    /// The issuer the server names: the shape's [`issuer`](ServerShape::issuer) when set, else
    /// the base URL without its trailing slash (what token introspection answers as `iss`).
    pub fn issuer(&self) -> String {
        self.shared.issuer(&self.shared.shape())
    }

    /// `path` (absolute, validated by [`ServerShape::validate`]) on this server.
    fn endpoint(&self, path: &str) -> Url {
        let mut url = self.base_url();
        url.set_path(path);
        url
    }

    /// The current server shape.
    pub fn server_shape(&self) -> ServerShape {
        ServerShape::clone(&self.shared.shape())
    }

    /// Replaces the server shape at run time; requests that already started finish under the
    /// old one. Grants, tokens and counters are kept.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] if [`ServerShape::validate`] refuses the shape; the
    /// current shape then stays.
    pub fn set_server_shape(&self, shape: ServerShape) -> Result<(), SandboxError> {
        self.shared.set_shape(shape)
    }

    /// Installs (`Some`) or removes (`None`) a hook that replaces every successful token
    /// response. The hook receives the JSON body the sandbox would send, after the code was
    /// redeemed or the grant rotated server-side, and returns the status, content type and bytes
    /// to send instead: valid, strange or broken. The rotation stands whatever is sent, and
    /// [`Stats::token_responses_rewritten`] counts the replaced answers. Error answers are not
    /// passed to the hook. Only in-process sandboxes offer it (a closure cannot cross processes).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use pleo_auth_sandbox::{Sandbox, TokenResponseReplacement};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let sandbox = Sandbox::builder().start().await?;
    /// sandbox.set_token_response_rewrite(Some(Arc::new(|issued| {
    ///     let mut body = issued.body;
    ///     body["scope"] = "openid profile users:read".into();
    ///     TokenResponseReplacement::json(&body)
    /// })));
    /// sandbox.set_token_response_rewrite(None); // normal answers again
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_token_response_rewrite(&self, rewrite: Option<TokenResponseRewrite>) {
        self.shared.set_token_rewrite(rewrite);
    }

    /// The External API's base URL (the same server as [`Self::base_url`]).
    pub fn api_url(&self) -> Url {
        self.base_url()
    }

    /// The socket address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The environment name.
    pub fn environment_name(&self) -> &str {
        &self.shared.config.environment_name
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Sets every counter back to zero (grants stay as they are).
    pub fn reset_stats(&self) {
        self.shared.reset_stats();
    }

    /// Every External API request so far, oldest first.
    pub fn request_log(&self) -> Vec<ApiRequestRecord> {
        self.shared.request_log()
    }

    /// Empties the request log.
    pub fn clear_request_log(&self) {
        self.shared.clear_request_log();
    }

    /// Every External API request since the last call (or since the start), oldest first, and
    /// empties the log in the same step, so long runs can check every request in bounded memory.
    pub fn take_request_log(&self) -> Vec<ApiRequestRecord> {
        self.shared.take_request_log()
    }

    /// Mints an Integrated API key for the installation of `client_id` in `company`, with the
    /// client's registered scopes. Creates the installation (status `AUTHORIZED`) if needed and
    /// revokes the installation's previous Integrated key.
    ///
    /// # Panics
    ///
    /// If the client or company is unknown; [`Self::try_mint_integrated_key`] returns an error
    /// instead.
    pub fn mint_integrated_key(&self, client_id: &str, company: Uuid) -> String {
        match self.try_mint_integrated_key(client_id, company) {
            Ok(key) => key,
            Err(e) => panic!("cannot mint an Integrated API key: {e}"),
        }
    }

    /// Like [`Self::mint_integrated_key`], returning an error for an unknown client or company.
    ///
    /// # Errors
    ///
    /// [`SandboxError::UnknownClient`], [`SandboxError::UnknownSubject`],
    /// [`SandboxError::NotACompany`], or [`SandboxError::Random`].
    pub fn try_mint_integrated_key(
        &self,
        client_id: &str,
        company: Uuid,
    ) -> Result<String, SandboxError> {
        self.shared.mint_integrated_key(client_id, company)
    }

    /// Mints a Standalone API key for a company or (covering all its companies) an
    /// organisation, with the chosen scopes and an optional lifetime.
    ///
    /// # Panics
    ///
    /// If the subject is unknown or a scope is empty or contains whitespace;
    /// [`Self::try_mint_standalone_key`] returns an error instead.
    pub fn mint_standalone_key(
        &self,
        subject: Uuid,
        scopes: &[&str],
        expires_in: Option<Duration>,
    ) -> String {
        match self.try_mint_standalone_key(subject, scopes, expires_in) {
            Ok(key) => key,
            Err(e) => panic!("cannot mint a Standalone API key: {e}"),
        }
    }

    /// Like [`Self::mint_standalone_key`], returning an error instead of panicking.
    ///
    /// # Errors
    ///
    /// [`SandboxError::UnknownSubject`], [`SandboxError::InvalidConfig`] for a bad scope, or
    /// [`SandboxError::Random`].
    pub fn try_mint_standalone_key(
        &self,
        subject: Uuid,
        scopes: &[&str],
        expires_in: Option<Duration>,
    ) -> Result<String, SandboxError> {
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.shared
            .mint_standalone_key(subject, scopes, expires_in, None)
    }

    /// Revokes an API key; returns whether it was live.
    pub fn revoke_api_key(&self, api_key: &str) -> bool {
        self.shared.revoke_api_key(api_key)
    }

    /// Revokes the current access tokens of the targeted grants; their refresh tokens stay
    /// valid. Returns how many live grants were affected. A token converts into a target:
    /// `handle.revoke_access_tokens(&access_token)`.
    pub fn revoke_access_tokens(&self, target: impl Into<RevokeTarget>) -> usize {
        self.shared.revoke_access_tokens(&target.into())
    }

    /// Revokes the targeted grants entirely (cause [`RevocationCause::Admin`](crate::RevocationCause::Admin)).
    /// Returns how many were live.
    pub fn revoke_grant(&self, target: impl Into<RevokeTarget>) -> usize {
        self.shared.revoke_grants(&target.into())
    }

    /// The ID of the grant an access or refresh token (current or old) belongs to, as used in
    /// [`Stats::grants`] and [`ApiRequestRecord::credential_id`].
    pub fn grant_id(&self, token: &str) -> Option<String> {
        self.shared.grant_id(token)
    }

    /// Moves the sandbox's clock forward. Every expiry check (codes, tokens, keys, consent
    /// pages) and every issued timestamp uses this clock.
    pub fn advance_clock(&self, by: Duration) {
        self.shared.advance_clock(by);
    }

    /// The sandbox's current time (wall clock plus every [`Self::advance_clock`]).
    pub fn now(&self) -> SystemTime {
        self.shared.clock().0
    }

    /// Makes the next `count` requests to `endpoint` fail with `fault`. Faults queue in order;
    /// endpoint-specific faults are served before [`Endpoint::Any`] faults.
    ///
    /// # Panics
    ///
    /// If a [`Fault::ServerError`] status is not 500 to 599.
    pub fn inject_fault(&self, endpoint: Endpoint, fault: Fault, count: u32) {
        if let Fault::ServerError(status) = fault {
            assert!(
                (500..=599).contains(&status),
                "Fault::ServerError needs a 5xx status, got {status}"
            );
        }
        self.shared.inject_fault(endpoint, fault, count);
    }

    /// Removes every queued fault.
    pub fn clear_faults(&self) {
        self.shared.clear_faults();
    }

    /// Turns auto-approve on (for a company or organisation) or off at run time.
    ///
    /// # Errors
    ///
    /// [`SandboxError::UnknownSubject`] if no company or organisation has the ID.
    pub fn set_auto_approve(&self, subject: Option<Uuid>) -> Result<(), SandboxError> {
        self.shared.set_auto_approve(subject)
    }

    /// Registers (or replaces) an OAuth client at run time.
    ///
    /// # Errors
    ///
    /// [`SandboxError::InvalidConfig`] if the registration is unusable.
    pub fn register_client(&self, client: ClientRegistration) -> Result<(), SandboxError> {
        self.shared.register_client(client)
    }

    /// Stops accepting connections, lets requests in progress finish (at most 5 seconds) and
    /// waits for the server to stop.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            tx.send(()).ok();
        }
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::debug!(%error, "sandbox server task failed");
        }
    }
}
