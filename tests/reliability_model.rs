//! A model of the refresh manager: a state-machine property test (proptest-state-machine) of one
//! grant, driving the real `TokenManager` against the sandbox and a store that fails on
//! command, compared with a reference model of the states valid, refreshing (expired),
//! persist-pending, needs-reauthorization and revoked.
//!
//! (A shuttle model check of a hand-written copy of the single-flight protocol used to live
//! here. It checked the copy, not the code, and was removed; concurrency of the real manager is
//! checked by the multi-process storms in `tests/replicas_readme_way.rs` and
//! `tests/scale_replicas.rs`.)

#![cfg(all(feature = "oauth", feature = "http"))]

#[path = "reliability_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
                    // generation: above the stored one, and never below the generation of a
                    // pending pair it replaces (callers have seen that generation).
                    if m.writes_fail {
                        m.generation = m.generation.max(m.stored_generation + 1);
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
    flaky: Arc<FaultyStore<MemoryStore>>,
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
        let flaky = Arc::new(FaultyStore::new(MemoryStore::new()));
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
