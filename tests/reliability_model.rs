//! Models of the refresh manager:
//! - a state-machine property test (proptest-state-machine) of one grant, against the sandbox
//!   and a store that fails on command, compared with a reference model of the states valid,
//!   refreshing (expired), persist-pending, needs-reauthorization and revoked;
//! - a concurrency model check (shuttle) of the single-flight cell protocol of
//!   `pleo-auth-oauth/src/manager.rs` (`obtain`, `start_flight`, `ClearFlight`), with callers
//!   that are cancelled mid-way.

#![cfg(all(feature = "oauth", feature = "http"))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt as _;
use pleo_auth_core::{
    CredentialStatus, ErrorKind as CoreKind, MemoryStore, OAuthGrant, RecordStoreExt,
};
use pleo_auth_oauth::{ErrorKind, OAuthClient, TokenManager};
use pleo_auth_sandbox::RevocationCause;
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};
use support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    NeedsReauthorization,
    Revoked,
}

/// What one grant looks like from the outside.
#[derive(Debug, Clone)]
struct Model {
    status: Status,
    generation: u64,
    expired: bool,
    /// A rotated pair (or a reauthorization mark) is held in memory, not yet stored.
    pending: bool,
    writes_fail: bool,
    down: bool,
    pleo_revoked: bool,
    /// A terminal state is read again from the store at the next call.
    recheck_due: bool,
    /// Successful refreshes Pleo has seen.
    refreshes: u64,
    /// The generation in the store.
    stored_generation: u64,
}

#[derive(Debug, Clone)]
enum Step {
    Expire,
    Get,
    FailWrites,
    RestoreWrites,
    GoDown,
    ComeBack,
    Flush,
    PleoRevokes,
    Disconnect,
    Reconnect,
}

struct GrantModel;

impl ReferenceStateMachine for GrantModel {
    type State = Model;
    type Transition = Step;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model {
            status: Status::Active,
            generation: 1,
            expired: false,
            pending: false,
            writes_fail: false,
            down: false,
            pleo_revoked: false,
            recheck_due: false,
            refreshes: 0,
            stored_generation: 1,
        })
        .boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Step> {
        prop_oneof![
            4 => Just(Step::Expire),
            6 => Just(Step::Get),
            2 => Just(Step::FailWrites),
            2 => Just(Step::RestoreWrites),
            1 => Just(Step::GoDown),
            2 => Just(Step::ComeBack),
            1 => Just(Step::Flush),
            1 => Just(Step::PleoRevokes),
            1 => Just(Step::Disconnect),
            1 => Just(Step::Reconnect),
        ]
        .boxed()
    }

    fn preconditions(m: &Model, step: &Step) -> bool {
        let settled = !m.down && !m.writes_fail && !m.pending;
        match step {
            Step::FailWrites => !m.writes_fail,
            Step::RestoreWrites => m.writes_fail && !m.down,
            Step::GoDown => !m.down,
            Step::ComeBack => m.down,
            Step::PleoRevokes => m.status == Status::Active && !m.pleo_revoked,
            Step::Disconnect => settled && m.status != Status::Revoked,
            Step::Reconnect => settled,
            Step::Expire | Step::Get | Step::Flush => true,
        }
    }

    fn apply(mut m: Model, step: &Step) -> Model {
        match step {
            Step::Expire => {
                m.expired = true;
                m.recheck_due = true;
            }
            Step::Get => match m.status {
                Status::Active if !m.expired || m.down => {}
                Status::Active if m.pleo_revoked => {
                    // The mark is made on the stored record (a pending pair is dropped with
                    // it); a mark that has to wait for the store is written later as a new
                    // generation of the stored record.
                    if m.writes_fail {
                        m.generation = m.stored_generation + 1;
                    }
                    m.status = Status::NeedsReauthorization;
                    m.pending = m.writes_fail;
                    m.recheck_due = false;
                }
                Status::Active => {
                    m.generation += 1;
                    m.refreshes += 1;
                    m.expired = false;
                    m.pending = m.writes_fail;
                }
                _ if m.recheck_due && !m.down => m.recheck_due = false,
                _ => {}
            },
            Step::FailWrites => m.writes_fail = true,
            Step::RestoreWrites => {
                m.writes_fail = false;
                m.pending = false;
            }
            Step::GoDown => m.down = true,
            Step::ComeBack => {
                m.down = false;
                if !m.writes_fail {
                    m.pending = false;
                }
            }
            Step::Flush => {
                if !m.down && !m.writes_fail {
                    m.pending = false;
                }
            }
            Step::PleoRevokes => m.pleo_revoked = true,
            Step::Disconnect => {
                if m.status == Status::Active && m.expired && !m.pleo_revoked {
                    m.generation += 1;
                    m.refreshes += 1;
                }
                m.status = Status::Revoked;
                m.expired = false;
                m.recheck_due = false;
            }
            Step::Reconnect => {
                m.generation += 1;
                m.status = Status::Active;
                m.expired = false;
                m.pleo_revoked = false;
            }
        }
        if !m.pending {
            m.stored_generation = m.generation;
        }
        m
    }
}

