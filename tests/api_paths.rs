//! The public API as a client sees it, where items moved: each limit is an
//! associated constant of the builder that checks it, and the builder
//! refuses one past it with an error naming it; the cpulist helpers are
//! `Topology`'s; the amortised fit is `AmortisedFit::fit`.
//!
//! The old paths (`noderep::nr::config::*`, `noderep::runq::MAX_*`,
//! `noderep::topology::parse_cpulist`, ...) stay public but hidden from the
//! docs, so that code written against them still compiles; this test pins
//! them to the same values and behaviour, so they cannot drift apart.

use noderep::cost::AmortisedFit;
use noderep::mirror::Mirror;
use noderep::nr::lanes::{Lane, LaneMap, LanesBuilder, LanesError};
use noderep::runq::{RunQueues, RunqBuilder, RunqError};
use noderep::topology::{nodes_of_pages, Topology, TopologyError};
use noderep::{Dispatch, NrBuilder, NrError, ReplicaPolicy};

#[derive(Default)]
struct Counter(u64);

impl Dispatch for Counter {
    type ReadOperation<'a> = ();
    type WriteOperation = u64;
    type Response = u64;

    fn dispatch(&self, _op: ()) -> u64 {
        self.0
    }

    fn dispatch_mut(&mut self, op: u64) -> u64 {
        self.0 += op;
        self.0
    }
}

impl LaneMap for Counter {
    fn write_lane(op: &u64) -> Lane {
        Lane::One(*op)
    }

    fn read_lane(_op: &()) -> Lane {
        Lane::All
    }

    fn merge_responses(acc: u64, next: u64) -> u64 {
        acc + next
    }
}

type B = NrBuilder<Counter>;

#[test]
fn nr_limits_are_the_builders_and_bound_what_it_accepts() {
    assert_eq!(B::MAX_REPLICAS, 4096);
    assert_eq!(B::MAX_LOG_CAPACITY, 1 << 28);
    assert_eq!(B::MAX_THREADS_PER_REPLICA, 1024);
    assert_eq!(B::DEFAULT_THREADS_PER_REPLICA, 64);
    assert_eq!(B::DEFAULT_LOG_CAPACITY, 1 << 12);
    // The hidden old module says the same.
    assert_eq!(noderep::nr::config::MAX_REPLICAS, B::MAX_REPLICAS);
    assert_eq!(noderep::nr::config::MAX_LOG_CAPACITY, B::MAX_LOG_CAPACITY);
    assert_eq!(
        noderep::nr::config::MAX_THREADS_PER_REPLICA,
        B::MAX_THREADS_PER_REPLICA
    );
    assert_eq!(
        noderep::nr::config::DEFAULT_THREADS_PER_REPLICA,
        B::DEFAULT_THREADS_PER_REPLICA
    );
    assert_eq!(
        noderep::nr::config::DEFAULT_LOG_CAPACITY,
        B::DEFAULT_LOG_CAPACITY
    );

    let one = || B::new().replicas(ReplicaPolicy::Fixed(1));
    let at_limit = one()
        .max_threads_per_replica(B::MAX_THREADS_PER_REPLICA)
        .build(|_| Counter::default());
    assert!(at_limit.is_ok(), "{:?}", at_limit.err());
    match one()
        .max_threads_per_replica(B::MAX_THREADS_PER_REPLICA + 1)
        .build(|_| Counter::default())
    {
        Err(NrError::TooManySlots { asked, max, .. }) => {
            assert_eq!(
                (asked, max),
                (B::MAX_THREADS_PER_REPLICA + 1, B::MAX_THREADS_PER_REPLICA)
            );
        }
        other => panic!("one slot past the limit must be refused: {:?}", other.err()),
    }
    match B::new()
        .replicas(ReplicaPolicy::Fixed(B::MAX_REPLICAS + 1))
        .build(|_| Counter::default())
    {
        Err(NrError::TooLarge { asked, max, .. }) => {
            assert_eq!((asked, max), (B::MAX_REPLICAS + 1, B::MAX_REPLICAS));
        }
        other => panic!(
            "one replica past the limit must be refused: {:?}",
            other.err()
        ),
    }
    match one()
        .log_capacity(B::MAX_LOG_CAPACITY + 1)
        .build(|_| Counter::default())
    {
        Err(NrError::TooLarge { asked, max, .. }) => {
            assert_eq!((asked, max), (B::MAX_LOG_CAPACITY + 1, B::MAX_LOG_CAPACITY));
        }
        other => panic!("a log past the limit must be refused: {:?}", other.err()),
    }
}

#[test]
fn the_lane_limit_is_the_lane_builders() {
    type L = LanesBuilder<Counter>;
    assert_eq!(L::MAX_LANES, 32);
    assert_eq!(noderep::nr::lanes::MAX_LANES, L::MAX_LANES);
    let fixed = || B::new().replicas(ReplicaPolicy::Fixed(1));
    let at_limit = L::new(fixed())
        .lanes(L::MAX_LANES)
        .build(|_, _| Counter::default());
    assert!(at_limit.is_ok(), "{:?}", at_limit.err());
    match L::new(fixed())
        .lanes(L::MAX_LANES + 1)
        .build(|_, _| Counter::default())
    {
        Err(LanesError::TooManyLanes { asked, max }) => {
            assert_eq!((asked, max), (L::MAX_LANES + 1, L::MAX_LANES));
        }
        other => panic!("one lane past the limit must be refused: {:?}", other.err()),
    }
}

