//! NUMA behaviour checked against a real kernel with several real nodes:
//! node discovery, pinning, one replica per node, page placement of every
//! replica, and linearizability with threads on every node.
//!
//! The development and CI machines have one NUMA node, so these tests run
//! inside an emulated NUMA machine: `scripts/numa-vm.sh 2|4|memoryless`
//! boots a Debian kernel under qemu with that layout and runs this test
//! binary as the guest's workload, with `NODEREP_NUMA_GUEST` naming a file
//! that says what qemu was told (nodes, their CPUs, which have memory, the
//! distances). On a real machine with two or more nodes the tests run
//! without the file and take the kernel's sysfs as the expectation. On a
//! one-node machine without the variable they print why they skip and pass.
//!
//! # How it works
//!
//! Placement is read back from the kernel with move_pages(2) without target
//! nodes (`topology::nodes_of_pages`), which reports the node of each page
//! without touching it. A replica's memory must be on its own node, or, for a node
//! without memory, on the nearest node that has memory (what the kernel's
//! first-touch allocation does). The `replicas_on_node0` mutant builds every
//! replica on node 0 and must make `replicas_live_on_their_nodes` fail
//! (`scripts/numa-vm-mutant.sh`).

#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "linearizability/models.rs"]
mod models;

use common::history::{Clock, StartLine, ThreadLog};
use common::lincheck::{check_with_budget, render, verify_linearization, Verdict};
use models::{NrMap, Subject};
use noderep::topology::{
    current_cpu, local_memory_node, move_to_node, nodes_of_pages, pin_to_cpu, Topology,
    TopologySource,
};
use noderep::{Dispatch, NrBuilder, ReplicaPolicy};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::Path;

/// The variable the guest's init sets to the expectation file.
const GUEST_ENV: &str = "NODEREP_NUMA_GUEST";
const SYSFS: &str = "/sys/devices/system/node";

/// A NUMA layout: per kernel node id, its CPUs and whether it has memory,
/// and the distance of every pair of nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Layout {
    nodes: BTreeMap<usize, (Vec<usize>, bool)>,
    distances: BTreeMap<(usize, usize), u32>,
}

impl Layout {
    /// Parses the file written by `scripts/numa-vm.sh`: lines
    /// `node N cpus LIST|- mem yes|no` and `distance A B VALUE` (A < B; the
    /// reverse and the local distance 10 are implied).
    fn parse(text: &str) -> Result<Self, String> {
        let mut nodes = BTreeMap::new();
        let mut distances = BTreeMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let w: Vec<&str> = line.split_whitespace().collect();
            let num = |s: &str| {
                s.parse::<usize>()
                    .map_err(|_| format!("bad number in {line:?}"))
            };
            match w.as_slice() {
                ["node", n, "cpus", cpus, "mem", mem] => {
                    let cpus = if *cpus == "-" {
                        Vec::new()
                    } else {
                        Topology::parse_cpulist(cpus).map_err(|e| format!("bad CPU list in {line:?}: {e}"))?
                    };
                    nodes.insert(num(n)?, (cpus, *mem == "yes"));
                }
                ["distance", a, b, d] => {
                    let (a, b, d) = (num(a)?, num(b)?, num(d)? as u32);
                    distances.insert((a, b), d);
                    distances.insert((b, a), d);
                }
                _ => return Err(format!("unknown line {line:?}: expected `node N cpus LIST mem yes|no` or `distance A B D`")),
            }
        }
        for &n in nodes.keys() {
            distances.insert((n, n), 10);
        }
        Ok(Self { nodes, distances })
    }

    /// What the kernel reports under `/sys/devices/system/node`.
    fn from_kernel() -> Result<Self, String> {
        let read = |p: &str| {
            std::fs::read_to_string(Path::new(SYSFS).join(p))
                .map_err(|e| format!("cannot read {SYSFS}/{p}: {e}"))
        };
        let list = |p: &str| {
            read(p).and_then(|t| {
                Topology::parse_cpulist(&t).map_err(|e| format!("bad list in {p}: {e}"))
            })
        };
        let online = list("online")?;
        let with_memory = list("has_memory")?;
        let mut nodes = BTreeMap::new();
        let mut distances = BTreeMap::new();
        for &n in &online {
            let cpus = list(&format!("node{n}/cpulist"))?;
            nodes.insert(n, (cpus, with_memory.contains(&n)));
            let row = read(&format!("node{n}/distance"))?;
            for (&m, d) in online.iter().zip(row.split_whitespace()) {
                let d = d
                    .parse()
                    .map_err(|_| format!("bad distance {d:?} of node{n}"))?;
                distances.insert((n, m), d);
            }
        }
        Ok(Self { nodes, distances })
    }

    /// Nodes that have CPUs, in kernel id order: the nodes a topology
    /// lists, and the replicas of `ReplicaPolicy::PerNode`.
    fn cpu_nodes(&self) -> Vec<(usize, Vec<usize>)> {
        self.nodes
            .iter()
            .filter(|(_, (cpus, _))| !cpus.is_empty())
            .map(|(&n, (cpus, _))| (n, cpus.clone()))
            .collect()
    }

    /// Where the kernel puts memory first touched on node `n`: `n` itself
    /// if it has memory, else the nearest node with memory (lowest id on a
    /// tie).
    fn memory_node_of(&self, n: usize) -> usize {
        if self.nodes[&n].1 {
            return n;
        }
        self.nodes
            .iter()
            .filter(|(_, (_, mem))| *mem)
            .map(|(&m, _)| m)
            .min_by_key(|&m| (self.distances[&(n, m)], m))
            .expect("some node has memory")
    }
}

