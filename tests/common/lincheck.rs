//! A linearizability checker: decides whether a recorded history of
//! concurrent operations could have come from some sequential execution of a
//! model that respects the real-time order of the operations.
//!
//! Node replication promises linearizability; unit tests of its pieces cannot
//! show that the whole keeps the promise under real concurrency. This module
//! takes histories recorded from real runs ([`super::history`]) and searches
//! for a *linearization*: a total order of the operations that (1) gives
//! every operation the response it actually returned when the operations are
//! replayed, in that order, on a sequential [`Model`], and (2) keeps `a`
//! before `b` whenever `a` returned before `b` was invoked. If one exists the
//! history is linearizable and the order is returned as a witness; if none
//! exists the checker says so and describes where the search got stuck.
//!
//! # How it works
//!
//! This is the Wing–Gong search with Lowe's memoization (the algorithm Lowe
//! calls WGL); candidates are tried "just in time", in the order the events
//! are met, and an operation is only ever linearized between its call and
//! its return:
//!
//! 1. Every operation contributes two events, its *call* and its *return*,
//!    sorted by timestamp into one doubly linked list (calls before returns
//!    on equal timestamps, so operations whose stamps touch count as
//!    overlapping, which is the only safe reading of a tie).
//! 2. The search walks the list from its head keeping a current model
//!    state. At a *call* event, the operation is a candidate to be
//!    linearized next: every operation it must follow in real time has
//!    returned before its call, and every such operation is already out of
//!    the list. The candidate is applied to a copy of the state; if the model
//!    gives the recorded response, the operation is *lifted* (its call and
//!    return are unlinked), pushed on a stack with the state before it, and
//!    the walk restarts from the head.
//! 3. Reaching a *return* event means the operation returning there has not
//!    been linearized, yet every operation still in the list after this point
//!    was invoked after it returned and therefore may not precede it: no
//!    candidate before this point works. The search backtracks: it pops the
//!    last linearized operation, restores its state, relinks its events
//!    (unlinking and relinking in reverse order is exact, as in dancing
//!    links) and tries the next candidate after that operation's call.
//! 4. The list becomes empty: every operation is linearized and the stack,
//!    bottom to top, is the witness. The stack becomes empty on a backtrack:
//!    no linearization exists.
//!
//! Pure reads ([`Model::is_read_only`]) are committed without branching:
//! if a read fits the current state, some linearization exists from here iff
//! one exists with the read linearized right now. (Take any linearization
//! that places it later and move it to the front: it sees the current state
//! and fits; the operations it jumps over see the same states as before,
//! since it changes nothing; no real-time constraint breaks, since it was a
//! candidate, so nothing left must precede it.) So when the search
//! backtracks past a committed read, it does not try the other candidates
//! at that point but keeps backtracking; and a fitting read whose successor
//! configuration was already explored means this configuration fails too.
//! This only prunes: the verdict is the same without it.
//!
//! The memoization makes this practical: the rest of the search depends
//! only on *which* operations are linearized (a bit set) and on the model
//! state after them, not on the order that produced them. Every pair
//! (linearized set, state) that was reached is stored; reaching it again
//! (by another order of commuting operations) is skipped. For `t`
//! sequential threads with `k` operations each, at most `(k + 1)^t`
//! linearized sets exist (each thread's operations are linearized in its
//! program order, so a set is a prefix per thread), and far fewer in
//! practice, since only operations that overlap in time can be reordered.
//!
//! # Trade-offs
//!
//! The problem is NP-complete in general (Gibbons and Korach), so the search
//! takes a step budget and answers [`Verdict::GaveUp`] instead of running
//! forever on a pathological history. Memoization merges configurations
//! only when the model states are equal: a map whose concurrent writes end
//! in the same contents merges well, but a stack whose concurrent pushes
//! stay buried until a late pop or snapshot reveals their order keeps one
//! state per order, so stack histories have an exponential tail (a recorded
//! 68-operation, 8-thread stack history takes about 2 x 10^8 steps). Trying
//! candidates by return time or by interval midpoint instead of by call
//! time made recorded stack histories slower, not faster; Lowe's other
//! algorithm (the just-in-time tree search) has not been tried. Models must
//! be cheap to clone and
//! hash, since every tried step clones the state and every accepted step
//! stores it. Every operation must have completed (no pending operations):
//! the tests join their threads before checking. The checker does not split
//! a history by key (P-compositionality); histories are kept small enough
//! that it does not need to.
//!
//! # References
//!
//! Herlihy and Wing, "Linearizability: A Correctness Condition for
//! Concurrent Objects", TOPLAS 1990; Wing and Gong, "Testing and Verifying
//! Concurrent Objects", JPDC 1993; Lowe, "Testing for Linearizability",
//! Concurrency and Computation: Practice and Experience, 2017.

