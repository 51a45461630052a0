//! What both campaigns (campaign.rs, in-process hosts; netns_campaign.rs,
//! host processes in network namespaces) record and check: one register
//! per key, the clients' events, and per key a linearizability verdict and
//! a count of lost acknowledged writes.

use crate::lincheck::{self, Model, Operation, Verdict};

/// The sequential model of one key.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Register(pub Option<u64>);

#[derive(Clone, Debug)]
pub enum Op {
    Write(u64),
    Read,
}

#[derive(Clone, PartialEq, Debug)]
pub enum Ret {
    Done,
    Value(Option<u64>),
}

impl Model for Register {
    type Op = Op;
    type Ret = Ret;
    fn step(&mut self, op: &Op) -> Ret {
        match op {
            Op::Write(v) => {
                self.0 = Some(*v);
                Ret::Done
            }
            Op::Read => Ret::Value(self.0),
        }
    }
    fn is_read_only(op: &Op) -> bool {
        matches!(op, Op::Read)
    }
}

/// One client operation on `key`, with its call and return times in ns
/// (`returned == u64::MAX`: outcome unknown, open until the end).
#[derive(Debug, Clone)]
pub struct Event {
    pub key: u64,
    pub client: usize,
    pub op: Op,
    pub ret: Ret,
    pub call: u64,
    pub returned: u64,
}

/// `NODEREP_RAFT_CAMPAIGN_SEED`, or a seed from the clock.
pub fn seed() -> u64 {
    std::env::var("NODEREP_RAFT_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// Checks `key`'s history with the project's linearizability checker and
/// panics, naming the key and the seed, if it is not linearizable. Returns
/// the number of operations checked.
pub fn check_key(events: &[Event], key: u64, seed: u64) -> usize {
    let history: Vec<Operation<Op, Ret>> = events
        .iter()
        .filter(|e| e.key == key)
        .map(|e| Operation {
            thread: e.client,
            op: e.op.clone(),
            ret: e.ret.clone(),
            call: e.call,
            returned: e.returned,
        })
        .collect();
    match lincheck::check(&Register(None), &history).expect("well-formed history") {
        Verdict::Linearizable { .. } => history.len(),
        other => panic!(
            "key {key}: history of {} operations is not linearizable (seed {seed}): {other:?}",
            history.len()
        ),
    }
}

/// The acknowledged writes of `key` that the final value `last` lost: a
/// write is kept if the final value is its own, or that of a write to the
/// same key that had not returned before it began.
pub fn lost_writes(events: &[Event], key: u64, last: Option<u64>) -> Vec<u64> {
    events
        .iter()
        .filter(|e| e.key == key && e.returned != u64::MAX)
        .filter_map(|e| match e.op {
            Op::Write(v) => Some((e, v)),
            Op::Read => None,
        })
        .filter(|(e, v)| {
            !last.is_some_and(|f| {
                f == *v
                    || events.iter().any(|o| {
                        o.key == key
                            && matches!(o.op, Op::Write(x) if x == f)
                            && o.returned >= e.call
                    })
            })
        })
        .map(|(_, v)| v)
        .collect()
}

/// Ends the whole test process, naming the campaign, if the campaign is
/// still running after `limit`: a hang (an election that never ends, a
/// client call that never returns) must fail with a name instead of
/// stalling CI. Disarmed when dropped. Host processes of the netns campaign
/// exit when their stdin (held by this process) closes; namespaces left
/// behind are swept by the next run.
pub struct Watchdog {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Watchdog {
    pub fn arm(name: &str, limit: std::time::Duration) -> Self {
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (flag, name) = (std::sync::Arc::clone(&done), name.to_string());
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + limit;
            while std::time::Instant::now() < deadline {
                // Relaxed: a stop flag; nothing else is read through it.
                if flag.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            eprintln!(
                "WATCHDOG: campaign {name:?} did not finish within {} s: a hang; aborting",
                limit.as_secs()
            );
            std::process::exit(101);
        });
        Self { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        // Relaxed: see `arm`.
        self.done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
