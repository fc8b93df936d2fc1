//! Tests of the pure phase transitions: every phase against every kind of store read, token
//! answer, landed write and refusal, and a property test of random event sequences against a
//! simulated store with another writer.

use pleo_auth_core::{CredentialKey, EnvironmentName, Subject};
use proptest::prelude::*;

use super::*;

fn subject() -> Subject {
    "urn:pleo:company:0c000000-0000-4000-8000-000000000001"
        .parse()
        .unwrap()
}

fn record(rt: Option<&str>, generation: u64, status: CredentialStatus) -> OAuthGrant {
    let connected = OAuthGrant::connected(
        CredentialKey::new(
            EnvironmentName::new("staging").unwrap(),
            "client".parse().unwrap(),
            subject(),
        ),
        AccessToken::new(format!("at-of-{}", rt.unwrap_or_default())),
        RefreshToken::new(rt.unwrap_or_default()),
        "users:read".parse().unwrap(),
        Timestamp::from_millis(0),
        Duration::from_millis(1_000_000),
    );
    OAuthGrant {
        status,
        status_reason: match status {
            CredentialStatus::Revoked => Some(REVOCATION_PENDING.to_owned()),
            CredentialStatus::NeedsReauthorization => Some(INVALID_GRANT.to_owned()),
            _ => None,
        },
        access_token: rt.and(connected.access_token.clone()),
        access_token_expires_at: rt.and(connected.access_token_expires_at),
        refresh_token: rt.and(connected.refresh_token.clone()),
        generation,
        ..connected
    }
}

fn v(n: u64) -> Version {
    Version::from_u64(n)
}

fn rt(token: &str) -> RefreshToken {
    RefreshToken::new(token)
}

fn rt_of(phase: &Phase) -> Option<String> {
    phase
        .record()
        .and_then(|r| r.refresh_token.as_ref())
        .map(|t| t.expose_secret().to_owned())
}

/// Every phase a cell can be in, named.
fn phases() -> Vec<(&'static str, Phase)> {
    use CredentialStatus::*;
    vec![
        ("unloaded", Phase::Unloaded),
        (
            "stored active",
            Phase::Stored {
                record: record(Some("rt1"), 1, Active),
                version: v(1),
            },
        ),
        (
            "stored needs reauthorization",
            Phase::Stored {
                record: record(None, 1, NeedsReauthorization),
                version: v(1),
            },
        ),
        (
            "stored tombstone",
            Phase::Stored {
                record: record(Some("rt1"), 1, Revoked),
                version: v(1),
            },
        ),
        (
            "pending rotation",
            Phase::Pending {
                record: record(Some("rt2"), 2, Active),
                superseded: vec![digest(&rt("rt1"))],
                announced: false,
            },
        ),
        (
            "pending second rotation",
            Phase::Pending {
                record: record(Some("rt3"), 3, Active),
                superseded: vec![digest(&rt("rt1")), digest(&rt("rt2"))],
                announced: true,
            },
        ),
        (
            "pending reauthorization mark",
            Phase::Pending {
                record: record(None, 1, NeedsReauthorization),
                superseded: vec![digest(&rt("rt1"))],
                announced: false,
            },
        ),
    ]
}

/// Every kind of record a store read can return, named.
fn reads() -> Vec<(&'static str, Option<(OAuthGrant, Version)>)> {
    use CredentialStatus::*;
    vec![
        ("nothing", None),
        (
            "the known version",
            Some((record(Some("rt1"), 1, Active), v(1))),
        ),
        (
            "our older token",
            Some((record(Some("rt1"), 1, Active), v(7))),
        ),
        (
            "our pending pair",
            Some((record(Some("rt2"), 2, Active), v(8))),
        ),
        (
            "another writer's rotation",
            Some((record(Some("rtX"), 5, Active), v(9))),
        ),
        (
            "another writer's tombstone",
            Some((record(Some("rt1"), 1, Revoked), v(10))),
        ),
        (
            "another writer's reauthorization mark",
            Some((record(None, 1, NeedsReauthorization), v(11))),
        ),
    ]
}

