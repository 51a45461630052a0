//! Loom models of noderep's concurrent protocols live in `tests/`.
//!
//! They only do something when built with `RUSTFLAGS="--cfg loom"`; see
//! `scripts/loom.sh` and this crate's README for the models and the
//! mutations each of them catches. This library holds what the models share:
//! a tiny replicated data structure (`Seq`, built only under `cfg(loom)`)
//! and constructors.

#[cfg(loom)]
pub use support::*;

#[cfg(loom)]
mod support {
    use noderep::topology::Topology;
    use noderep::{Dispatch, NodeReplicated, NrBuilder};
    use std::sync::OnceLock;

    /// An append-only sequence of values: the simplest structure on which
    /// "every write applied exactly once, in one order" is directly visible.
    #[derive(Default, Debug)]
    pub struct Seq {
        /// Values in the order their writes were applied.
        pub items: Vec<u64>,
        /// How many times `Op::Panic` ran on this replica (it must run at
        /// most once: nothing is applied after a panic).
        pub panics: usize,
    }

    /// Write operations of [`Seq`].
    #[derive(Clone, Debug)]
    pub enum Op {
        /// Appends the value.
        Push(u64),
        /// Panics inside `dispatch_mut` (model 7).
        Panic,
    }

    /// The panic message of [`Op::Panic`], filtered out of the test output.
    pub const PANIC_MSG: &str = "loom model: Op::Panic panicked on purpose";

    impl Dispatch for Seq {
        type ReadOperation<'a> = ();
        type WriteOperation = Op;
        /// A snapshot of the sequence (after the write, for writes).
        type Response = Vec<u64>;

        fn dispatch(&self, _op: ()) -> Vec<u64> {
            self.items.clone()
        }

        fn dispatch_mut(&mut self, op: Op) -> Vec<u64> {
            match op {
                Op::Push(v) => {
                    self.items.push(v);
                    self.items.clone()
                }
                Op::Panic => {
                    self.panics += 1;
                    panic!("{PANIC_MSG}")
                }
            }
        }
    }

    /// A simulated topology of `nodes` one-core nodes, built once per
    /// process (it reads sysfs, which loom need not explore).
    fn topology(nodes: usize) -> Topology {
        static TOPOLOGIES: OnceLock<Vec<Topology>> = OnceLock::new();
        let all = TOPOLOGIES.get_or_init(|| {
            (1..=3)
                .map(|n| Topology::simulated(n, 1).expect("simulated topology"))
                .collect()
        });
        all[nodes - 1].clone()
    }

    /// A [`Seq`] that can be copied ([`Dispatch::snapshot`]): its idle
    /// replicas are parked, and replicas can be added at run time.
    #[derive(Default, Debug)]
    pub struct CopySeq(pub Seq);

    impl Dispatch for CopySeq {
        type ReadOperation<'a> = ();
        type WriteOperation = Op;
        type Response = Vec<u64>;

        fn dispatch(&self, op: ()) -> Vec<u64> {
            self.0.dispatch(op)
        }

        fn dispatch_mut(&mut self, op: Op) -> Vec<u64> {
            self.0.dispatch_mut(op)
        }

        fn snapshot(&self) -> Option<Self> {
            Some(CopySeq(Seq {
                panics: self.0.panics,
                items: self.0.items.clone(),
            }))
        }
    }

    /// A [`CopySeq`] on `replicas` simulated nodes (plus `spare` places out
    /// of service), `slots` thread slots each, a log of `log` entries.
    pub fn copy_nr(
        replicas: usize,
        spare: usize,
        slots: usize,
        log: usize,
    ) -> NodeReplicated<CopySeq> {
        NrBuilder::new()
            .topology(topology(replicas))
            .max_replicas(replicas + spare)
            .max_threads_per_replica(slots)
            .log_capacity(log)
            .build(|_| CopySeq::default())
            .expect("valid loom configuration")
    }

    /// A [`Seq`] replicated on `replicas` simulated nodes, with `slots`
    /// thread slots per replica and a log of `log` entries.
    pub fn seq_nr(replicas: usize, slots: usize, log: usize) -> NodeReplicated<Seq> {
        NrBuilder::new()
            .topology(topology(replicas))
            .max_threads_per_replica(slots)
            .log_capacity(log)
            .build(|_| Seq::default())
            .expect("valid loom configuration")
    }

    /// The builder behind [`seq_nr`]: `replicas` simulated nodes, `slots`
    /// thread slots per replica, a log of `log` entries (model 8 builds
    /// lane-partitioned instances from it).
    pub fn nr_builder<D>(replicas: usize, slots: usize, log: usize) -> NrBuilder<D> {
        NrBuilder::new()
            .topology(topology(replicas))
            .max_threads_per_replica(slots)
            .log_capacity(log)
    }

    /// Runs `f` under loom with the default (environment) settings and
    /// prints how many interleavings were explored (see `--nocapture`).
    pub fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
        model_with(name, loom::model::Builder::new(), f);
    }

    /// Runs `f` under loom with the given settings, counting interleavings.
    pub fn model_with(
        name: &str,
        builder: loom::model::Builder,
        f: impl Fn() + Sync + Send + 'static,
    ) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let runs = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = std::sync::Arc::clone(&runs);
        let start = std::time::Instant::now();
        builder.check(move || {
            // Relaxed: a statistic of this (single-threaded) explorer.
            counter.fetch_add(1, Ordering::Relaxed);
            f();
        });
        eprintln!(
            "{name}: {} interleavings explored (preemption bound {}) in {:.2?}",
            runs.load(Ordering::Relaxed),
            std::env::var("LOOM_MAX_PREEMPTIONS").unwrap_or_else(|_| "unbounded".into()),
            start.elapsed()
        );
    }
}
