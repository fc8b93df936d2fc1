//! One grant in this process ([`GrantCell`]: its [`Phase`], the token it serves, its flight and
//! kept lease) and the lock-free token cache of all of them ([`Cells`]).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use arc_swap::{ArcSwap, ArcSwapOption};
use futures::future::{BoxFuture, Shared};
use pleo_auth_core::{AccessToken, Credential, LeaseGuard, Subject};

use crate::error::{Error, Result};
use crate::grant::phase::Phase;

/// How [`AuthorizationHeader::bearer`](pleo_auth_core::AuthorizationHeader::bearer) begins.
const BEARER: &str = "Bearer ";

/// A usable access token of one grant, with the credential built from it.
///
/// `Debug` shows ids and times only.
pub struct ActiveToken {
    pub(crate) credential: Arc<Credential>,
    pub(crate) expires_at: Instant,
    pub(crate) refresh_at: Instant,
    pub(crate) generation: u64,
}

impl ActiveToken {
    /// The credential to send: `Authorization: Bearer <token>`, its id, subject and scopes.
    pub fn credential(&self) -> &Credential {
        &self.credential
    }

    /// The access token (a copy taken from the credential's `Bearer` header, which is the one
    /// place a cached token keeps it).
    pub fn access_token(&self) -> AccessToken {
        AccessToken::new(self.exposed_token())
    }

    /// Whether this is `token`.
    pub(crate) fn holds(&self, token: &AccessToken) -> bool {
        self.exposed_token() == token.expose_secret()
    }

    fn exposed_token(&self) -> &str {
        let header = self.credential.header.expose_secret();
        header.strip_prefix(BEARER).unwrap_or(header)
    }

    /// The company or organisation the token acts for.
    pub fn subject(&self) -> &Subject {
        &self.credential.subject
    }

    /// When the token expires, on the manager's monotonic clock.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// When the manager starts refreshing it, on the manager's monotonic clock.
    pub fn refresh_at(&self) -> Instant {
        self.refresh_at
    }

    /// The grant's generation (rotation count) this token belongs to.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Debug for ActiveToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveToken")
            .field("id", &self.credential.id)
            .field("subject", &self.credential.subject)
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The result every caller of a refresh flight gets.
pub(crate) type FlightResult = Result<Arc<ActiveToken>>;
/// A refresh flight that any number of callers can await.
pub(crate) type SharedFlight = Shared<BoxFuture<'static, FlightResult>>;

/// The refresh in flight for a cell.
pub(crate) struct Flight {
    pub(crate) id: u64,
    pub(crate) future: SharedFlight,
}

/// After a refresh failed: further refreshes fail fast with `error` until `until`.
pub(crate) struct Cooldown {
    pub(crate) until: Instant,
    pub(crate) error: Error,
}

/// The mutable state of one grant in this process.
#[derive(Default)]
pub(crate) struct CellState {
    /// What this process knows of the grant.
    pub(crate) phase: Phase,
    /// Bumped on every change of `phase`, so a store read that raced with a change is not
    /// merged over newer knowledge.
    pub(crate) epoch: u64,
    /// Boxed: a cell is between flights nearly all of its life.
    pub(crate) flight: Option<Box<Flight>>,
    pub(crate) next_flight: u64,
    /// Boxed: most cells never cool down.
    pub(crate) cooldown: Option<Box<Cooldown>>,
    /// When a terminal state (needs reauthorization, revoked) was last confirmed by the store.
    pub(crate) terminal_checked: Option<Instant>,
    pub(crate) persist_task: bool,
    pub(crate) revoke_task: bool,
    /// Numbers the hand-offs of the refresh lease to [`GrantCell::kept_lease`].
    pub(crate) next_handoff: u64,
}

impl CellState {
    /// Replaces the phase (and moves the epoch on).
    pub(crate) fn set_phase(&mut self, phase: Phase) {
        self.phase = phase;
        self.epoch += 1;
    }