/// What a read must do to a phase: the rules of the module, spelled out per case.
fn expected_read(phase: &str, read: &str) -> Read {
    match (phase, read) {
        (_, "nothing") => Read::NothingStored,
        // An unloaded cell takes what it reads; nothing newer to announce.
        ("unloaded", _) => Read::Adopted { newer: None },
        (
            "stored active" | "stored needs reauthorization" | "stored tombstone",
            "the known version",
        ) => Read::Unchanged,
        // A pending record keeps winning over the tokens it superseded...
        (
            "pending rotation" | "pending second rotation" | "pending reauthorization mark",
            "our older token" | "the known version",
        ) => Read::OursNewer,
        ("pending second rotation", "our pending pair") => Read::OursNewer,
        // ...and is stored once the store holds it.
        ("pending rotation", "our pending pair") => Read::OursLanded,
        // Everything else is another writer's word (or simply newer knowledge): adopted.
        (_, "another writer's rotation") => Read::Adopted { newer: Some(5) },
        (
            "stored active" | "stored tombstone" | "stored needs reauthorization",
            "our pending pair",
        ) => Read::Adopted { newer: Some(2) },
        ("pending reauthorization mark", "our pending pair") => Read::Adopted { newer: Some(2) },
        _ => Read::Adopted { newer: None },
    }
}

#[test]
fn every_phase_merges_every_store_read_by_the_rules() {
    for (phase_name, phase) in phases() {
        for (read_name, read) in reads() {
            let mut merged = phase.clone();
            let outcome = merged.read(read.clone());
            let expected = expected_read(phase_name, read_name);
            assert_eq!(outcome, expected, "{phase_name} + {read_name}");
            match outcome {
                Read::NothingStored => assert!(matches!(merged, Phase::Unloaded)),
                Read::Unchanged | Read::OursNewer => {
                    assert_eq!(rt_of(&merged), rt_of(&phase), "{phase_name} + {read_name}");
                    assert_eq!(merged.is_pending(), phase.is_pending());
                }
                Read::OursLanded => {
                    assert!(!merged.is_pending());
                    assert_eq!(rt_of(&merged), rt_of(&phase));
                }
                Read::Adopted { .. } => {
                    let (stored, _) = read.clone().unwrap();
                    assert!(!merged.is_pending(), "{phase_name} + {read_name}");
                    assert_eq!(
                        rt_of(&merged),
                        stored.refresh_token.map(|t| t.expose_secret().to_owned())
                    );
                }
            }
        }
    }
}

#[test]
fn refusals_follow_the_life_of_the_record() {
    for (name, phase) in phases() {
        for trigger in [
            Trigger::Fresh,
            Trigger::KeepAlive(Timestamp::from_millis(0)),
            Trigger::Revoke,
        ] {
            let refusal = phase.refusal(&trigger).map(|e| e.kind().clone());
            let expected = match (phase.life(), &trigger) {
                (Life::Unloaded, _) => Some(ErrorKind::NotConnected),
                (Life::Active, _) => None,
                (Life::NeedsReauthorization, _) => Some(ErrorKind::NeedsReauthorization),
                (Life::RevocationPending, Trigger::Revoke) => None,
                (Life::RevocationPending | Life::Revoked, _) => Some(ErrorKind::Revoked),
            };
            assert_eq!(refusal, expected, "{name} {trigger:?}");
        }
    }
}

/// The answers a refresh can get, named.
fn answers() -> Vec<(&'static str, Installed)> {
    let access = || Some((AccessToken::new("at-new"), Duration::from_secs(900), None));
    vec![
        (
            "rotated and usable",
            Installed {
                refresh_token: Some(rt("rt-new")),
                access: access(),
            },
        ),
        (
            "rotated, nothing usable",
            Installed {
                refresh_token: Some(rt("rt-new")),
                access: None,
            },
        ),
        (
            "usable, not rotated",
            Installed {
                refresh_token: None,
                access: access(),
            },
        ),
        (
            "nothing",
            Installed {
                refresh_token: None,
                access: None,
            },
        ),
    ]
}

