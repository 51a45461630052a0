//! Instruction counts of noderep's write path, for `valgrind --tool=callgrind`.
//!
//! `write_path_instr MODE N` does N writes of a trivial structure (add to a
//! counter) on the main thread and prints the sum. Run it under callgrind
//! with two values of N; the difference of the instruction counts divided by
//! the difference of N is the cost of one write, set-up excluded:
//!
//! ```text
//! for n in 100000 200000; do
//!   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/examples/write_path_instr two-active $n
//! done
//! ```
//!
//! Modes: `one` (one replica, no log), `idle-parked` (two replicas, the
//! second has no thread and the structure can be copied: it is parked),
//! `idle-helped` (the same without copies: the writer keeps the second
//! replica up to date), `two-active` (two replicas, one thread writing
//! through a token of each in turn, so every write goes through the log and
//! each replica applies the other's entries).

use noderep::topology::Topology;
use noderep::{Dispatch, NodeReplicated, NrBuilder};

#[derive(Default, Clone)]
struct Counter(u64, bool);

impl Dispatch for Counter {
    type ReadOperation<'a> = ();
    type WriteOperation = u64;
    type Response = u64;
    fn dispatch(&self, _: ()) -> u64 {
        self.0
    }
    fn dispatch_mut(&mut self, add: u64) -> u64 {
        self.0 = self.0.wrapping_add(add);
        self.0
    }
    fn snapshot(&self) -> Option<Self> {
        self.1.then(|| self.clone())
    }
}

fn build(replicas: usize, copies: bool) -> NodeReplicated<Counter> {
    NrBuilder::new()
        .topology(Topology::simulated(replicas, 1).expect("a simulated topology"))
        .build(|_| Counter(0, copies))
        .expect("valid settings")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "one".into());
    let n: u64 = match args.next().map(|s| s.parse()) {
        Some(Ok(n)) => n,
        None => 100_000,
        Some(Err(e)) => {
            eprintln!("error: the number of writes must be a whole number ({e})");
            std::process::exit(2);
        }
    };
    let (nr, two) = match mode.as_str() {
        "one" => (build(1, true), false),
        "idle-parked" => (build(2, true), false),
        "idle-helped" => (build(2, false), false),
        "two-active" => (build(2, false), true),
        other => {
            eprintln!(
                "error: unknown mode {other:?}; use one of: one, idle-parked, idle-helped, two-active"
            );
            std::process::exit(2);
        }
    };
    let t0 = nr.register_on(0).expect("a thread slot");
    let t1 = nr
        .register_on(1.min(nr.num_replicas() - 1))
        .expect("a thread slot");
    let mut sum = 0u64;
    for i in 0..n {
        let tok = if two && i & 1 == 1 { &t1 } else { &t0 };
        sum = sum.wrapping_add(nr.execute_mut(1, tok).expect("not poisoned"));
    }
    println!("{mode}: {n} writes, sum {sum}");
}
