//! When a host calls an election: as soon as the leader's lease has
//! surely expired, and only after a pre-vote says it could win.
//!
//! openraft 0.9 has a follower that knows a leader wait for the leader's
//! lease (the maximum election timeout) *plus* a random election timeout
//! before it campaigns, so a dead leader costs up to twice the maximum
//! timeout before the first vote is even asked for; a candidate whose
//! election fails (a split vote, or a log shorter than a voter's) waits
//! another random timeout, and one refused for its shorter log adds twice
//! the maximum timeout more. An election called blindly can also do harm:
//! in a process-level campaign a follower that had not yet heard the
//! just-elected leader called one in the next term, the new leader granted
//! it and stepped down, the other voters refused it, and the leader's loss
//! cost 1.5 s against a target of twice the election timeout. This module
//! calls the elections itself (openraft's own timer stays as a backstop)
//! and makes the first one count.
//!
//! # How it works
//!
//! * **Clock.** [`ElectionClock`] holds, per host, when a leader was last
//!   heard from (an append or snapshot accepted, written by the server),
//!   when this host last granted a vote (server) and last campaigned
//!   (watchdog). Every field is a timing hint; none is needed
//!   for safety.
//! * **Deadline.** A voter that is a follower or a candidate may campaign
//!   once no leader has been heard from for the lease (every voter refuses
//!   to vote while its own lease runs, so asking earlier is wasted), plus
//!   a per-host offset by rank among the voters (a quarter heartbeat per
//!   rank), so that followers that heard the last heartbeat together do not
//!   all ask at once.
//! * **Pre-vote** (Raft thesis §9.6, done here because openraft 0.9 has
//!   none). Before calling an election the host asks every voter whether it
//!   would vote: a voter says yes when it is not the leader, has not heard
//!   from a leader for the lease, has not granted a vote or campaigned in
//!   the last half heartbeat (an election is under way), and has no longer
//!   log than the asker. Only with a yes from a quorum (of each
//!   configuration of a joint membership) does the host call
//!   `trigger().elect()`. A pre-vote changes no state, so a host with a
//!   short log, or cut off from the leader while the others still hear it,
//!   asks again every fifth of a heartbeat without bumping the term and
//!   without disturbing anyone; the host with the longest log wins the first
//!   real vote instead of colliding with a shorter-log candidate in the same
//!   term.
//! * **Retry.** A host that called an election and still sees no leader
//!   half to one heartbeat later (random per attempt) pre-votes and
//!   campaigns again; the randomness ends split votes quickly.
//!
//! # Trade-offs
//!
//! One more round trip (a pre-vote) per election, about a millisecond on
//! one machine. The pre-vote compares log ids from the log store, which may
//! differ for a moment from the Raft engine's own view; a wrong answer only
//! delays one attempt by a fifth of a heartbeat (or lets one real vote be
//! refused), it never makes an election unsafe: calling an election is
//! always safe in Raft, only its timing changes. A leader slower than the
//! lease to send a heartbeat is deposed, as with openraft's own timer.
//!
//! References: D. Ongaro, "Consensus: Bridging Theory and Practice", 2014,
//! §9.6 (pre-vote); openraft 0.9 `RaftCore::handle_tick_election` and
//! `Engine::handle_vote_req` (the lease and the log comparison).

use crate::log_store::FileLogStore;
use crate::network::Pool;
use crate::types::{HostId, Request, Response, TypeConfig};
use openraft::{LogId, Raft, ServerState};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// When things last happened on this host, in nanoseconds since `epoch`.
/// Every field only grows (`fetch_max`); all are timing hints.
pub(crate) struct ElectionClock {
    epoch: Instant,
    /// A leader's append or snapshot was accepted here. Written by the
    /// server, read by the watchdog and the pre-vote answer.
    heard: AtomicU64,
    /// This host granted a vote. Written by the server, read by both.
    granted: AtomicU64,
    /// This host called an election. Written and read by the watchdog, read
    /// by the pre-vote answer.
    campaigned: AtomicU64,
}

impl ElectionClock {
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            heard: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            campaigned: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// A leader was heard from just now.
    pub(crate) fn heard_leader(&self) {
        // Relaxed: a timing hint; nothing is published through it.
        self.heard.fetch_max(self.now(), Ordering::Relaxed);
    }

    /// This host granted a vote just now.
    pub(crate) fn granted_vote(&self) {
        // Relaxed: as in `heard_leader`.
        self.granted.fetch_max(self.now(), Ordering::Relaxed);
    }

    fn campaigned_now(&self) {
        // Relaxed: as in `heard_leader`.
        self.campaigned.fetch_max(self.now(), Ordering::Relaxed);
    }

    fn get(field: &AtomicU64) -> u64 {
        // Relaxed: as in `heard_leader`.
        field.load(Ordering::Relaxed)
    }
}

/// The timings of one host's elections, from its configuration.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    /// openraft's leader lease: the maximum election timeout.
    pub lease: Duration,
    /// The heartbeat interval.
    pub heartbeat: Duration,
}

impl Timing {
    /// Extra wait per rank among the voters.
    fn rank_step(&self) -> Duration {
        self.heartbeat / 4
    }
    /// How long an election under way is left alone (by this host and, in
    /// its pre-vote answers, by others).
    fn hold(&self) -> Duration {
        self.heartbeat / 2
    }
    /// Pause between refused pre-votes.
    fn pre_vote_pause(&self) -> Duration {
        self.heartbeat / 5
    }
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

/// A small xorshift generator: the retry jitter needs no more.
struct Jitter(u64);

impl Jitter {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    /// Uniform-enough in `[lo, hi)`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = ns(hi).saturating_sub(ns(lo)).max(1);
        lo + Duration::from_nanos(self.0 % span)
    }
}