#[test]
fn an_answer_is_installed_before_it_is_judged_and_only_for_the_token_presented() {
    let now = Timestamp::from_millis(5_000);
    for (phase_name, phase) in phases() {
        for presented in ["rt1", "rt2", "rt3", "rt-other"] {
            for (answer_name, answer) in answers() {
                let mut installed = phase.clone();
                let outcome = installed.answered(&rt(presented), answer, now);
                let holds = rt_of(&phase).as_deref() == Some(presented);
                let case = format!("{phase_name}, {presented}, {answer_name}");
                if !holds || answer_name == "nothing" {
                    assert_eq!(outcome, None, "{case}");
                    assert_eq!(rt_of(&installed), rt_of(&phase), "{case}");
                    assert_eq!(installed.is_pending(), phase.is_pending(), "{case}");
                    continue;
                }
                let before = phase.record().unwrap();
                assert_eq!(outcome, Some(before.generation + 1), "{case}");
                let Phase::Pending {
                    record, superseded, ..
                } = &installed
                else {
                    panic!("{case}: installed as pending");
                };
                assert_eq!(record.generation, before.generation + 1, "{case}");
                match answer_name {
                    "rotated and usable" | "rotated, nothing usable" => {
                        assert_eq!(rt_of(&installed).as_deref(), Some("rt-new"), "{case}");
                        assert!(superseded.contains(&digest(&rt(presented))), "{case}");
                    }
                    _ => assert_eq!(rt_of(&installed).as_deref(), Some(presented), "{case}"),
                }
                let usable = answer_name != "rotated, nothing usable";
                assert_eq!(record.access_token.is_some(), usable, "{case}");
                if usable {
                    assert_eq!(
                        record.access_token_expires_at,
                        Some(now.saturating_add(Duration::from_secs(900)))
                    );
                }
                // Every token the earlier pending record superseded is still remembered.
                if let Phase::Pending {
                    superseded: before_superseded,
                    ..
                } = &phase
                {
                    for d in before_superseded {
                        assert!(superseded.contains(d), "{case}");
                    }
                }
            }
        }
    }
}

#[test]
fn a_pending_record_is_written_over_its_own_lineage_and_never_over_another_writer() {
    for (phase_name, phase) in phases() {
        for (read_name, read) in reads() {
            let plan = phase.write_plan(read.clone());
            let case = format!("{phase_name} + {read_name}");
            match (&phase, read_name) {
                (Phase::Unloaded | Phase::Stored { .. }, _) => {
                    assert!(matches!(plan, WritePlan::Nothing), "{case}");
                }
                (Phase::Pending { .. }, "nothing") => {
                    assert!(matches!(plan, WritePlan::Deleted), "{case}")
                }
                (
                    Phase::Pending {
                        record, superseded, ..
                    },
                    _,
                ) => {
                    let (stored, version) = read.clone().unwrap();
                    let lineage = stored
                        .refresh_token
                        .as_ref()
                        .is_some_and(|t| superseded.contains(&digest(t)));
                    let same = stored.refresh_token.is_some()
                        && rt_of(&phase)
                            == stored
                                .refresh_token
                                .as_ref()
                                .map(|t| t.expose_secret().to_owned());
                    let may_overwrite = lineage
                        && (stored.status == CredentialStatus::Active
                            || stored.status == record.status);
                    match plan {
                        WritePlan::Landed { version: at, .. } => {
                            assert!(same, "{case}");
                            assert_eq!(at, version);
                        }
                        WritePlan::Write {
                            record: written,
                            precondition,
                        } => {
                            assert!(may_overwrite && !same, "{case}");
                            assert_eq!(precondition, Precondition::Version(version), "{case}");
                            assert!(written.generation > stored.generation, "{case}");
                            assert_eq!(
                                rt_of(&phase),
                                written.refresh_token.map(|t| t.expose_secret().to_owned())
                            );
                        }
                        WritePlan::Adopt { version: at, .. } => {
                            assert!(!may_overwrite && !same, "{case}");
                            assert_eq!(at, version);
                        }
                        WritePlan::Nothing | WritePlan::Deleted => panic!("{case}"),
                    }
                }
            }
        }
    }
}

