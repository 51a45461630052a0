//! The timed loop: pinned threads, a warm-up, repetitions, one latency pass.
//!
//! # How it works
//!
//! One scoped thread per benchmark thread is pinned to its core, creates its
//! worker (registration happens there, so node-aware structures see the
//! thread's real CPU) and then runs *phases*: a warm-up, `reps` throughput
//! repetitions and one latency repetition, on the same instance. The main
//! thread opens each phase with a barrier, sleeps for the phase's duration,
//! raises a stop flag, and waits for every worker to report. Workers walk
//! their pre-generated stream round-robin and look at the stop flag once
//! every [`CHUNK`] operations (one relaxed load of a line nobody writes
//! during the phase).
//!
//! Throughput repetitions take no clock reading per operation. The latency
//! repetition reads the clock once per operation and records the distance to
//! the previous reading in an HDR histogram: every operation of that
//! repetition is measured (so its maximum is a real maximum, not a sample),
//! and each figure includes one clock read plus one histogram record
//! (measured and printed at start-up); nothing is subtracted. The clock is
//! the time-stamp counter on x86-64 (about half the cost of `Instant::now()`
//! in a VM; converted to nanoseconds with a ratio calibrated against
//! `Instant` at start-up) and `Instant` elsewhere.
//!
//! Each worker also counts the involuntary context switches it suffered
//! during the latency repetition (`getrusage(RUSAGE_THREAD)`): a maximum of
//! several milliseconds that comes with a preemption is the scheduler's
//! doing, not the structure's. To tell the two apart per operation, a worker
//! that sees an operation take longer than [`SLOW_NS`] samples its scheduling
//! right then (two system calls, only for those rare operations, and taken
//! out of the next operation's time) and compares with its previous sample:
//! the slow operation was *preempted* if its involuntary switch count went
//! up, or if it lost the CPU without sleeping — its CPU time advanced at
//! least half the operation's duration less than the wall clock, with no
//! voluntary switch. The second case is the hypervisor stealing the vCPU
//! (in a KVM guest with paravirtual steal accounting, stolen time is not
//! charged to the thread), which the guest cannot see as a switch. A
//! thread that sleeps or yields to another task (a voluntary switch) is
//! never excused: that is the structure's own way of waiting. A slow operation of another
//! thread that overlaps a preempted one in time may have been waiting for
//! it (a lock holder, a combiner); both kinds are *preemption-delayed*. The
//! report gives the maximum over all operations and the maximum over the
//! others ([`Measurement::max_unpreempted_ns`]).

use crate::systems::{System, Worker};
use crate::workload::Op;
use hdrhistogram::Histogram;
use noderep::topology::Core;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

/// Operations between two looks at the stop flag.
pub const CHUNK: usize = 64;

/// Latency above which an operation is checked for preemption (module
/// docs): far above any p99.9 seen here, far below the 1 ms target.
pub const SLOW_NS: u64 = 20_000;

/// One operation slower than [`SLOW_NS`], in raw clock ticks.
#[derive(Debug, Clone, Copy)]
struct SlowOp {
    thread: usize,
    start: u64,
    end: u64,
    nanos: u64,
    /// The thread's involuntary switch count went up since its last look.
    preempted: bool,
}

/// How long and how often to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Warm-up phase (discarded).
    pub warmup: Duration,
    /// Length of each throughput repetition.
    pub rep: Duration,
    /// Number of throughput repetitions.
    pub reps: usize,
    /// Length of the latency repetition (zero: none).
    pub latency: Duration,
}

/// What one (workload, implementation, thread count) cell measured.
#[derive(Debug, Clone)]
pub struct Measurement {
    /// Throughput of each repetition, operations per second.
    pub reps: Vec<f64>,
    /// The same, per thread CPU time instead of wall time (sum over threads
    /// of operations / CPU seconds the thread got): what the throughput
    /// would be if no other process took the CPUs away.
    pub cpu_reps: Vec<f64>,
    /// Latencies of the latency repetition, in nanoseconds.
    pub latency: Option<Histogram<u64>>,
    /// Throughput during the latency repetition (clock per op included).
    pub latency_rep_ops: f64,
    /// Involuntary context switches of the workers during the latency
    /// repetition (summed over threads).
    pub preemptions: u64,
    /// Maximum latency over the operations that were neither preempted nor
    /// overlapping a preempted operation of another worker (module docs).
    pub max_unpreempted_ns: u64,
    /// Operations slower than [`SLOW_NS`] / those of them delayed by a
    /// preemption, in the latency repetition.
    pub slow_ops: (u64, u64),
    /// Sum of the responses (profiling mode only; keeps the work alive).
    pub checksum: u64,
    /// Longest time the main thread waited for workers to notice the stop
    /// flag (a stuck operation shows up here).
    pub max_stop_wait: Duration,
}