/// What a host needs to decide on elections and answer pre-votes.
pub(crate) struct Elector {
    pub id: HostId,
    pub raft: Raft<TypeConfig>,
    pub log: FileLogStore,
    pub pool: Arc<Pool>,
    pub clock: Arc<ElectionClock>,
    pub timing: Timing,
}

/// Whether `yes` holds a majority of every configuration in `joint`.
fn quorum(joint: &[BTreeSet<HostId>], yes: &BTreeSet<HostId>) -> bool {
    joint
        .iter()
        .all(|c| c.iter().filter(|v| yes.contains(v)).count() * 2 > c.len())
}

impl Elector {
    /// The answer to a pre-vote from a host whose last log id is
    /// `their_last`: whether this host would vote for it now, and this
    /// host's last log id.
    pub(crate) fn answer_pre_vote(
        &self,
        their_last: Option<LogId<HostId>>,
    ) -> (bool, Option<LogId<HostId>>) {
        let mine = self.log.last_log_id();
        let c = &self.clock;
        let now = c.now();
        let leader = self.raft.metrics().borrow().state == ServerState::Leader;
        let lease_over = now > ElectionClock::get(&c.heard) + ns(self.timing.lease);
        let busy = now
            < ElectionClock::get(&c.granted).max(ElectionClock::get(&c.campaigned))
                + ns(self.timing.hold());
        (!leader && lease_over && !busy && their_last >= mine, mine)
    }

    /// Asks every voter whether it would vote for this host; `true` once a
    /// quorum (this host included) said yes.
    async fn pre_vote(&self) -> bool {
        let (joint, peers) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let membership = m.membership_config.membership();
            let joint = membership.get_joint_config().clone();
            let peers: Vec<(HostId, String)> = membership
                .voter_ids()
                .filter(|v| *v != self.id)
                .filter_map(|v| membership.get_node(&v).map(|n| (v, n.addr.clone())))
                .collect();
            (joint, peers)
        };
        let mut yes = BTreeSet::from([self.id]);
        if quorum(&joint, &yes) {
            return true;
        }
        let mine = self.log.last_log_id();
        let mut asks = tokio::task::JoinSet::new();
        for (peer, addr) in peers {
            let pool = Arc::clone(&self.pool);
            let limit = self.timing.heartbeat;
            asks.spawn(async move {
                let r = pool
                    .call(
                        peer,
                        &addr,
                        Request::PreVote { last_log_id: mine },
                        Some(limit),
                    )
                    .await;
                (
                    peer,
                    matches!(r, Ok(Response::PreVote { granted: true, .. })),
                )
            });
        }
        while let Some(done) = asks.join_next().await {
            if let Ok((peer, true)) = done {
                yes.insert(peer);
                if quorum(&joint, &yes) {
                    // The answers still out are dropped with `asks`.
                    return true;
                }
            }
        }
        false
    }

    /// The watchdog: runs until `stop` turns true or the engine stops.
    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let t = self.timing;
        let mut jitter =
            Jitter::new(self.id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.clock.now());
        // A host that just started gives a leader the lease to be heard.
        self.clock.heard_leader();
        // This host's own next attempt may not come before this (a retry
        // after a campaign, or a pause after a refused pre-vote).
        let mut not_before = 0u64;
        loop {
            let (eligible, rank) = {
                let m = self.raft.metrics();
                let m = m.borrow();
                let voters: BTreeSet<HostId> =
                    m.membership_config.membership().voter_ids().collect();
                (
                    matches!(m.state, ServerState::Follower | ServerState::Candidate)
                        && voters.contains(&self.id)
                        && m.running_state.is_ok(),
                    voters.range(..self.id).count() as u32,
                )
            };
            let c = &self.clock;
            let now = c.now();
            let ready = (ElectionClock::get(&c.heard) + ns(t.lease) + ns(t.rank_step() * rank))
                .max(ElectionClock::get(&c.granted) + ns(t.hold()))
                .max(not_before);
            let wait = if !eligible {
                t.heartbeat / 2
            } else if now < ready {
                Duration::from_nanos(ready - now).min(t.heartbeat / 2)
            } else if self.pre_vote().await {
                // Raft tells a new leader or a refusal apart; this host
                // only chooses when to try again if neither came.
                c.campaigned_now();
                not_before = c.now() + ns(jitter.between(t.hold(), t.heartbeat));
                if self.raft.trigger().elect().await.is_err() {
                    return; // the engine stopped
                }
                continue;
            } else {
                not_before =
                    c.now() + ns(jitter.between(t.pre_vote_pause(), 2 * t.pre_vote_pause()));
                continue;
            };
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(wait) => {}
            }
            if *stop.borrow() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_needs_a_majority_of_every_configuration() {
        let one = BTreeSet::from([1, 2, 3]);
        let two = BTreeSet::from([3, 4, 5]);
        assert!(quorum(std::slice::from_ref(&one), &BTreeSet::from([1, 2])));
        assert!(!quorum(std::slice::from_ref(&one), &BTreeSet::from([1])));
        assert!(!quorum(
            &[one.clone(), two.clone()],
            &BTreeSet::from([1, 2])
        ));
        assert!(quorum(&[one, two], &BTreeSet::from([2, 3, 4])));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new(7);
        for _ in 0..1000 {
            let d = j.between(Duration::from_millis(50), Duration::from_millis(100));
            assert!(d >= Duration::from_millis(50) && d < Duration::from_millis(100));
        }
    }
}