#[test]
fn a_landed_write_stores_only_the_record_still_pending() {
    let landed = record(Some("rt2"), 2, CredentialStatus::Active);
    let stale = record(Some("rt1"), 1, CredentialStatus::Active);
    for (name, phase) in phases() {
        let mut after = phase.clone();
        let outcome = after.written(&landed, v(20));
        let is_it = rt_of(&phase).as_deref() == Some("rt2") && phase.is_pending();
        assert_eq!(outcome.is_some(), is_it, "{name}");
        assert_eq!(after.is_pending(), phase.is_pending() && !is_it, "{name}");
        let mut unchanged = phase.clone();
        assert_eq!(unchanged.written(&stale, v(21)), None, "{name}");
        assert_eq!(rt_of(&unchanged), rt_of(&phase));
    }
    let mut announced = Phase::Pending {
        record: landed.clone(),
        superseded: vec![],
        announced: false,
    };
    assert!(announced.announce(), "announced once");
    assert!(!announced.announce());
    assert_eq!(announced.written(&landed, v(22)), Some(true));
}

#[test]
fn a_refused_token_marks_the_grant_only_while_it_is_ours() {
    let now = Timestamp::from_millis(9_000);
    for (phase_name, phase) in phases() {
        for presented in ["rt1", "rt2"] {
            for (read_name, read) in reads() {
                let case = format!("{phase_name}, {presented}, {read_name}");
                let plan = phase.refusal_plan(&rt(presented), read.clone(), now);
                if phase.record().is_none() {
                    assert!(matches!(plan, RefusalPlan::Deleted), "{case}");
                    continue;
                }
                if rt_of(&phase).as_deref() != Some(presented) {
                    assert!(matches!(plan, RefusalPlan::NotOurs), "{case}");
                    continue;
                }
                let Some((stored, version)) = read else {
                    assert!(matches!(plan, RefusalPlan::Deleted), "{case}");
                    continue;
                };
                let superseded: Vec<TokenDigest> = match &phase {
                    Phase::Pending { superseded, .. } => superseded.clone(),
                    _ => vec![],
                };
                let ours = stored.refresh_token.as_ref().is_some_and(|t| {
                    t.expose_secret() == presented || superseded.contains(&digest(t))
                });
                match plan {
                    RefusalPlan::Mark {
                        record: marked,
                        precondition,
                    } => {
                        assert!(ours && stored.status == CredentialStatus::Active, "{case}");
                        assert_eq!(precondition, Precondition::Version(version));
                        assert_eq!(marked.status, CredentialStatus::NeedsReauthorization);
                        assert!(marked.refresh_token.is_none() && marked.access_token.is_none());
                        assert_eq!(marked.settings, stored.settings);
                    }
                    RefusalPlan::Adopt { .. } => {
                        assert!(!ours || stored.status != CredentialStatus::Active, "{case}");
                    }
                    RefusalPlan::NotOurs | RefusalPlan::Deleted => panic!("{case}"),
                }
            }
        }
    }
    let mut offline = Phase::Stored {
        record: record(Some("rt1"), 1, CredentialStatus::Active),
        version: v(1),
    };
    offline.refused_unwritten(&rt("rt1"), now);
    let Phase::Pending {
        record, superseded, ..
    } = offline
    else {
        panic!("marked in memory, pending");
    };
    assert_eq!(record.status, CredentialStatus::NeedsReauthorization);
    assert!(superseded.contains(&digest(&rt("rt1"))));
}

/// One step of the simulation below.
#[derive(Debug, Clone)]
enum Step {
    /// Our flight refreshes the token it holds and gets a new one (maybe without an access
    /// token).
    Refresh { usable: bool },
    /// Our write attempt: read the store, follow the plan, write with compare-and-swap.
    Write,
    /// Our write attempt finds the store down.
    StoreDown,
    /// We read the store (a reconcile).
    Read,
    /// Another writer rotates or reconnects (a new lineage), or leaves a tombstone.
    OtherWriter { tombstone: bool },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => any::<bool>().prop_map(|usable| Step::Refresh { usable }),
        4 => Just(Step::Write),
        2 => Just(Step::StoreDown),
        3 => Just(Step::Read),
        1 => any::<bool>().prop_map(|tombstone| Step::OtherWriter { tombstone }),
    ]
}