#[test]
fn runq_limits_are_the_builders_and_bound_what_it_accepts() {
    assert_eq!(RunqBuilder::MAX_QUEUES, 1 << 12);
    assert_eq!(RunqBuilder::MAX_BACKUPS, 4);
    assert_eq!(RunqBuilder::MAX_DURATION.as_secs(), 3600);
    assert_eq!(RunqBuilder::MAX_RING_CAPACITY, 1 << 24);
    assert_eq!(RunqBuilder::MAX_TASK_CAPACITY, u32::MAX as usize);
    assert_eq!(noderep::runq::MAX_QUEUES, RunqBuilder::MAX_QUEUES);
    assert_eq!(noderep::runq::MAX_BACKUPS, RunqBuilder::MAX_BACKUPS);
    assert_eq!(noderep::runq::MAX_DURATION, RunqBuilder::MAX_DURATION);
    assert_eq!(
        noderep::runq::MAX_RING_CAPACITY,
        RunqBuilder::MAX_RING_CAPACITY
    );
    assert_eq!(
        noderep::runq::MAX_TASK_CAPACITY,
        RunqBuilder::MAX_TASK_CAPACITY
    );

    let cores = RunqBuilder::MAX_BACKUPS + 2;
    let small = || {
        RunQueues::builder()
            .cores(cores)
            .task_capacity(64)
            .ring_capacity(64)
    };
    let at_limit = small().backups(RunqBuilder::MAX_BACKUPS).build();
    assert!(at_limit.is_ok(), "{:?}", at_limit.err());
    for refused in [
        small().backups(RunqBuilder::MAX_BACKUPS + 1).build(),
        small()
            .lease(RunqBuilder::MAX_DURATION + std::time::Duration::from_nanos(1))
            .build(),
        small()
            .ring_capacity(RunqBuilder::MAX_RING_CAPACITY * 2)
            .build(),
        RunQueues::builder()
            .cores(RunqBuilder::MAX_QUEUES + 1)
            .task_capacity(64)
            .ring_capacity(4)
            .build(),
    ] {
        match refused {
            Err(RunqError::BadConfig(why)) => assert!(!why.is_empty()),
            other => panic!("a value past its limit must be refused: {:?}", other.err()),
        }
    }
}

#[test]
fn cpulists_and_the_topology_variable_are_topologys() {
    assert_eq!(Topology::ENV_VAR, "NODEREP_TOPOLOGY");
    assert_eq!(noderep::topology::TOPOLOGY_ENV, Topology::ENV_VAR);
    assert_eq!(
        Topology::parse_cpulist("0-3,8,10-11\n").unwrap(),
        [0, 1, 2, 3, 8, 10, 11]
    );
    assert_eq!(Topology::format_cpulist(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    for bad in ["3-1", "a-b", "1,x"] {
        match Topology::parse_cpulist(bad) {
            Err(e @ TopologyError::BadCpuList { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(bad) && msg.contains("0-3,8"), "{msg}");
            }
            other => panic!("{bad:?} must not parse: {other:?}"),
        }
        assert!(noderep::topology::parse_cpulist(bad).is_err());
    }
    for text in ["0-3,8", "5", "", "0,2-4"] {
        assert_eq!(
            noderep::topology::parse_cpulist(text).ok(),
            Topology::parse_cpulist(text).ok()
        );
    }
    assert_eq!(
        noderep::topology::format_cpulist(&[3, 4, 9]),
        Topology::format_cpulist(&[3, 4, 9])
    );
}

#[test]
fn the_one_page_node_query_is_nodes_of_pages_for_one_address() {
    let buf = vec![1u8; 1 << 16];
    let addr = buf.as_ptr() as usize;
    let one = nodes_of_pages(&[addr]).and_then(|n| n[0]);
    assert_eq!(noderep::topology::node_of_address(addr), one);
    if let Some(nodes) = nodes_of_pages(&[addr]) {
        // A touched page lies on a node the kernel knows.
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0].is_some(), "a touched page must be in memory");
    }
}

#[test]
fn the_block_checksum_is_crc32c_and_the_header_size_is_the_mirrors() {
    // The CRC-32C check value (RFC 3720, appendix B.4's standard test).
    assert_eq!(crc_fast::crc32_iscsi(b"123456789"), 0xE306_9283);
    assert_eq!(noderep::mirror::crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(Mirror::HEADER_SIZE, 32);
    assert_eq!(noderep::mirror::HEADER_SIZE, Mirror::HEADER_SIZE);
}

#[test]
fn the_amortised_fit_is_amortised_fits() {
    let pts = [(1.0, 3000.0), (4.0, 1500.0), (16.0, 1125.0)];
    let fit = AmortisedFit::fit(&pts).expect("three distinct batch sizes");
    assert!((fit.b - 1000.0).abs() < 1e-6 && (fit.a - 2000.0).abs() < 1e-6);
    assert_eq!(noderep::cost::fit_amortised(&pts).ok(), Some(fit));
    assert!(AmortisedFit::fit(&[(4.0, 1.0)]).is_err());
}