/// The system: the sandbox, a manual clock and one manager over a failing store.
struct Grant {
    runtime: tokio::runtime::Runtime,
    h: Harness,
    flaky: Arc<FlakyStore<MemoryStore>>,
    client: OAuthClient,
    manager: TokenManager,
}

impl Grant {
    fn stored(&self) -> OAuthGrant {
        let key = grant_key(&self.h.environment, 0, &acme());
        self.runtime
            .block_on(self.flaky.inner.get_record::<OAuthGrant>(&key))
            .unwrap()
            .unwrap()
            .0
    }

    fn check_stored(&self, m: &Model) {
        let stored = self.stored();
        assert_eq!(stored.generation, m.generation, "stored generation");
        let status = match m.status {
            Status::Active => CredentialStatus::Active,
            Status::NeedsReauthorization => CredentialStatus::NeedsReauthorization,
            Status::Revoked => CredentialStatus::Revoked,
        };
        assert_eq!(stored.status, status, "stored status");
    }

    fn sync_store(&self, m: &Model) {
        self.flaky.fail_reads.store(m.down, Ordering::SeqCst);
        self.flaky
            .fail_writes
            .store(m.down || m.writes_fail, Ordering::SeqCst);
    }
}

impl StateMachineTest for Grant {
    type SystemUnderTest = Grant;
    type Reference = GrantModel;

    fn init_test(_: &Model) -> Grant {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let flaky = Arc::new(FlakyStore::new(MemoryStore::new()));
        let (h, client) = runtime.block_on(async {
            let h = Harness::new(SandboxSpec::default(), flaky.clone()).await;
            let client = h.replica();
            h.connect(&client, acme()).await;
            (h, client)
        });
        let manager = client.token_manager();
        Grant {
            runtime,
            h,
            flaky,
            client,
            manager,
        }
    }

    fn apply(sut: Grant, m: &Model, step: Step) -> Grant {
        let rt = &sut.runtime;
        match step {
            Step::Expire => sut.h.advance(ACCESS_TTL + Duration::from_secs(1)),
            Step::Get => {
                let result = rt.block_on(sut.manager.access_token(&acme()));
                match (m.status, result) {
                    (Status::Active, Ok(token)) => {
                        assert_eq!(token.generation(), m.generation, "{m:?}");
                    }
                    (Status::Active, Err(e)) if m.down => {
                        assert_eq!(e.kind(), &ErrorKind::Store(CoreKind::Unavailable), "{m:?}");
                    }
                    (Status::NeedsReauthorization, Err(e))
                        if e.kind() == &ErrorKind::NeedsReauthorization => {}
                    (Status::Revoked, Err(e)) if e.kind() == &ErrorKind::Revoked => {}
                    (Status::NeedsReauthorization | Status::Revoked, Err(e)) => {
                        assert!(m.recheck_due && m.down, "{m:?}: {e:?}");
                        assert_eq!(e.kind(), &ErrorKind::Store(CoreKind::Unavailable));
                    }
                    (status, other) => panic!("{status:?} in {m:?}: got {other:?}"),
                }
            }
            Step::FailWrites | Step::GoDown => sut.sync_store(m),
            Step::RestoreWrites | Step::ComeBack => {
                sut.sync_store(m);
                if !m.down && !m.writes_fail {
                    rt.block_on(sut.manager.flush())
                        .expect("flush once the store is back");
                    sut.check_stored(m);
                }
            }
            Step::Flush => {
                let result = rt.block_on(sut.manager.flush());
                if m.down || m.writes_fail {
                    assert!(result.is_err() || !m.pending, "{m:?}");
                } else {
                    result.expect("flush");
                    sut.check_stored(m);
                }
            }
            Step::PleoRevokes => {
                let refresh = sut.stored().refresh_token.unwrap();
                assert_eq!(sut.h.sandbox.revoke_grant(refresh.expose_secret()), 1);
            }
            Step::Disconnect => {
                rt.block_on(sut.manager.disconnect(&acme()))
                    .expect("disconnect");
                sut.check_stored(m);
            }
            Step::Reconnect => {
                rt.block_on(sut.h.connect(&sut.client, acme()));
                sut.check_stored(m);
                let token = rt.block_on(sut.manager.access_token(&acme())).unwrap();
                assert_eq!(token.generation(), m.generation);
            }
        }
        sut
    }

    fn check_invariants(sut: &Grant, m: &Model) {
        let stats = sut.h.sandbox.stats();
        assert_eq!(
            stats.refresh_token_reuses, 0,
            "never a reused refresh token"
        );
        assert_eq!(stats.revocations(RevocationCause::RefreshTokenReuse), 0);
        assert_eq!(stats.refreshes, m.refreshes, "refreshes at Pleo");
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn one_grant_follows_the_reference_model(sequential 1..30 => Grant);
}

/// The single-flight protocol of one grant cell, as in `manager.rs`: under a lock, a caller
/// either sees a fresh token, joins the flight in progress, or starts one in a task of its own;
/// the flight re-checks under the lock, presents the current refresh token, installs the new
/// generation, and clears its slot when it ends. Pleo counts refreshes and reuses.
mod single_flight {
    use std::sync::Arc;

