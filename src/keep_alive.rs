//! Keep-alive that runs without a person: one sweep under a lease that spans replicas
//! ([`PleoAuth::keep_alive_once`]), or a task that sweeps on a schedule
//! ([`PleoAuth::spawn_keep_alive`]) until it is shut down.

use std::fmt;
use std::time::Duration;

use pleo_auth_core::{LeaseGuard, StoreKey, layout};
use pleo_auth_oauth::{KeepAliveOptions, KeepAliveReport};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::PleoAuth;
use crate::error::{Error, Result};

/// The default time between two sweeps of [`PleoAuth::spawn_keep_alive`].
pub const DEFAULT_KEEP_ALIVE_EVERY: Duration = Duration::from_secs(6 * 3600);

/// How long a one-off sweep ([`PleoAuth::keep_alive_once`]) holds the sweep lease at most,
/// unless [`KeepAliveConfig::lease_ttl`] says otherwise.
pub const ONCE_LEASE_TTL: Duration = Duration::from_secs(15 * 60);

/// How keep-alive sweeps.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeepAliveConfig {
    /// Time between two sweeps of [`PleoAuth::spawn_keep_alive`] (default six hours).
    pub every: Duration,
    /// What one sweep does: which grants it refreshes (older than
    /// [`RefreshPolicy::keep_alive_after`](crate::oauth::RefreshPolicy::keep_alive_after) by
    /// default), its page size and its concurrency.
    pub sweep: KeepAliveOptions,
    /// How long the sweep lease is held. A scheduled sweep keeps it until it expires, so
    /// replicas whose schedules drift apart still sweep once per interval between them. The
    /// default is nine tenths of [`every`](Self::every) for a schedule and [`ONCE_LEASE_TTL`]
    /// for a one-off sweep.
    pub lease_ttl: Option<Duration>,
}

impl Default for KeepAliveConfig {
    fn default() -> Self {
        Self {
            every: DEFAULT_KEEP_ALIVE_EVERY,
            sweep: KeepAliveOptions::default(),
            lease_ttl: None,
        }
    }
}

impl KeepAliveConfig {
    /// Sweeps every `interval` (at least a second).
    #[must_use]
    pub fn every(mut self, interval: Duration) -> Self {
        self.every = interval.max(Duration::from_secs(1));
        self
    }

    /// What each sweep does, such as `KeepAliveOptions::default().older_than(age)`.
    #[must_use]
    pub fn sweep(mut self, options: KeepAliveOptions) -> Self {
        self.sweep = options;
        self
    }

    /// Holds the sweep lease for `ttl`.
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = Some(ttl);
        self
    }

    fn scheduled_lease_ttl(&self) -> Duration {
        self.lease_ttl.unwrap_or(self.every.mul_f64(0.9))
    }
}

/// What one keep-alive run did.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeepAliveRun {
    /// This replica swept.
    Swept(KeepAliveReport),
    /// Another replica holds the sweep lease: nothing was done here.
    Skipped,
}

impl KeepAliveRun {
    /// The sweep's report, if this replica swept.
    pub fn report(&self) -> Option<&KeepAliveReport> {
        match self {
            KeepAliveRun::Swept(report) => Some(report),
            KeepAliveRun::Skipped => None,
        }
    }
}

impl PleoAuth {
    /// One keep-alive sweep of the OAuth grants, if no other replica is sweeping: takes the
    /// sweep lease on the [store's lease](Self::lease), sweeps (see
    /// [`TokenManager::keep_alive_with`](crate::oauth::TokenManager::keep_alive_with): idle
    /// grants refreshed, pending revocations and dangling grants retried, expired pending
    /// authorizations removed, each failed record reported without stopping the sweep), and
    /// releases the lease. For cron (`pleo-auth keep-alive --once`).
    ///
    /// Fails with [`Config`](crate::ErrorKind::Config) if OAuth was not configured, and with a
    /// store error if the lease or the grant list cannot be reached.
    pub async fn keep_alive_once(&self, config: &KeepAliveConfig) -> Result<KeepAliveRun> {
        let ttl = config.lease_ttl.unwrap_or(ONCE_LEASE_TTL);
        let (run, guard) = self.sweep_under_lease(config, ttl).await?;
        if let Some(guard) = guard
            && let Err(e) = guard.release().await
        {
            tracing::debug!(error = %e, "releasing the keep-alive lease failed; it expires by TTL");
        }
        Ok(run)
    }

