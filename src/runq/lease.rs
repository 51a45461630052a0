//! The owner/epoch word of a queue: who owns it, in which epoch, and a
//! heartbeat counter that the owner bumps to renew its lease.
//!
//! A neighbour may take a queue over only once the owner has stopped renewing
//! for a whole lease (plus a margin for clock skew). Renewal and takeover are
//! both compare-and-swaps on this one word, so they are totally ordered: if the
//! takeover wins, the renewal fails and the owner learns it has been fenced; if
//! the renewal wins, the takeover fails and the neighbour starts waiting again.
//! There is no "check the lease, then act" window.
//!
//! # How it works
//!
//! The word packs `epoch:24 | owner:16 | beat:24` ([`LeaseWord`]). The owner
//! renews with CAS `(e, me, b) -> (e, me, b+1)`. The neighbour watches the word
//! with its *own* clock (`LeaseWatch`): it notes when it last saw the word
//! change, and when the word has stayed the same for `lease + margin` it tries
//! CAS `(e, owner, b) -> (e+1, itself, 0)`, exactly the word it watched. Because
//! the neighbour starts timing only after it observed the renewal, its deadline
//! is never earlier than the owner's own view of its lease plus the margin
//! (Gray and Cheriton's lease argument, with only local clocks).
//!
//! # Trade-offs
//!
//! The lease is for liveness only: safety (refusing a zombie) is enforced again
//! where each operation commits (the replication ring's tail word and the task
//! words), so a lease wrongly believed expired costs a needless failover, never
//! a lost or duplicated task. The 24-bit beat wraps; a neighbour that slept
//! through exactly 2^24 renewals could see an unchanged word and take over a
//! live owner (a needless failover, as above).
//!
//! # References
//!
//! C. Gray, D. Cheriton, "Leases: an efficient fault-tolerant mechanism for
//! distributed file cache consistency", SOSP 1989. M. Kleppmann, "How to do
//! distributed locking" (fencing tokens), 2016.

use crate::mutants;
use crate::sync::{AtomicU64, CachePadded, Ordering};

use super::task::MASK24;

/// The decoded owner/epoch word of one queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LeaseWord {
    /// The fencing token: raised by one at every takeover.
    pub epoch: u32,
    /// The core that owns the queue in this epoch.
    pub owner: u16,
    /// Heartbeat counter, bumped at every renewal.
    pub beat: u32,
}

impl LeaseWord {
    pub(crate) fn pack(self) -> u64 {
        (u64::from(self.epoch) & MASK24) << 40
            | u64::from(self.owner) << 24
            | (u64::from(self.beat) & MASK24)
    }

    pub(crate) fn unpack(w: u64) -> Self {
        Self {
            epoch: ((w >> 40) & MASK24) as u32,
            owner: ((w >> 24) & 0xffff) as u16,
            beat: (w & MASK24) as u32,
        }
    }
}

/// What a renewal found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// The lease is extended; the caller still owns the queue.
    Renewed,
    /// Another core owns the queue in a later epoch: the caller is fenced.
    Fenced {
        /// The word that fenced the caller.
        now: LeaseWord,
    },
}

/// What a takeover attempt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Takeover {
    /// The caller now owns the queue in `epoch`.
    Won {
        /// The new epoch.
        epoch: u32,
    },
    /// The word changed since it was watched (the owner renewed, or someone
    /// else took over): keep watching.
    Changed {
        /// The word as it is now.
        #[allow(dead_code)]
        now: LeaseWord,
    },
}

/// The owner/epoch word of one queue.
///
/// Written by: the owner (renewals) and a neighbour (takeover), both by CAS.
/// Read by: everyone deciding who owns the queue.
pub(crate) struct Lease {
    word: CachePadded<AtomicU64>,
}

impl Lease {
    /// Queue owned by `owner` in epoch 1.
    pub(crate) fn new(owner: u16) -> Self {
        let w = LeaseWord {
            epoch: 1,
            owner,
            beat: 0,
        };
        Self {
            word: CachePadded::new(AtomicU64::new(w.pack())),
        }
    }

    /// The current word.
    pub(crate) fn load(&self) -> LeaseWord {
        // Acquire: pairs with the AcqRel CAS of `renew` and `try_takeover`, so
        // a reader that sees a new epoch also sees what the taker did before.
        LeaseWord::unpack(self.word.load(Ordering::Acquire))
    }