use std::collections::HashSet;
use std::fmt::{self, Debug};
use std::hash::Hash;

/// A sequential specification: the state of an object and how each
/// operation changes it and what it returns.
///
/// The state must be `Clone + Eq + Hash`: the checker copies it to try an
/// operation and remembers the (linearized set, state) pairs it has explored.
pub trait Model: Clone + Eq + Hash + Debug {
    /// An operation with its arguments.
    type Op: Clone + Debug;
    /// What an operation returns.
    type Ret: Clone + PartialEq + Debug;

    /// Applies `op` to the state and returns its response.
    fn step(&mut self, op: &Self::Op) -> Self::Ret;

    /// Whether `op` never changes the state, in any state (a pure read).
    /// Answering `true` lets the search commit to such an operation as
    /// soon as it fits (see the module docs); answering `false` for a read
    /// is always safe, only slower. Defaults to `false`.
    fn is_read_only(_op: &Self::Op) -> bool {
        false
    }
}

/// One completed operation of a history.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation<Op, Ret> {
    /// The thread that ran it (for reports only: the checker uses the
    /// timestamps, which already order a thread's own operations).
    pub thread: usize,
    /// The operation and its arguments.
    pub op: Op,
    /// The response it returned.
    pub ret: Ret,
    /// Timestamp taken before the operation was invoked.
    pub call: u64,
    /// Timestamp taken after it returned.
    pub returned: u64,
}

impl<Op, Ret> Operation<Op, Ret> {
    /// Whether this operation returned before `other` was invoked, so that
    /// every linearization must put it first.
    pub fn precedes(&self, other: &Self) -> bool {
        self.returned < other.call
    }
}

/// A recorded history of model `M`'s operations, in any order.
pub type History<M> = Vec<Operation<<M as Model>::Op, <M as Model>::Ret>>;

/// A history the checker cannot take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HistoryError {
    /// An operation returned before it was invoked: the recorder is broken
    /// (take the call stamp before the operation, the return stamp after).
    ReturnBeforeCall {
        /// Index of the operation in the history.
        index: usize,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::ReturnBeforeCall { index } => write!(
                f,
                "operation {index} returned before it was invoked: take the call \
                 timestamp before invoking and the return timestamp after it returns"
            ),
        }
    }
}

/// Where the search for a linearization got stuck.
#[derive(Debug, Clone, PartialEq)]
pub struct Counterexample<M: Model> {
    /// The longest sequence of operations (history indices) that the search
    /// managed to linearize.
    pub longest_prefix: Vec<usize>,
    /// After that prefix, the operations that could have come next in real
    /// time, each with the response the model gives (which differs from the
    /// recorded one).
    pub next_candidates: Vec<(usize, M::Ret)>,
}

/// The checker's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<M: Model> {
    /// A linearization exists; `order` is one, as history indices.
    Linearizable {
        /// Witness order.
        order: Vec<usize>,
        /// Search steps taken (events visited).
        steps: u64,
    },
    /// No linearization exists.
    NotLinearizable(Counterexample<M>),
    /// The step budget ran out before the search finished.
    GaveUp {
        /// Steps taken.
        steps: u64,
    },
}

impl<M: Model> Verdict<M> {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable { .. })
    }
}

/// Default step budget of [`check`]: far above what the tests' histories
/// need (they take thousands of steps), low enough to fail in seconds.
pub const DEFAULT_BUDGET: u64 = 20_000_000;

/// Checks `history` against `init` with the [`DEFAULT_BUDGET`].
pub fn check<M: Model>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
) -> Result<Verdict<M>, HistoryError> {
    check_with_budget(init, history, DEFAULT_BUDGET)
}