    /// Starts a task that sweeps now and then every [`KeepAliveConfig::every`], on the current
    /// Tokio runtime. Every replica may start one: the sweep lease lets one replica sweep per
    /// interval and the others skip. A failed sweep (the store unreachable) is logged and
    /// retried at the next interval. Stop it with [`KeepAliveHandle::shutdown`].
    ///
    /// Fails with [`Config`](crate::ErrorKind::Config) if OAuth was not configured or no
    /// Tokio runtime is running.
    pub fn spawn_keep_alive(&self, config: KeepAliveConfig) -> Result<KeepAliveHandle> {
        self.oauth()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::config("spawn_keep_alive needs a running Tokio runtime"))?;
        let (stop, mut stopped) = watch::channel(false);
        let (runs_tx, runs) = mpsc::channel(16);
        let auth = self.clone();
        let task = runtime.spawn(async move {
            let mut ticks = tokio::time::interval(config.every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut held: Option<LeaseGuard> = None;
            loop {
                tokio::select! {
                    biased;
                    _ = stopped.changed() => break,
                    _ = ticks.tick() => {}
                }
                // The lease of the last sweep has expired by now; give it back in any case, so
                // a lease_ttl longer than the interval never makes this replica skip itself.
                if let Some(guard) = held.take() {
                    let _ = guard.release().await;
                }
                let result = auth
                    .sweep_under_lease(&config, config.scheduled_lease_ttl())
                    .await
                    .map(|(run, guard)| {
                        held = guard;
                        run
                    });
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "keep-alive sweep failed; retried at the next interval");
                }
                // A full queue only means nobody reads the runs.
                let _ = runs_tx.try_send(result);
            }
            if let Some(guard) = held {
                let _ = guard.release().await;
            }
        });
        Ok(KeepAliveHandle { stop, runs, task })
    }

    async fn sweep_under_lease(
        &self,
        config: &KeepAliveConfig,
        ttl: Duration,
    ) -> Result<(KeepAliveRun, Option<LeaseGuard>)> {
        let manager = self.token_manager()?;
        let key = self.keep_alive_lease_key()?;
        let Some(guard) = self
            .lease()
            .acquire(&key, ttl)
            .await
            .map_err(|e| Error::core("taking the keep-alive lease failed", e))?
        else {
            return Ok((KeepAliveRun::Skipped, None));
        };
        let report = manager
            .keep_alive_with(&config.sweep)
            .await
            .map_err(|e| Error::oauth("the keep-alive sweep failed", e))?;
        #[cfg(feature = "metrics")]
        crate::metrics::sweep(&report);
        Ok((KeepAliveRun::Swept(report), Some(guard)))
    }

    /// The key of the lease that lets one replica sweep the OAuth grants of this client and
    /// environment.
    fn keep_alive_lease_key(&self) -> Result<StoreKey> {
        let oauth = self.oauth()?;
        let scope = StoreKey::from_parts([
            "pleo-auth",
            "v1",
            "keep-alive",
            self.environment().name().as_str(),
            oauth.config().client_id().as_str(),
        ])
        .map_err(|e| Error::core("the keep-alive lease key is invalid", e))?;
        Ok(layout::lease(&scope))
    }
}

/// The task started by [`PleoAuth::spawn_keep_alive`]. Dropping the handle stops the schedule
/// too (after the sweep in progress); keep it for as long as keep-alive should run.
#[must_use = "dropping the handle stops keep-alive"]
pub struct KeepAliveHandle {
    stop: watch::Sender<bool>,
    runs: mpsc::Receiver<Result<KeepAliveRun>>,
    task: JoinHandle<()>,
}

impl fmt::Debug for KeepAliveHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeepAliveHandle")
            .field("finished", &self.task.is_finished())
            .finish_non_exhaustive()
    }
}

impl KeepAliveHandle {
    /// The next finished run (a sweep, a skip, or the error of a failed sweep); `None` once
    /// the task has stopped. Runs nobody reads are dropped after the sixteenth.
    pub async fn next_run(&mut self) -> Option<Result<KeepAliveRun>> {
        self.runs.recv().await
    }

    /// Stops the schedule: a sweep in progress finishes first (its refreshes are never cut
    /// off), then the sweep lease is released and the task ends.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await
            && e.is_panic()
        {
            tracing::error!("the keep-alive task panicked");
        }
    }
}