    /// Records that the phase changed in place (and moves the epoch on).
    pub(crate) fn touched(&mut self) {
        self.epoch += 1;
    }
}

/// The refresh lease, kept while the pair made under it is pending.
pub(crate) struct KeptLease {
    pub(crate) guard: LeaseGuard,
    /// The hand-off that put it here; the renewal task of that hand-off runs while it stays.
    pub(crate) handoff: u64,
}

/// One grant in the cache.
pub(crate) struct GrantCell {
    pub(crate) subject: Subject,
    /// The token served, changed only by `Inner::set_token` (which copies it into the cache).
    pub(crate) token: ArcSwapOption<ActiveToken>,
    state: Mutex<CellState>,
    /// One store writer at a time for this grant within this process.
    pub(crate) writer: tokio::sync::Mutex<()>,
    /// The refresh lease while the phase is pending (boxed: most cells never keep one).
    /// Changed and checked against the state under this lock, so it is released once the pair
    /// is no longer pending.
    pub(crate) kept_lease: tokio::sync::Mutex<Option<Box<KeptLease>>>,
}

impl GrantCell {
    pub(crate) fn new(subject: Subject) -> Self {
        Self {
            subject,
            token: ArcSwapOption::empty(),
            state: Mutex::new(CellState::default()),
            writer: tokio::sync::Mutex::new(()),
            kept_lease: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, CellState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a pair (or mark) is not yet written to the store.
    pub(crate) fn pending(&self) -> bool {
        self.lock().phase.is_pending()
    }
}

/// Shards of the token cache. A change copies one shard, so caching `n` grants copies about
/// `n² / (2 * CELL_SHARDS)` map entries in all (100,000 grants: about 5 million), and a token
/// change copies about `n / CELL_SHARDS` (100,000 grants: about 100 entries, a few microseconds).
const CELL_SHARDS: usize = 1024;
const _: () = assert!(CELL_SHARDS.is_power_of_two());

/// One shard of the token cache, replaced copy-on-write. Hashed with foldhash (randomly seeded
/// per process): subjects are UUIDs that Pleo issues, and a lookup runs on every cache hit,
/// where SipHash would cost more than the rest of the lookup.
type Shard = ArcSwap<CellMap>;

/// The map inside a shard.
type CellMap = HashMap<Subject, Slot, foldhash::fast::RandomState>;

/// A subject's entry: its cell, and a copy of the cell's current token, so that a cache hit is
/// one shard load and one map lookup.
#[derive(Clone)]
struct Slot {
    cell: Arc<GrantCell>,
    token: Option<SlotToken>,
}

/// The token of a [`Slot`] with a copy of its refresh time: a hit decides freshness from the
/// slot, which no core writes, and touches the token's allocation only to count the reference
/// it hands out (every caller on every core writes that count, so reading beside it would make
/// each hit wait for the cache line twice).
#[derive(Clone)]
struct SlotToken {
    refresh_at: Instant,
    token: Arc<ActiveToken>,
}

impl SlotToken {
    fn of(token: Option<Arc<ActiveToken>>) -> Option<Self> {
        token.map(|token| Self {
            refresh_at: token.refresh_at,
            token,
        })
    }
}

/// The token cache: one cell per subject, in [`CELL_SHARDS`] maps that are read without locks.
pub(crate) struct Cells {
    shards: Box<[Shard]>,
    write: Mutex<()>,
}

impl Cells {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..CELL_SHARDS)
                .map(|_| ArcSwap::from_pointee(CellMap::default()))
                .collect(),
            write: Mutex::new(()),
        }
    }

    /// The shard that holds `subject`'s cell (by its UUID, whose bits are random).
    fn shard(&self, subject: &Subject) -> &Shard {
        let id = match subject {
            Subject::Company(c) => c.as_uuid().as_u128(),
            Subject::Organisation(o) => o.as_uuid().as_u128(),
        };
        // Fibonacci hashing: the top bits of the product depend on every bit of the id.
        let mixed = id.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
        &self.shards[(mixed >> (u128::BITS - CELL_SHARDS.trailing_zeros())) as usize]
    }