/// A fixed-size bit set over operation indices, hashable for the memo table.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BitSet(Box<[u64]>);

impl BitSet {
    fn new(bits: usize) -> Self {
        BitSet(vec![0; bits.div_ceil(64)].into_boxed_slice())
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    // Declared first so that a call sorts before a return with the same
    // timestamp (touching operations overlap).
    Call,
    Return,
}

/// The event list: node 0 is the head sentinel, nodes `1..=2n` are events,
/// node `2n + 1` the tail sentinel.
struct Events {
    /// For each event node: the operation and the kind of event.
    node: Vec<(usize, Kind)>,
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each operation: its call node and its return node.
    call_of: Vec<usize>,
    return_of: Vec<usize>,
}

impl Events {
    const HEAD: usize = 0;

    fn new<Op, Ret>(history: &[Operation<Op, Ret>]) -> Self {
        let mut sorted: Vec<(u64, Kind, usize)> = history
            .iter()
            .enumerate()
            .flat_map(|(i, o)| [(o.call, Kind::Call, i), (o.returned, Kind::Return, i)])
            .collect();
        sorted.sort();
        let n = sorted.len();
        let tail = n + 1;
        let mut node = vec![(usize::MAX, Kind::Call); n + 2];
        let mut call_of = vec![0; history.len()];
        let mut return_of = vec![0; history.len()];
        for (k, &(_, kind, op)) in sorted.iter().enumerate() {
            node[k + 1] = (op, kind);
            match kind {
                Kind::Call => call_of[op] = k + 1,
                Kind::Return => return_of[op] = k + 1,
            }
        }
        Events {
            node,
            next: (1..=tail).chain([tail]).collect(),
            prev: [0].into_iter().chain(0..tail).collect(),
            call_of,
            return_of,
        }
    }

    fn is_empty(&self) -> bool {
        self.next[Self::HEAD] == self.next.len() - 1
    }

    fn unlink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    /// Undoes `unlink(x)`; valid when everything unlinked after `x` has
    /// been relinked already (x's own pointers are still intact).
    fn relink(&mut self, x: usize) {
        let (p, n) = (self.prev[x], self.next[x]);
        self.next[p] = x;
        self.prev[n] = x;
    }

    /// Takes operation `op`'s two events out of the list.
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_of[op]);
        self.unlink(self.return_of[op]);
    }

    /// Puts them back (reverse order of `lift`).
    fn unlift(&mut self, op: usize) {
        self.relink(self.return_of[op]);
        self.relink(self.call_of[op]);
    }
}

/// Checks `history` against the model whose initial state is `init`,
/// visiting at most `budget` events.
pub fn check_with_budget<M: Model>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
    budget: u64,
) -> Result<Verdict<M>, HistoryError> {
    if let Some(index) = history.iter().position(|o| o.returned < o.call) {
        return Err(HistoryError::ReturnBeforeCall { index });
    }
    let mut events = Events::new(history);
    let mut state = init.clone();
    let mut linearized = BitSet::new(history.len());
    let mut seen: HashSet<(BitSet, M)> = HashSet::new();
    // The linearized operations in order, each with the state before it
    // and whether it was committed as a pure read (no alternative to try).
    let mut stack: Vec<(usize, M, bool)> = Vec::new();
    let mut longest: Vec<usize> = Vec::new();
    let mut steps = 0u64;
    let mut cur = events.next[Events::HEAD];
    while !events.is_empty() {
        steps += 1;
        if steps > budget {
            return Ok(Verdict::GaveUp { steps });
        }
        let (op, kind) = events.node[cur];
        // Whether to undo the last step (the walk reached a return, or a
        // fitting read leads to an explored configuration).
        let mut backtrack = kind == Kind::Return;
        if kind == Kind::Call {
            let read_only = M::is_read_only(&history[op].op);
            let mut after = state.clone();
            let fits = after.step(&history[op].op) == history[op].ret;
            let fresh = fits && {
                linearized.set(op);
                let fresh = seen.insert((linearized.clone(), after.clone()));
                if !fresh {
                    linearized.clear(op);
                }
                fresh
            };
            if fresh {
                stack.push((op, std::mem::replace(&mut state, after), read_only));
                events.lift(op);
                if stack.len() > longest.len() {
                    longest = stack.iter().map(|&(o, _, _)| o).collect();
                }
                cur = events.next[Events::HEAD];
            } else if fits && read_only {
                backtrack = true;
            } else {
                cur = events.next[cur];
            }
        }
        // Undo steps until one with alternatives left (not a committed
        // read); fail when there is none.
        while backtrack {
            let Some((last, before, committed)) = stack.pop() else {
                let next_candidates = candidates_after(init, history, &longest);
                return Ok(Verdict::NotLinearizable(Counterexample {
                    longest_prefix: longest,
                    next_candidates,
                }));
            };
            state = before;
            linearized.clear(last);
            events.unlift(last);
            cur = events.next[events.call_of[last]];
            backtrack = committed;
        }
    }
    Ok(Verdict::Linearizable {
        order: stack.into_iter().map(|(o, _, _)| o).collect(),
        steps,
    })
}