    use futures::FutureExt;
    use futures::future::{BoxFuture, Shared};
    use shuttle::sync::Mutex;
    use shuttle::sync::atomic::{AtomicU64, Ordering};

    pub struct Pleo {
        current: AtomicU64,
        pub refreshes: AtomicU64,
        pub reuses: AtomicU64,
    }

    impl Pleo {
        pub fn new() -> Self {
            Self {
                current: AtomicU64::new(0),
                refreshes: AtomicU64::new(0),
                reuses: AtomicU64::new(0),
            }
        }

        /// Strict rotation: presenting anything but the current token is a reuse.
        fn refresh(&self, presented: u64) -> Option<u64> {
            match self.current.compare_exchange(
                presented,
                presented + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => {
                    self.refreshes.fetch_add(1, Ordering::SeqCst);
                    Some(presented + 1)
                }
                Err(_) => {
                    self.reuses.fetch_add(1, Ordering::SeqCst);
                    None
                }
            }
        }
    }

    type Flight = Shared<BoxFuture<'static, Option<u64>>>;

    #[derive(Default)]
    struct State {
        generation: u64,
        fresh: bool,
        flight: Option<(u64, Flight)>,
        next: u64,
    }

    #[derive(Default)]
    pub struct Cell {
        state: Mutex<State>,
    }

    impl Cell {
        /// The token expires.
        pub fn expire(&self) {
            self.state.lock().unwrap().fresh = false;
        }

        pub fn generation(&self) -> u64 {
            self.state.lock().unwrap().generation
        }
    }

    struct ClearFlight {
        cell: Arc<Cell>,
        id: u64,
    }

    impl Drop for ClearFlight {
        fn drop(&mut self) {
            let mut st = self.cell.state.lock().unwrap();
            if st.flight.as_ref().is_some_and(|(id, _)| *id == self.id) {
                st.flight = None;
            }
        }
    }

    async fn run_flight(cell: Arc<Cell>, pleo: Arc<Pleo>, id: u64) -> Option<u64> {
        let _clear = ClearFlight {
            cell: cell.clone(),
            id,
        };
        let presented = {
            let st = cell.state.lock().unwrap();
            if st.fresh {
                return Some(st.generation);
            }
            st.generation
        };
        shuttle::future::yield_now().await;
        let new = pleo.refresh(presented)?;
        let mut st = cell.state.lock().unwrap();
        st.generation = new;
        st.fresh = true;
        Some(new)
    }

    /// A usable generation, refreshing at most once per expiry.
    pub async fn obtain(cell: Arc<Cell>, pleo: Arc<Pleo>) -> Option<u64> {
        let mut last = None;
        for _ in 0..3 {
            let (flight, started) = {
                let mut st = cell.state.lock().unwrap();
                if st.fresh {
                    return Some(st.generation);
                }
                match &st.flight {
                    Some((_, flight)) => (flight.clone(), false),
                    None => {
                        st.next += 1;
                        let id = st.next;
                        let task =
                            shuttle::future::spawn(run_flight(cell.clone(), pleo.clone(), id));
                        let flight = async move { task.await.ok().flatten() }.boxed().shared();
                        st.flight = Some((id, flight.clone()));
                        (flight, true)
                    }
                }
            };
            let result = flight.await;
            if started {
                return result;
            }
            last = result;
        }
        last
    }
}

fn single_flight_scenario() {
    use single_flight::*;
    let cell = Arc::new(Cell::default());
    let pleo = Arc::new(Pleo::new());
    for expiry in 1..=2u64 {
        cell.expire();
        let mut callers = Vec::new();
        for i in 0..3 {
            let (cell, pleo) = (cell.clone(), pleo.clone());
            callers.push(shuttle::future::spawn(async move {
                if i == 0 {
                    // A caller that is dropped after its first poll: the flight it may have
                    // started goes on without it.
                    obtain(cell, pleo).now_or_never().flatten()
                } else {
                    obtain(cell, pleo).await
                }
            }));
        }
        for caller in callers {
            if let Some(generation) = shuttle::future::block_on(caller).unwrap() {
                assert_eq!(generation, expiry, "a caller got another generation");
            }
        }
        let settled = shuttle::future::block_on(obtain(cell.clone(), pleo.clone()));
        assert_eq!(settled, Some(expiry));
        assert_eq!(cell.generation(), expiry);
        assert_eq!(
            pleo.refreshes.load(std::sync::atomic::Ordering::SeqCst),
            expiry
        );
        assert_eq!(pleo.reuses.load(std::sync::atomic::Ordering::SeqCst), 0);
    }
}

#[test]
fn single_flight_cell_refreshes_once_under_every_schedule() {
    shuttle::check_random(single_flight_scenario, 3_000);
    shuttle::check_pct(single_flight_scenario, 3_000, 3);
}