/// The layout these tests expect, or `None` (after saying why) when this is
/// a one-node machine outside the guest.
fn expected() -> Option<Layout> {
    if let Ok(path) = std::env::var(GUEST_ENV) {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{GUEST_ENV}={path:?} cannot be read: {e}"));
        return Some(Layout::parse(&text).unwrap_or_else(|e| panic!("{path}: {e}")));
    }
    match Layout::from_kernel() {
        Ok(k) if k.cpu_nodes().len() >= 2 => Some(k),
        _ => {
            eprintln!(
                "skipped: this machine has fewer than 2 NUMA nodes with CPUs; \
                 run scripts/numa-vm.sh 2 (or 4, memoryless) to run these tests on emulated nodes"
            );
            None
        }
    }
}

/// The node of the page holding `addr`, read without touching it.
fn page_node(addr: usize) -> Option<usize> {
    nodes_of_pages(&[addr]).expect("move_pages answers on a NUMA kernel")[0]
}

#[test]
fn the_kernel_has_the_layout_qemu_was_given() {
    let Some(expected) = expected() else { return };
    let kernel = Layout::from_kernel().expect("sysfs describes the nodes");
    println!("kernel nodes (id: cpus, memory): {:?}", kernel.nodes);
    println!("kernel distances: {:?}", kernel.distances);
    assert_eq!(
        kernel, expected,
        "the kernel does not see the layout the VM was given"
    );
}

#[test]
fn topology_discovery_matches_the_kernel() {
    let Some(expected) = expected() else { return };
    let want = expected.cpu_nodes();
    let detected = Topology::detect().expect("detection without NODEREP_TOPOLOGY");
    let sysfs = Topology::from_sysfs(Path::new(SYSFS)).expect("sysfs has nodes");
    println!("detected: {detected}");
    let expected_source = if cfg!(feature = "hwloc") {
        TopologySource::Hwloc
    } else {
        TopologySource::Sysfs
    };
    assert_eq!(detected.source(), expected_source);
    for t in [&detected, &sysfs] {
        let got: Vec<(usize, Vec<usize>)> = t
            .nodes()
            .iter()
            .map(|n| (n.os_node, n.cores.iter().map(|c| c.os_cpu).collect()))
            .collect();
        assert_eq!(
            got,
            want,
            "nodes with CPUs and their CPUs ({:?})",
            t.source()
        );
        for (i, node) in t.nodes().iter().enumerate() {
            assert_eq!(node.id, i);
            assert!(node.cores.iter().all(|c| c.node == i));
        }
    }
}