    /// Every cached cell.
    pub(crate) fn all(&self) -> Vec<Arc<GrantCell>> {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .load()
                    .values()
                    .map(|slot| slot.cell.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|shard| shard.load().len()).sum()
    }

    /// The fresh cached token of `subject`: no lock, no I/O, one `Arc` clone, if it is still
    /// before its refresh time `now` (read on a coarse clock: `refresh_at` lies a margin of
    /// seconds before expiry, so a few milliseconds either way change nothing).
    pub(crate) fn fresh(&self, subject: &Subject, now: Instant) -> Option<Arc<ActiveToken>> {
        let shard = self.shard(subject).load();
        let slot = shard.get(subject)?.token.as_ref()?;
        (now < slot.refresh_at).then(|| Arc::clone(&slot.token))
    }

    /// The cached cell of `subject`, if any (lock-free).
    pub(crate) fn get(&self, subject: &Subject) -> Option<Arc<GrantCell>> {
        self.shard(subject)
            .load()
            .get(subject)
            .map(|slot| slot.cell.clone())
    }

    /// The cell of `subject`, created by `make` if missing.
    pub(crate) fn get_or_insert(
        &self,
        subject: Subject,
        make: impl FnOnce() -> GrantCell,
    ) -> Arc<GrantCell> {
        if let Some(cell) = self.get(&subject) {
            return cell;
        }
        let _writer = self.writer();
        let shard = self.shard(&subject);
        let current = shard.load();
        if let Some(slot) = current.get(&subject) {
            return slot.cell.clone();
        }
        let cell = Arc::new(make());
        let mut next = CellMap::clone(&current);
        next.insert(
            subject,
            Slot {
                cell: cell.clone(),
                token: None,
            },
        );
        shard.store(Arc::new(next));
        cell
    }

    /// Drops the cell of `subject` if it is still `cell` (used when nothing is stored for it).
    pub(crate) fn remove(&self, subject: &Subject, cell: &Arc<GrantCell>) {
        let _writer = self.writer();
        let shard = self.shard(subject);
        let current = shard.load();
        if current
            .get(subject)
            .is_some_and(|slot| Arc::ptr_eq(&slot.cell, cell))
        {
            let mut next = CellMap::clone(&current);
            next.remove(subject);
            shard.store(Arc::new(next));
        }
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Copies `cell`'s current token into its slot, if the cell is still the cached one.
    ///
    /// Reads the token under the writer lock, so of two racing calls the later one copies the
    /// latest token: once every call has returned, the slot holds what the cell holds.
    pub(crate) fn mirror(&self, cell: &GrantCell) {
        let _writer = self.writer();
        let shard = self.shard(&cell.subject);
        let current = shard.load();
        let Some(slot) = current.get(&cell.subject) else {
            return;
        };
        if !std::ptr::eq(Arc::as_ptr(&slot.cell), cell) {
            return;
        }
        let token = cell.token.load_full();
        let same = match (&slot.token, &token) {
            (Some(a), Some(b)) => Arc::ptr_eq(&a.token, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            let mut next = CellMap::clone(&current);
            next.insert(
                cell.subject,
                Slot {
                    cell: slot.cell.clone(),
                    token: SlotToken::of(token),
                },
            );
            shard.store(Arc::new(next));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn subjects_spread_over_the_shards() {
        let cells = Cells::new();
        let mut used = HashSet::new();
        for i in 0..(8 * CELL_SHARDS) as u64 {
            // Sequential ids differ in their low bits only; they must still spread.
            let subject: Subject = format!("urn:pleo:company:0e000000-0000-4000-8000-{i:012}")
                .parse()
                .unwrap();
            used.insert(std::ptr::from_ref(cells.shard(&subject)));
            assert!(std::ptr::eq(cells.shard(&subject), cells.shard(&subject)));
        }
        assert!(
            used.len() > CELL_SHARDS * 3 / 4,
            "{} shards used",
            used.len()
        );
        assert_eq!(cells.len(), 0);
        assert!(cells.all().is_empty());
    }
}