/// After replaying `prefix`, the operations not in it that no other
/// remaining operation precedes in real time, with the model's response.
fn candidates_after<M: Model>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
    prefix: &[usize],
) -> Vec<(usize, M::Ret)> {
    let mut state = init.clone();
    for &i in prefix {
        state.step(&history[i].op);
    }
    let mut done = vec![false; history.len()];
    for &i in prefix {
        done[i] = true;
    }
    let remaining: Vec<usize> = (0..history.len()).filter(|&i| !done[i]).collect();
    remaining
        .iter()
        .filter(|&&i| !remaining.iter().any(|&j| history[j].precedes(&history[i])))
        .map(|&i| (i, state.clone().step(&history[i].op)))
        .collect()
}

/// Checks that `order` is a linearization of `history`: a permutation of it
/// that respects real-time order and, replayed on the model from `init`,
/// gives every operation its recorded response. Returns the final state.
///
/// This is independent of the search, so tests use it to validate every
/// witness the checker produces.
pub fn verify_linearization<M: Model>(
    init: &M,
    history: &[Operation<M::Op, M::Ret>],
    order: &[usize],
) -> Result<M, String> {
    let mut position = vec![usize::MAX; history.len()];
    for (p, &i) in order.iter().enumerate() {
        if i >= history.len() || position[i] != usize::MAX {
            return Err(format!("operation {i} is out of range or appears twice"));
        }
        position[i] = p;
    }
    if let Some(i) = position.iter().position(|&p| p == usize::MAX) {
        return Err(format!("operation {i} is missing from the order"));
    }
    for (a, op_a) in history.iter().enumerate() {
        for (b, op_b) in history.iter().enumerate() {
            if op_a.precedes(op_b) && position[a] > position[b] {
                return Err(format!(
                    "operation {a} returned before {b} was invoked but is ordered after it"
                ));
            }
        }
    }
    let mut state = init.clone();
    for &i in order {
        let got = state.step(&history[i].op);
        if got != history[i].ret {
            return Err(format!(
                "operation {i} ({:?}) recorded {:?} but the model returns {got:?} at that point",
                history[i].op, history[i].ret
            ));
        }
    }
    Ok(state)
}

/// Renders a history, one operation per line in call order, with a verdict's
/// counterexample if given: for failure messages.
pub fn render<M: Model>(
    history: &[Operation<M::Op, M::Ret>],
    counterexample: Option<&Counterexample<M>>,
) -> String {
    let mut by_call: Vec<usize> = (0..history.len()).collect();
    by_call.sort_by_key(|&i| history[i].call);
    let mut out = String::new();
    for i in by_call {
        let o = &history[i];
        out += &format!(
            "  #{i:<4} thread {:<2} [{:>6}, {:>6}] {:?} -> {:?}\n",
            o.thread, o.call, o.returned, o.op, o.ret
        );
    }
    if let Some(c) = counterexample {
        out += &format!("longest linearizable prefix: {:?}\n", c.longest_prefix);
        for (i, expected) in &c.next_candidates {
            out += &format!(
                "  next candidate #{i}: {:?} recorded {:?}, the model says {expected:?}\n",
                history[*i].op, history[*i].ret
            );
        }
    }
    out
}