#[test]
fn pinned_threads_run_on_their_nodes_cpus() {
    let Some(expected) = expected() else { return };
    for (os_node, cpus) in expected.cpu_nodes() {
        for cpu in cpus {
            let loc = std::thread::spawn(move || {
                pin_to_cpu(cpu).expect("every CPU of the guest is allowed");
                current_cpu().expect("getcpu works")
            })
            .join()
            .unwrap();
            assert_eq!((loc.cpu, loc.node), (cpu, os_node), "pinned to CPU {cpu}");
        }
    }
}

/// A replica whose data owns a heap buffer, so that the test can find both
/// the replica's own pages and the pages its `make` closure allocated.
struct Blob(Vec<u64>);

impl Dispatch for Blob {
    type ReadOperation<'a> = ();
    type WriteOperation = u64;
    type Response = u64;
    fn dispatch(&self, _: ()) -> u64 {
        self.0[self.0.len() - 1]
    }
    fn dispatch_mut(&mut self, v: u64) -> u64 {
        let last = self.0.len() - 1;
        std::mem::replace(&mut self.0[last], v)
    }
}

#[test]
fn per_node_policy_builds_one_replica_per_node() {
    let Some(expected) = expected() else { return };
    let nr = NrBuilder::new()
        .replicas(ReplicaPolicy::PerNode)
        .build(|_| Blob(vec![0; 8]))
        .expect("a valid configuration");
    assert_eq!(nr.num_replicas(), expected.cpu_nodes().len());
    assert_eq!(
        NrBuilder::new()
            .replicas(ReplicaPolicy::PerCore)
            .build(|_| Blob(vec![0; 8]))
            .unwrap()
            .num_replicas(),
        expected
            .cpu_nodes()
            .iter()
            .map(|(_, c)| c.len())
            .sum::<usize>()
    );
}

#[test]
fn replicas_live_on_their_nodes() {
    let Some(expected) = expected() else { return };
    let nodes = expected.cpu_nodes();
    // Many instances in a row, after other tests' threads have come and
    // gone (their allocator arenas are handed to new threads with pages
    // already placed), with small and large buffers in `D`, built either by
    // plain first touch or by a `make` that also moves its buffer to the
    // node it runs on (what the NrBuilder docs tell a `D` with a large heap
    // to do). The rounds alternate, so that each kind of build meets arenas
    // that the other one, and the other node, used last.
    let mut first_touch = [0usize; 2];
    let mut moved = [0usize; 2];
    for round in 0..16 {
        let words = if round % 4 < 2 { 512 } else { 1 << 17 };
        let move_heap = round % 2 == 1;
        let nr = NrBuilder::new()
            .replicas(ReplicaPolicy::PerNode)
            .build(|r| {
                // Not zero: `vec![0; n]` is calloc, whose fresh pages stay untouched.
                let blob = Blob(vec![r as u64 + 1; words]);
                if move_heap {
                    let node = local_memory_node().expect("the kernel reports this thread's node");
                    move_to_node(&[(blob.0.as_ptr() as usize, words * 8)], node)
                        .expect("move_pages answers");
                }
                blob
            })
            .expect("a valid configuration");
        let token = nr.register_on(0).unwrap();
        let buffers = nr
            .sync_and_inspect(&token, |_, b| (b.0.as_ptr() as usize, b.0.len() * 8))
            .unwrap();
        for (r, (os_node, cpus)) in nodes.iter().enumerate() {
            let want = expected.memory_node_of(*os_node);
            let data = nr.replica_data_addr(r).unwrap() as usize;
            let slots = nr.replica_slots_addr(r).unwrap() as usize;
            let (data_node, slots_node) = (page_node(data), page_node(slots));
            let (buf, len) = buffers[r];
            let pages: Vec<usize> = (buf..buf + len).step_by(4096).collect();
            let on_node = nodes_of_pages(&pages)
                .unwrap()
                .iter()
                .filter(|&&n| n == Some(want))
                .count();
            let tally = if move_heap {
                &mut moved
            } else {
                &mut first_touch
            };
            tally[0] += on_node;
            tally[1] += pages.len();
            println!(
                "round {round}: replica {r} of node {os_node} (cpus {cpus:?}): replica and data on \
                 {data_node:?}, thread slots on {slots_node:?}, {on_node} of {} pages of its \
                 {} KiB heap buffer on node {want} ({})",
                pages.len(),
                len / 1024,
                if move_heap { "moved by make" } else { "first touch only" }
            );
            // The replica (with `D` inline), its slots and reader flags are
            // in pages of their own, which the builder moves: always local.
            assert_eq!(
                data_node,
                Some(want),
                "round {round}: replica {r} (node {os_node}) at {data:#x} is not on node {want}"
            );
            assert_eq!(
                slots_node,
                Some(want),
                "round {round}: the thread slots of replica {r} (node {os_node}) at {slots:#x} are not on node {want}"
            );
            // `D`'s own heap: the builder cannot see it. First touch alone
            // is not enough (glibc keeps the top of a thread's arena, with
            // the pages another node's thread touched, when trimming), so
            // only a heap that `make` moved must be local; its two ends may
            // share a page with another thread's live allocations, which a
            // move by that thread's own `make` can take away.
            if move_heap {
                assert!(
                    on_node + 2 >= pages.len(),
                    "round {round}: only {on_node} of {} pages of replica {r}'s heap buffer are on \
                     node {want}, although `make` moved them there",
                    pages.len()
                );
            }
        }
    }
    println!(
        "heap buffers of D on their replica's node: first touch only {} of {} pages, moved by \
         make {} of {} pages",
        first_touch[0], first_touch[1], moved[0], moved[1]
    );
}