    /// Renews the lease of `owner` in `epoch` (CAS on the whole word).
    pub(crate) fn renew(&self, epoch: u32, owner: u16) -> Renewal {
        // Acquire: a first guess (the CAS below re-reads); pairs with the
        // Release half of the AcqRel CASes that renew or take over the lease.
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let w = LeaseWord::unpack(cur);
            if w.epoch != epoch || w.owner != owner {
                return Renewal::Fenced { now: w };
            }
            let next = LeaseWord {
                beat: ((u64::from(w.beat) + 1) & MASK24) as u32,
                ..w
            };
            // AcqRel: Release publishes the renewal to the watching
            // neighbour's Acquire load in `LeaseWatch::observe`; Acquire
            // (also on failure) reads a competing takeover before deciding.
            // Mutant `renew_blind_store` (loom, runq models): check the word,
            // then store, so a takeover between the two is undone.
            match mutants::cas!(
                "renew_blind_store",
                &self.word,
                compare_exchange_weak(cur, next.pack(), Ordering::AcqRel, Ordering::Acquire)
            ) {
                Ok(_) => return Renewal::Renewed,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Replaces exactly `watched` by `(watched.epoch + 1, taker, 0)`.
    pub(crate) fn try_takeover(&self, watched: LeaseWord, taker: u16) -> Takeover {
        let epoch = watched.epoch + 1;
        let next = LeaseWord {
            epoch,
            owner: taker,
            beat: 0,
        };
        // AcqRel: Release publishes the new epoch (the fencing token) to the old
        // owner's renewal CAS, which then fails; Acquire orders the takeover
        // after the last renewal it replaces (and after a spawner's
        // `touch_is_owner`, so the takeover's table scan sees its word).
        // Mutant `takeover_blind_store` (loom, runq models): check the word,
        // then store, so two backups that watched the same word can both
        // "win" the same epoch.
        match mutants::cas!(
            "takeover_blind_store",
            &self.word,
            compare_exchange(
                watched.pack(),
                next.pack(),
                Ordering::AcqRel,
                Ordering::Acquire
            )
        ) {
            Ok(_) => Takeover::Won { epoch },
            Err(actual) => Takeover::Changed {
                now: LeaseWord::unpack(actual),
            },
        }
    }

    /// Does `core` still own the queue? Asked with a read-modify-write (that
    /// changes nothing) so that it is ordered against a takeover's CAS: see
    /// `Spawner::spawn_with` for the case analysis.
    pub(crate) fn touch_is_owner(&self, core: u16) -> bool {
        // AcqRel: Release makes the caller's earlier task-word write visible
        // to a takeover CAS that reads from this RMW (the takeover's Acquire);
        // Acquire reads a takeover that came first.
        LeaseWord::unpack(self.word.fetch_add(0, Ordering::AcqRel)).owner == core
    }
}

/// A neighbour's view of one queue's lease, timed with the neighbour's clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LeaseWatch {
    seen: Option<(LeaseWord, u64)>,
}

/// What the watcher concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// The owner renewed recently (or the word just changed).
    Live,
    /// The word has not changed for `lease + margin`: it may be taken over.
    Expired {
        /// The word to CAS away.
        word: LeaseWord,
        /// When the watcher first saw that word (its last renewal, as seen).
        since: u64,
    },
}

impl LeaseWatch {
    pub(crate) const fn new() -> Self {
        Self { seen: None }
    }

    /// Looks at `lease` at time `now` (ns, the watcher's clock).
    pub(crate) fn observe(&mut self, lease: &Lease, now: u64, expiry_ns: u64) -> Watch {
        let w = lease.load();
        match self.seen {
            // A clock that went back (a caller's bad `now` earlier) moves
            // the sighting back with it: otherwise one time far in the
            // future would keep this watcher from ever seeing an expiry.
            Some((old, since)) if old == w && now < since => {
                self.seen = Some((w, now));
                Watch::Live
            }
            Some((old, since)) if old == w => {
                if now.saturating_sub(since) >= expiry_ns {
                    Watch::Expired { word: w, since }
                } else {
                    Watch::Live
                }
            }
            _ => {
                self.seen = Some((w, now));
                Watch::Live
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn renewal_and_takeover_exclude_each_other() {
        let l = Lease::new(3);
        let w = l.load();
        assert_eq!(l.renew(1, 3), Renewal::Renewed);
        // The watched word is stale: the takeover must fail.
        assert!(matches!(l.try_takeover(w, 4), Takeover::Changed { .. }));
        let w = l.load();
        assert_eq!(l.try_takeover(w, 4), Takeover::Won { epoch: 2 });
        assert!(
            matches!(l.renew(1, 3), Renewal::Fenced { now } if now.epoch == 2 && now.owner == 4)
        );
    }

    #[test]
    fn watch_expires_only_after_an_unchanged_lease() {
        let l = Lease::new(0);
        let mut watch = LeaseWatch::new();
        assert_eq!(watch.observe(&l, 0, 100), Watch::Live);
        assert_eq!(watch.observe(&l, 50, 100), Watch::Live);
        l.renew(1, 0);
        assert_eq!(watch.observe(&l, 120, 100), Watch::Live, "renewed at 120");
        assert_eq!(watch.observe(&l, 200, 100), Watch::Live);
        assert!(matches!(
            watch.observe(&l, 220, 100),
            Watch::Expired { since: 120, .. }
        ));
    }
}