proptest! {
    /// Random interleavings of refreshes, writes, store outages, reads and another writer,
    /// against a simulated compare-and-swap store. Invariants after every step:
    /// - the newest refresh token we got is either what the phase holds or already stored, unless
    ///   another writer's record was adopted over it (and then the store holds that record);
    /// - the store never goes back to a token our stored record superseded;
    /// - generations in the store only grow.
    #[test]
    fn rotated_tokens_are_never_lost_in_any_interleaving(steps in prop::collection::vec(step(), 1..40)) {
        let mut store: Option<(OAuthGrant, u64)> =
            Some((record(Some("rt0"), 1, CredentialStatus::Active), 1));
        let mut versions = 1u64;
        let mut phase = Phase::Unloaded;
        phase.read(store.clone().map(|(r, n)| (r, v(n))));
        let mut issued = 0u64;
        let mut newest: Option<String> = Some("rt0".to_owned());
        let mut stored_generation = 1u64;
        // Whether the store's record is another writer's (whose word is final).
        let mut theirs = false;
        for step in steps {
            match step {
                Step::Refresh { usable } => {
                    let Some(presented) = phase.record().and_then(|r| r.refresh_token.clone()) else {
                        continue;
                    };
                    issued += 1;
                    let token = format!("rt-n{issued}");
                    let answer = Installed {
                        refresh_token: Some(rt(&token)),
                        access: usable.then(|| (AccessToken::new("at"), Duration::from_secs(60), None)),
                    };
                    if phase.answered(&presented, answer, Timestamp::from_millis(issued)).is_some() {
                        newest = Some(token);
                    }
                }
                Step::Write => {
                    match phase.write_plan(store.clone().map(|(r, n)| (r, v(n)))) {
                        WritePlan::Write { record, precondition } => {
                            let current = store.as_ref().map(|(_, n)| v(*n));
                            if Precondition::Version(current.unwrap()) == precondition {
                                versions += 1;
                                store = Some((record.clone(), versions));
                                theirs = false;
                                phase.written(&record, v(versions));
                            }
                        }
                        WritePlan::Landed { record, version } => {
                            phase.written(&record, version);
                        }
                        WritePlan::Adopt { record, version } => {
                            phase = Phase::Stored { record, version };
                            if theirs {
                                newest = None;
                            }
                        }
                        WritePlan::Deleted | WritePlan::Nothing => {}
                    }
                }
                Step::StoreDown => {
                    phase.announce();
                }
                Step::Read => {
                    if let Read::Adopted { .. } = phase.read(store.clone().map(|(r, n)| (r, v(n))))
                        && theirs
                    {
                        newest = None;
                    }
                }
                Step::OtherWriter { tombstone } => {
                    let (mut other, _) = store.clone().unwrap();
                    if tombstone {
                        other.status = CredentialStatus::Revoked;
                        other.status_reason = Some(REVOCATION_PENDING.to_owned());
                    } else {
                        issued += 1;
                        other.refresh_token = Some(rt(&format!("rt-other{issued}")));
                        other.generation += 1;
                    }
                    versions += 1;
                    store = Some((other, versions));
                    theirs = true;
                }
            }
            let (stored, _) = store.clone().unwrap();
            prop_assert!(stored.generation >= stored_generation || stored.status != CredentialStatus::Active);
            stored_generation = stored_generation.max(stored.generation);
            if let Some(token) = &newest {
                let in_phase = rt_of(&phase).as_deref() == Some(token.as_str());
                let in_store = stored.refresh_token.as_ref().map(|t| t.expose_secret()) == Some(token.as_str());
                prop_assert!(in_phase || in_store, "the newest token {} was lost", token);
            }
        }
    }
}