#[test]
fn first_touch_places_a_page_on_the_touching_threads_node() {
    let Some(expected) = expected() else { return };
    for (os_node, cpus) in expected.cpu_nodes() {
        let cpu = cpus[cpus.len() - 1];
        let want = expected.memory_node_of(os_node);
        let (before, after, local) = std::thread::spawn(move || {
            pin_to_cpu(cpu).unwrap();
            // 64 MiB, beyond glibc's largest heap allocation: a fresh
            // mapping, whose page at 512 KiB is untouched.
            let mut buf: Vec<u8> = Vec::with_capacity(64 << 20);
            let page = buf.as_ptr() as usize + (512 << 10);
            let node_of = |addr: usize| nodes_of_pages(&[addr]).and_then(|n| n[0]);
            let before = node_of(page);
            buf.resize((512 << 10) + 1, 1);
            (before, node_of(page), local_memory_node())
        })
        .join()
        .unwrap();
        println!("CPU {cpu} of node {os_node}: an untouched page is on {before:?}, touched on {after:?}; local memory node {local:?}");
        assert_eq!(before, None, "a page never touched has no node");
        assert_eq!(
            after,
            Some(want),
            "first touch from CPU {cpu} (node {os_node})"
        );
        assert_eq!(local, Some(want), "local_memory_node on CPU {cpu}");
    }
}

#[test]
fn threads_register_with_the_replica_of_their_node() {
    let Some(expected) = expected() else { return };
    let nodes = expected.cpu_nodes();
    let nr = NrBuilder::new()
        .replicas(ReplicaPolicy::PerNode)
        .build(|_| Blob(vec![0; 8]))
        .unwrap();
    std::thread::scope(|s| {
        for (r, (os_node, cpus)) in nodes.iter().enumerate() {
            for &cpu in cpus {
                let nr = &nr;
                s.spawn(move || {
                    pin_to_cpu(cpu).unwrap();
                    let token = nr.register().unwrap();
                    assert_eq!(token.replica(), r, "a thread on CPU {cpu} (node {os_node})");
                    nr.execute_mut(cpu as u64, &token).unwrap();
                    nr.execute((), &token).unwrap();
                    let loc = current_cpu().unwrap();
                    assert_eq!(
                        (loc.cpu, loc.node),
                        (cpu, *os_node),
                        "still on its CPU and node"
                    );
                });
            }
        }
    });
}