impl Measurement {
    /// Median of the repetitions.
    pub fn median(&self) -> f64 {
        median(&self.reps)
    }

    /// Median of the CPU-time repetitions.
    pub fn cpu_median(&self) -> f64 {
        median(&self.cpu_reps)
    }
}

/// The median of `reps` (0 for none).
pub fn median(reps: &[f64]) -> f64 {
    {
        let mut v = reps.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
}

impl Measurement {
    /// Spread of the repetitions: (max - min) / median.
    pub fn spread(&self) -> f64 {
        let min = self.reps.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.reps.iter().copied().fold(0.0, f64::max);
        let m = self.median();
        if m > 0.0 && min.is_finite() {
            (max - min) / m
        } else {
            0.0
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Runs every phase of one cell. `streams[t]` is thread `t`'s operation
/// stream (length a power of two) and `places[t]` its core.
pub fn run<S: System>(
    sys: &S,
    streams: &[Vec<Op>],
    places: &[Core],
    set: &Settings,
    mut on_phase: impl FnMut(),
) -> Measurement {
    let threads = streams.len();
    let mut phases: Vec<(Duration, bool)> = vec![(set.warmup, false)];
    phases.extend((0..set.reps).map(|_| (set.rep, false)));
    if !set.latency.is_zero() {
        phases.push((set.latency, true));
    }
    let start = Barrier::new(threads + 1);
    let stop = AtomicBool::new(false);
    let done = AtomicUsize::new(0);
    // (phase, operations, wall seconds, CPU seconds) per worker and phase.
    let results: Mutex<Vec<(usize, u64, f64, f64)>> = Mutex::new(Vec::new());
    let hist = Mutex::new(new_histogram());
    let preempt = AtomicU64::new(0);
    // Per worker: the slow operations of its latency pass, and the maximum
    // latency of its other operations.
    let slow: Mutex<(Vec<SlowOp>, u64)> = Mutex::new((Vec::new(), 0));
    let clock = Clock::get();
    let mut max_stop_wait = Duration::ZERO;

    std::thread::scope(|s| {
        for (t, ops) in streams.iter().enumerate() {
            let (start, stop, done, results, hist, phases, preempt, slow) = (
                &start, &stop, &done, &results, &hist, &phases, &preempt, &slow,
            );
            let core = places[t % places.len()];
            s.spawn(move || {
                // Best effort: an unpinned thread still measures something,
                // and the report prints the placement it asked for.
                let _ = noderep::topology::pin_to_cpu(core.os_cpu);
                let mut worker = sys.worker(core);
                let mask = ops.len() - 1;
                let mut pos = (t * 7919) & mask;
                let mut local = new_histogram();
                for (phase, &(_, timed)) in phases.iter().enumerate() {
                    start.wait();
                    let t0 = Instant::now();
                    let c0 = thread_cpu_secs();
                    let mut n = 0u64;
                    let mut sum = 0u64;
                    let sample0 = timed.then(SchedSample::now);
                    let mut slow_ops: Vec<SlowOp> = Vec::new();
                    let mut fast_max = 0u64;
                    if timed {
                        let mut seen = (sample0.expect("sampled when timed"), clock.now());
                        let mut prev = clock.now();
                        loop {
                            for _ in 0..CHUNK {
                                sum = sum.wrapping_add(worker.exec(ops[pos]));
                                pos = (pos + 1) & mask;
                                let now = clock.now();
                                let nanos = clock.nanos(now.wrapping_sub(prev));
                                local.saturating_record(nanos);
                                if nanos > SLOW_NS {
                                    let sample = SchedSample::now();
                                    let wall = clock.nanos(now.wrapping_sub(seen.1));
                                    slow_ops.push(SlowOp {
                                        thread: t,
                                        start: prev,
                                        end: now,
                                        nanos,
                                        preempted: sample.preempted_since(&seen.0, wall, nanos),
                                    });
                                    seen = (sample, now);
                                    // Keep the system call out of the next
                                    // operation's time.
                                    prev = clock.now();
                                } else {
                                    fast_max = fast_max.max(nanos);
                                    prev = now;
                                }
                            }
                            n += CHUNK as u64;
                            // Relaxed: a hint to stop; the barrier and the
                            // results mutex carry every ordering that matters.
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    } else {
                        loop {
                            for _ in 0..CHUNK {
                                sum = sum.wrapping_add(worker.exec(ops[pos]));
                                pos = (pos + 1) & mask;
                            }
                            n += CHUNK as u64;
                            // Relaxed: see above.
                            if stop.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    let secs = t0.elapsed().as_secs_f64();
                    let cpu = thread_cpu_secs() - c0;
                    black_box(sum);
                    results
                        .lock()
                        .expect("no worker panics")
                        .push((phase, n, secs, cpu));
                    if timed {
                        preempt.fetch_add(
                            SchedSample::now()
                                .involuntary
                                .saturating_sub(sample0.map_or(0, |s| s.involuntary)),
                            Ordering::Relaxed,
                        );
                        let mut all = slow.lock().expect("no worker panics");
                        all.0.extend(slow_ops);
                        all.1 = all.1.max(fast_max);
                        hist.lock()
                            .expect("no worker panics")
                            .add(&local)
                            .expect("same histogram bounds");
                    }
                    // Release: our results are pushed; pairs with the Acquire
                    // load in the main thread's wait.
                    done.fetch_add(1, Ordering::Release);
                }
                drop(worker);
            });
        }
        for (phase, &(len, _)) in phases.iter().enumerate() {
            // Relaxed: reset before the barrier, which orders it before the
            // workers' loads.
            stop.store(false, Ordering::Relaxed);
            start.wait();
            std::thread::sleep(len);
            stop.store(true, Ordering::Relaxed);
            let asked = Instant::now();
            let mut warned = false;
            // Acquire: pairs with the workers' Release increments.
            while done.load(Ordering::Acquire) < threads * (phase + 1) {
                std::thread::sleep(Duration::from_micros(200));
                if !warned && asked.elapsed() > Duration::from_secs(10) {
                    eprintln!("warning: a worker has not finished its operation 10 s after the stop signal (stalled?)");
                    warned = true;
                }
            }
            max_stop_wait = max_stop_wait.max(asked.elapsed());
            on_phase();
        }
    });

    let results = results.into_inner().expect("no worker panics");
    let per_phase = |p: usize| -> f64 {
        results
            .iter()
            .filter(|r| r.0 == p)
            .map(|&(_, n, secs, _)| n as f64 / secs.max(1e-9))
            .sum()
    };
    let per_phase_cpu = |p: usize| -> f64 {
        results
            .iter()
            .filter(|r| r.0 == p)
            .map(|&(_, n, _, cpu)| n as f64 / cpu.max(1e-9))
            .sum()
    };
    let (slow_ops, fast_max) = slow.into_inner().expect("no worker panics");
    let delayed = |o: &SlowOp| {
        o.preempted
            || slow_ops
                .iter()
                .any(|p| p.preempted && p.thread != o.thread && p.start < o.end && o.start < p.end)
    };
    let n_delayed = slow_ops.iter().filter(|o| delayed(o)).count() as u64;
    let max_unpreempted_ns = slow_ops
        .iter()
        .filter(|o| !delayed(o))
        .map(|o| o.nanos)
        .fold(fast_max, u64::max);
    let reps = (1..=set.reps).map(per_phase).collect();
    let cpu_reps = (1..=set.reps).map(per_phase_cpu).collect();
    let timed = !set.latency.is_zero();
    Measurement {
        reps,
        cpu_reps,
        latency: timed.then(|| hist.into_inner().expect("no worker panics")),
        latency_rep_ops: if timed { per_phase(set.reps + 1) } else { 0.0 },
        preemptions: preempt.into_inner(),
        max_unpreempted_ns,
        slow_ops: (slow_ops.len() as u64, n_delayed),
        checksum: 0,
        max_stop_wait,
    }
}

/// Profiling mode: `n` operations of `ops` on the calling thread, untimed.
pub fn count_ops<S: System>(sys: &S, ops: &[Op], core: Core, n: u64) -> Measurement {
    let _ = noderep::topology::pin_to_cpu(core.os_cpu);
    let mut worker = sys.worker(core);
    let mask = ops.len() - 1;
    let mut sum = 0u64;
    for i in 0..n as usize {
        sum = sum.wrapping_add(worker.exec(ops[i & mask]));
    }
    Measurement {
        reps: Vec::new(),
        cpu_reps: Vec::new(),
        latency: None,
        latency_rep_ops: 0.0,
        preemptions: 0,
        max_unpreempted_ns: 0,
        slow_ops: (0, 0),
        checksum: black_box(sum),
        max_stop_wait: Duration::ZERO,
    }
}

/// CPU time the calling thread has used, in seconds.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc == 0 {
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    } else {
        0.0
    }
}

/// What the scheduler did to the calling thread so far.
#[derive(Debug, Clone, Copy)]
struct SchedSample {
    involuntary: u64,
    voluntary: u64,
    cpu_ns: u64,
}

impl SchedSample {
    fn now() -> Self {
        // SAFETY: an all-zero rusage is a valid value (plain integers).
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage writes one rusage through the valid pointer.
        let ok = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } == 0;
        Self {
            involuntary: if ok { ru.ru_nivcsw as u64 } else { 0 },
            voluntary: if ok { ru.ru_nvcsw as u64 } else { 0 },
            cpu_ns: (thread_cpu_secs() * 1e9) as u64,
        }
    }

    /// Whether an operation of `op_ns` that ended now was preempted, given
    /// the sample `before` taken `wall_ns` ago (module docs).
    fn preempted_since(&self, before: &SchedSample, wall_ns: u64, op_ns: u64) -> bool {
        let cpu = self.cpu_ns.saturating_sub(before.cpu_ns);
        let lost = wall_ns.saturating_sub(cpu);
        self.involuntary > before.involuntary
            || (self.voluntary == before.voluntary && lost >= op_ns / 2)
    }
}

/// The latency clock: raw ticks and their conversion to nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Nanoseconds per tick (1.0 for the `Instant` fallback).
    ns_per_tick: f64,
    /// Which clock: for the report.
    pub name: &'static str,
}

static CLOCK: OnceLock<Clock> = OnceLock::new();
static EPOCH: OnceLock<Instant> = OnceLock::new();

impl Clock {
    /// The process-wide clock, calibrated on first use (about 50 ms).
    pub fn get() -> Clock {
        *CLOCK.get_or_init(|| {
            if cfg!(target_arch = "x86_64")
                && std::fs::read_to_string("/proc/cpuinfo")
                    .is_ok_and(|c| c.contains("constant_tsc"))
            {
                let raw = Clock {
                    ns_per_tick: 1.0,
                    name: "rdtsc",
                };
                let (t0, c0) = (Instant::now(), raw.now());
                std::thread::sleep(Duration::from_millis(50));
                let (t1, c1) = (Instant::now(), raw.now());
                let ticks = c1.wrapping_sub(c0).max(1) as f64;
                Clock {
                    ns_per_tick: (t1 - t0).as_nanos() as f64 / ticks,
                    name: "rdtsc (invariant TSC, calibrated against Instant)",
                }
            } else {
                Clock {
                    ns_per_tick: 0.0,
                    name: "Instant::now()",
                }
            }
        })
    }

    /// A reading in ticks.
    #[inline(always)]
    pub fn now(&self) -> u64 {
        #[cfg(target_arch = "x86_64")]
        if self.ns_per_tick != 0.0 {
            // SAFETY: rdtsc has no preconditions; the CPU has an invariant
            // TSC (checked when the clock was chosen).
            return unsafe { core::arch::x86_64::_rdtsc() };
        }
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    /// Ticks to nanoseconds.
    #[inline(always)]
    pub fn nanos(&self, ticks: u64) -> u64 {
        if self.ns_per_tick == 0.0 {
            ticks
        } else {
            (ticks as f64 * self.ns_per_tick) as u64
        }
    }
}

/// Cost of one clock reading plus one histogram record, in nanoseconds
/// (what every latency figure includes).
pub fn clock_overhead_ns() -> f64 {
    let clock = Clock::get();
    let mut h = new_histogram();
    let n = 200_000;
    let t0 = Instant::now();
    let mut prev = clock.now();
    for _ in 0..n {
        let now = clock.now();
        h.saturating_record(clock.nanos(now.wrapping_sub(prev)));
        prev = now;
    }
    t0.elapsed().as_nanos() as f64 / n as f64
}