/// Histories checked by the campaign, and operations per thread.
const HISTORIES: usize = 6;
const OPS_PER_THREAD: usize = 24;
/// Threads pinned to each CPU.
const THREADS_PER_CPU: usize = 2;

#[test]
fn a_hashmap_with_threads_on_every_node_is_linearizable() {
    let Some(expected) = expected() else { return };
    let cpus: Vec<(usize, usize)> = expected
        .cpu_nodes()
        .iter()
        .enumerate()
        .flat_map(|(r, (_, cpus))| cpus.iter().map(move |&c| (r, c)))
        .collect();
    let threads: Vec<(usize, usize)> = (0..THREADS_PER_CPU).flat_map(|_| cpus.clone()).collect();
    let most_per_replica = (0..expected.cpu_nodes().len())
        .map(|r| threads.iter().filter(|t| t.0 == r).count())
        .max()
        .unwrap();
    let mut ops = 0;
    for seed in 0..HISTORIES as u64 {
        let nr = NrBuilder::new()
            .replicas(ReplicaPolicy::PerNode)
            .log_capacity(64)
            .max_threads_per_replica(most_per_replica + 1)
            .build(|_| NrMap::new_replica())
            .unwrap();
        let clock = Clock::new();
        let start = StartLine::new(threads.len());
        let mut history: Vec<_> = std::thread::scope(|s| {
            let workers: Vec<_> = threads
                .iter()
                .enumerate()
                .map(|(t, &(r, cpu))| {
                    let (nr, clock, start) = (&nr, &clock, &start);
                    s.spawn(move || {
                        let pinned = pin_to_cpu(cpu);
                        let token = nr.register();
                        // Checked only past the start line: a thread that
                        // panicked before it would leave the others waiting.
                        start.wait();
                        pinned.unwrap();
                        let token = token.unwrap();
                        assert_eq!(token.replica(), r, "thread {t} on CPU {cpu}");
                        let mut rng = StdRng::seed_from_u64(seed * 1000 + t as u64);
                        let mut log = ThreadLog::new(clock, t);
                        for i in 0..OPS_PER_THREAD {
                            let op = NrMap::random_op(&mut rng, t, i);
                            log.record(op, |op| NrMap::execute(nr, &token, op).unwrap());
                        }
                        log.into_ops()
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|w| w.join().unwrap())
                .collect()
        });
        // A final snapshot from every replica.
        for r in 0..nr.num_replicas() {
            let token = nr.register_on(r).unwrap();
            let mut log = ThreadLog::new(&clock, threads.len() + r);
            log.record(NrMap::snapshot_op(), |op| {
                NrMap::execute(&nr, &token, op).unwrap()
            });
            history.extend(log.into_ops());
        }
        let token = nr.register_on(0).unwrap();
        let states = nr.sync_and_inspect(&token, |_, d| d.as_model()).unwrap();
        assert!(
            states.iter().all(|s| *s == states[0]),
            "replicas differ at quiescence"
        );
        let init = <NrMap as Subject>::Model::default();
        match check_with_budget(&init, &history, 5_000_000).unwrap() {
            Verdict::Linearizable { order, .. } => {
                let end = verify_linearization(&init, &history, &order).unwrap();
                assert_eq!(
                    end, states[0],
                    "seed {seed}: replicas end elsewhere than the witness"
                );
            }
            Verdict::NotLinearizable(c) => panic!(
                "seed {seed}: NON-linearizable history with threads on every node:\n{}",
                render(&history, Some(&c))
            ),
            Verdict::GaveUp { .. } => {
                panic!("seed {seed}: the checker gave up; make the histories smaller")
            }
        }
        ops += history.len();
    }
    println!(
        "{HISTORIES} histories of {} threads ({THREADS_PER_CPU} per CPU on {} CPUs, {} replicas) \
         linearizable; {ops} operations in all",
        threads.len(),
        cpus.len(),
        expected.cpu_nodes().len()
    );
}
