//! CPU-cost meter: how much processor time a piece of work really costs,
//! from hardware counters where the machine has them and CPU clocks where it
//! does not, and the amortisation model `cpu_per_write = b + a / batch`.
//!
//! Mirroring a write is cheap in latency terms but it is not free: every
//! copy means bookkeeping, a checksum, one more submission to a device queue
//! and one more completion to reap. This module lets [`crate::mirror`] (and
//! its cost report, `examples/mirror_cost.rs`) say exactly how much, on the
//! machine at hand, and how batching amortises it.
//!
//! # How it works
//!
//! * [`CostMeter::new`] tries to open two perf-event counters on the calling
//!   thread (`cycles` and `instructions`, user and kernel mode, or user mode
//!   only where `perf_event_paranoid` forbids kernel counting). If the
//!   kernel refuses — `ENOENT` (the event does not exist, typical of virtual
//!   machines), `EOPNOTSUPP`, `EACCES`/`EPERM` (`perf_event_paranoid`) — the
//!   meter does not fail: it records *why* in a [`CountersUnavailable`]
//!   (whose message starts with "hardware counters unavailable: ") and uses
//!   CPU clocks only. [`CostMeter::source`] always says which source it used.
//! * Every [`CostMeter::measure`] reads `CLOCK_PROCESS_CPUTIME_ID` and
//!   `CLOCK_THREAD_CPUTIME_ID` (and the wall clock) before and after the
//!   closure. The *process* clock is the headline figure: io_uring moves work
//!   to kernel worker threads that belong to the process, so the thread clock
//!   alone under-counts; both are reported so the difference is visible.
//! * [`PhaseTimes`] accumulates time per [`WritePhase`] (bookkeeping, checksum,
//!   submission, completion) with the monotonic wall clock, which is cheap
//!   (vDSO, tens of nanoseconds) where CPU clocks cost a system call. Phases
//!   of a non-blocking write path run without sleeping, so their wall time is
//!   CPU time; the report scales the phase split to the measured CPU total.
//! * [`AmortisedFit::fit`] fits `y = b + a / batch` by ordinary least squares on
//!   `x = 1 / batch` and returns `a`, `b`, R² and the RMS residual.
//!
//! # Trade-offs
//!
//! CPU clocks have the scheduler tick's accounting granularity on some
//! kernels and include nothing of the device itself (DMA, the disk's own
//! controller); they measure what the *host CPU* pays, which is the question.
//! Hardware counters are per thread here (they are opened on the caller), so
//! with io_uring the cycle count misses the kernel workers; the process
//! clock does not.
//!
//! # References
//!
//! perf_event_open(2); clock_gettime(2) (`CLOCK_PROCESS_CPUTIME_ID`,
//! `CLOCK_THREAD_CPUTIME_ID`); the perf-event crate.
//!
//! Where the meter sits in the mirror's write path: `docs/ARCHITECTURE.md` in
//! the repository.

use std::fmt;
use std::io;
use std::string::String;
use std::time::{Duration, Instant};
use std::vec::Vec;

/// What can go wrong while measuring (counter *unavailability* is not an
/// error: see [`CountersUnavailable`]).
#[derive(Debug, thiserror::Error)]
pub enum CostError {
    /// A CPU clock could not be read: the kernel lacks per-process or
    /// per-thread CPU clocks, which every Linux since 2.6.12 has.
    #[error("cannot read {clock}: {source}; run on Linux 2.6.12 or later (CPU-time clocks are needed to measure cost)")]
    Clock {
        /// Which clock failed.
        clock: &'static str,
        /// The operating system's error.
        source: io::Error,
    },
    /// An opened hardware counter could not be read or enabled.
    #[error("hardware counter failed while measuring: {source}; use CostMeter::clocks_only() to measure with CPU clocks")]
    Counter {
        /// The operating system's error.
        source: io::Error,
    },
    /// The fit's arithmetic left the range of `f64` (values near
    /// `f64::MAX`).
    #[error("the points are too large for the fit's arithmetic (a square or sum overflowed f64); scale them (for example to nanoseconds per write) and fit again")]
    OutOfRange,
    /// A fit needs at least two distinct batch sizes.
    #[error("a fit of cpu = b + a/batch needs at least two distinct batch sizes with positive batch, got {points} usable point(s); measure more batch sizes")]
    TooFewPoints {
        /// Usable points given.
        points: usize,
    },
}

/// Why the hardware counters could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnavailableReason {
    /// `ENOENT`: the kernel has no such event (typical in virtual machines).
    NoSuchEvent,
    /// `EOPNOTSUPP`: the PMU cannot count this event (or not in this mode).
    NotSupported,
    /// `EACCES` / `EPERM`: `perf_event_paranoid` or a security policy forbids it.
    PermissionDenied,
    /// `ENOSYS`: perf events are not compiled into the kernel.
    NoPerfEvents,
    /// The caller asked for CPU clocks only.
    NotRequested,
    /// Any other error number.
    Other(i32),
}

/// Hardware counters are not in use, and why; its message starts with
/// `hardware counters unavailable: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountersUnavailable {
    /// The class of the failure.
    pub reason: UnavailableReason,
    /// What the kernel said, and what to do about it.
    pub detail: String,
}

impl fmt::Display for CountersUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hardware counters unavailable: {}", self.detail)
    }
}

/// Maps a perf-event error to a clear explanation (never a failure).
///
/// `event` names the event that was being opened, for example `"cycles"`.
pub(crate) fn classify_counter_error(event: &str, err: &io::Error) -> CountersUnavailable {
    let errno = err.raw_os_error().unwrap_or(0);
    let (reason, detail) = match errno {
        libc::ENOENT => (
            UnavailableReason::NoSuchEvent,
            std::format!("the kernel has no '{event}' event (ENOENT; common in virtual machines without a virtual PMU); using CPU clocks"),
        ),
        libc::EOPNOTSUPP => (
            UnavailableReason::NotSupported,
            std::format!("the PMU cannot count '{event}' here (EOPNOTSUPP); using CPU clocks"),
        ),
        libc::EACCES | libc::EPERM => (
            UnavailableReason::PermissionDenied,
            std::format!("not permitted to count '{event}' ({}); lower /proc/sys/kernel/perf_event_paranoid or grant CAP_PERFMON to use counters; using CPU clocks", if errno == libc::EACCES { "EACCES" } else { "EPERM" }),
        ),
        libc::ENOSYS => (
            UnavailableReason::NoPerfEvents,
            std::format!("this kernel has no perf events (ENOSYS) for '{event}'; using CPU clocks"),
        ),
        other => (
            UnavailableReason::Other(other),
            std::format!("opening '{event}' failed: {err}; using CPU clocks"),
        ),
    };
    CountersUnavailable { reason, detail }
}

/// Which source a [`CostMeter`] reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CostSource {
    /// perf-event `cycles` and `instructions` counters of the calling
    /// thread, plus the CPU clocks.
    HardwareCounters {
        /// Whether kernel-mode cycles are counted (`perf_event_paranoid`
        /// may allow user mode only).
        includes_kernel: bool,
    },
    /// Process and thread CPU clocks only, with the reason.
    CpuClocks(CountersUnavailable),
}

impl fmt::Display for CostSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CostSource::HardwareCounters { includes_kernel } => write!(
                f,
                "perf-event cycles+instructions ({}) and CLOCK_PROCESS_CPUTIME_ID",
                if *includes_kernel {
                    "user and kernel mode"
                } else {
                    "user mode only: perf_event_paranoid forbids kernel counting"
                }
            ),
            CostSource::CpuClocks(why) => write!(
                f,
                "CLOCK_PROCESS_CPUTIME_ID and CLOCK_THREAD_CPUTIME_ID ({why})"
            ),
        }
    }
}

/// The cost of one measured piece of work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cost {
    /// CPU time of the whole process (all threads, including io_uring
    /// workers), in nanoseconds: the headline figure.
    pub process_cpu_ns: u64,
    /// CPU time of the calling thread, in nanoseconds.
    pub thread_cpu_ns: u64,
    /// Elapsed wall-clock time, in nanoseconds.
    pub wall_ns: u64,
    /// CPU cycles of the calling thread, where counters are available.
    pub cycles: Option<u64>,
    /// Instructions retired by the calling thread, where counters are available.
    pub instructions: Option<u64>,
}

impl Cost {
    /// Process CPU nanoseconds per operation for `ops` operations (`0` ops gives 0).
    pub fn cpu_ns_per(&self, ops: u64) -> f64 {
        if ops == 0 {
            0.0
        } else {
            self.process_cpu_ns as f64 / ops as f64
        }
    }

    /// The fraction of one core this work would occupy at `ops_per_sec`
    /// operations per second, given it took this cost for `ops` operations.
    pub fn cores_at(&self, ops: u64, ops_per_sec: f64) -> f64 {
        self.cpu_ns_per(ops) * ops_per_sec / 1e9
    }
}

/// Reads a CPU clock.
fn read_clock(id: libc::clockid_t, name: &'static str) -> Result<Duration, CostError> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return Err(CostError::Clock {
            clock: name,
            source: io::Error::last_os_error(),
        });
    }
    Ok(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CPU time consumed so far by the whole process (`CLOCK_PROCESS_CPUTIME_ID`).
pub(crate) fn process_cpu_time() -> Result<Duration, CostError> {
    read_clock(libc::CLOCK_PROCESS_CPUTIME_ID, "CLOCK_PROCESS_CPUTIME_ID")
}

/// CPU time consumed so far by the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub(crate) fn thread_cpu_time() -> Result<Duration, CostError> {
    read_clock(libc::CLOCK_THREAD_CPUTIME_ID, "CLOCK_THREAD_CPUTIME_ID")
}

/// The two hardware counters, opened on the calling thread.
struct HwCounters {
    cycles: perf_event::Counter,
    instructions: perf_event::Counter,
}

impl HwCounters {
    /// Opens both counters, counting kernel mode too if allowed (system
    /// calls are much of an I/O path's cost); returns whether it does.
    fn open() -> Result<(Self, bool), CountersUnavailable> {
        match Self::open_with(true) {
            Ok(c) => Ok((c, true)),
            Err(why) if why.reason == UnavailableReason::PermissionDenied => {
                Self::open_with(false).map(|c| (c, false))
            }
            Err(why) => Err(why),
        }
    }

    fn open_with(kernel: bool) -> Result<Self, CountersUnavailable> {
        use perf_event::events::Hardware;
        let one = |kind: Hardware, name: &str| {
            let mut b = perf_event::Builder::new().kind(kind);
            if kernel {
                b.include_kernel();
            }
            b.build().map_err(|e| classify_counter_error(name, &e))
        };
        Ok(Self {
            cycles: one(Hardware::CPU_CYCLES, "cycles")?,
            instructions: one(Hardware::INSTRUCTIONS, "instructions")?,
        })
    }
}

/// Measures the CPU cost of closures; see the [module docs](self).
///
/// Counters are opened on the thread that calls [`CostMeter::new`]; measure
/// on that thread (the meter is deliberately `!Send` through its counters).
///
/// # Examples
///
/// ```
/// use noderep::cost::CostMeter;
///
/// let mut meter = CostMeter::new(); // counters if the machine has them, else CPU clocks
/// let (sum, cost) = meter.measure(|| (0..100_000u64).sum::<u64>())?;
/// assert_eq!(sum, 4_999_950_000);
/// println!("{:.1} ns per add, measured with {}", cost.cpu_ns_per(100_000), meter.source());
/// # Ok::<(), noderep::cost::CostError>(())
/// ```
pub struct CostMeter {
    counters: Option<HwCounters>,
    source: CostSource,
}

impl fmt::Debug for CostMeter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CostMeter")
            .field("source", &self.source)
            .finish()
    }
}

impl Default for CostMeter {
    fn default() -> Self {
        Self::new()
    }
}

impl CostMeter {
    /// A meter using hardware counters if the machine has them, CPU clocks
    /// otherwise (never fails; [`CostMeter::source`] says which and why).
    pub fn new() -> Self {
        match HwCounters::open() {
            Ok((c, kernel)) => Self {
                counters: Some(c),
                source: CostSource::HardwareCounters {
                    includes_kernel: kernel,
                },
            },
            Err(why) => Self {
                counters: None,
                source: CostSource::CpuClocks(why),
            },
        }
    }

    /// A meter that uses CPU clocks only, even where counters exist.
    pub fn clocks_only() -> Self {
        Self {
            counters: None,
            source: CostSource::CpuClocks(CountersUnavailable {
                reason: UnavailableReason::NotRequested,
                detail: String::from("CPU clocks were requested explicitly"),
            }),
        }
    }

    /// Which source this meter reads.
    pub fn source(&self) -> &CostSource {
        &self.source
    }

    /// Runs `work` and returns its result with what it cost.
    ///
    /// # Errors
    ///
    /// [`CostError::Clock`] if a CPU clock cannot be read (kernels older
    /// than Linux 2.6.12), [`CostError::Counter`] if an opened hardware
    /// counter fails while measuring (use [`CostMeter::clocks_only`] then).
    pub fn measure<R>(&mut self, work: impl FnOnce() -> R) -> Result<(R, Cost), CostError> {
        if let Some(c) = self.counters.as_mut() {
            for counter in [&mut c.cycles, &mut c.instructions] {
                counter
                    .reset()
                    .and_then(|()| counter.enable())
                    .map_err(|source| CostError::Counter { source })?;
            }
        }
        let wall0 = Instant::now();
        let p0 = process_cpu_time()?;
        let t0 = thread_cpu_time()?;
        let out = work();
        let t1 = thread_cpu_time()?;
        let p1 = process_cpu_time()?;
        let wall = wall0.elapsed();
        let (mut cycles, mut instructions) = (None, None);
        if let Some(c) = self.counters.as_mut() {
            let read = |counter: &mut perf_event::Counter| -> Result<Option<u64>, CostError> {
                counter
                    .disable()
                    .map_err(|source| CostError::Counter { source })?;
                let ct = counter
                    .read_count_and_time()
                    .map_err(|source| CostError::Counter { source })?;
                // A counter that never ran (multiplexed out for the whole
                // interval) has no count to report.
                Ok((ct.time_running > 0).then_some(ct.count))
            };
            cycles = read(&mut c.cycles)?;
            instructions = read(&mut c.instructions)?;
        }
        Ok((
            out,
            Cost {
                process_cpu_ns: (p1.saturating_sub(p0)).as_nanos() as u64,
                thread_cpu_ns: (t1.saturating_sub(t0)).as_nanos() as u64,
                wall_ns: wall.as_nanos() as u64,
                cycles,
                instructions,
            },
        ))
    }
}

/// A phase of a write's CPU cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WritePhase {
    /// Validating the request, assigning sequence numbers, building headers,
    /// staging payloads into aligned buffers.
    Bookkeeping,
    /// Computing the crc32c of every block.
    Checksum,
    /// Handing the blocks to each device (system calls, queue entries).
    Submission,
    /// Reaping each device's result, durability waits, updating the
    /// mirror's metadata and acknowledging.
    Completion,
}

impl WritePhase {
    /// Every phase in write-path order.
    pub const ALL: [WritePhase; 4] = [
        WritePhase::Bookkeeping,
        WritePhase::Checksum,
        WritePhase::Submission,
        WritePhase::Completion,
    ];

    /// A short lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            WritePhase::Bookkeeping => "bookkeeping",
            WritePhase::Checksum => "checksum",
            WritePhase::Submission => "submission",
            WritePhase::Completion => "completion",
        }
    }
}

/// Nanoseconds accumulated per [`WritePhase`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PhaseTimes {
    ns: [u64; 4],
}

impl PhaseTimes {
    /// Adds `ns` nanoseconds to `phase`.
    #[inline]
    pub fn add(&mut self, phase: WritePhase, ns: u64) {
        self.ns[phase as usize] += ns;
    }

    /// Nanoseconds accumulated in `phase`.
    pub fn get(&self, phase: WritePhase) -> u64 {
        self.ns[phase as usize]
    }

    /// Sum over all phases.
    pub fn total(&self) -> u64 {
        self.ns.iter().sum()
    }

    /// Fraction of the total spent in `phase` (0 when nothing was recorded).
    pub fn share(&self, phase: WritePhase) -> f64 {
        let t = self.total();
        if t == 0 {
            0.0
        } else {
            self.get(phase) as f64 / t as f64
        }
    }
}

/// Times one phase: created at its start, [`PhaseTimer::lap`] closes it.
#[derive(Debug)]
pub(crate) struct PhaseTimer {
    at: Instant,
}

impl PhaseTimer {
    /// Starts timing now.
    #[inline]
    pub(crate) fn start() -> Self {
        Self { at: Instant::now() }
    }

    /// Adds the time since the last lap to `phase` in `into` and restarts.
    #[inline]
    pub(crate) fn lap(&mut self, into: &mut PhaseTimes, phase: WritePhase) {
        let now = Instant::now();
        into.add(phase, now.duration_since(self.at).as_nanos() as u64);
        self.at = now;
    }
}

/// Attributes elapsed time to [`WritePhase`]s along a code path, or does nothing
/// when disabled (so the write path can always call it).
///
/// # Examples
///
/// ```
/// use noderep::cost::{PhaseClock, WritePhase};
///
/// let mut clock = PhaseClock::enabled();
/// clock.restart();                        // a write starts
/// let staged = vec![0u8; 4096];           // ... bookkeeping ...
/// clock.mark(WritePhase::Bookkeeping);
/// let sum: u64 = staged.iter().map(|&b| u64::from(b)).sum(); // ... checksum ...
/// clock.mark(WritePhase::Checksum);
/// assert_eq!(sum, 0);
/// assert_eq!(clock.times().total(), clock.times().get(WritePhase::Bookkeeping)
///     + clock.times().get(WritePhase::Checksum));
/// ```
#[derive(Debug, Default)]
pub struct PhaseClock {
    timer: Option<PhaseTimer>,
    enabled: bool,
    times: PhaseTimes,
}

impl PhaseClock {
    /// A clock that records nothing (the default).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// A clock that records.
    pub fn enabled() -> Self {
        Self {
            timer: None,
            enabled: true,
            times: PhaseTimes::default(),
        }
    }

    /// True if this clock records.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Starts a new path: the next [`PhaseClock::mark`] measures from here.
    #[inline]
    pub fn restart(&mut self) {
        if self.enabled {
            self.timer = Some(PhaseTimer::start());
        }
    }

    /// Attributes the time since the previous mark (or restart) to `phase`.
    #[inline]
    pub fn mark(&mut self, phase: WritePhase) {
        if let Some(t) = self.timer.as_mut() {
            t.lap(&mut self.times, phase);
        }
    }

    /// Totals so far.
    pub fn times(&self) -> PhaseTimes {
        self.times
    }

    /// Clears the totals.
    pub fn reset(&mut self) {
        self.times = PhaseTimes::default();
    }
}

/// The least-squares fit of `cpu_per_write = b + a / batch`, made by
/// [`AmortisedFit::fit`].
///
/// # Examples
///
/// ```
/// use noderep::cost::AmortisedFit;
///
/// // CPU ns per write measured at batch sizes 1, 4 and 16.
/// let fit = AmortisedFit::fit(&[(1.0, 3000.0), (4.0, 1500.0), (16.0, 1125.0)])?;
/// assert!((fit.b - 1000.0).abs() < 1e-6 && (fit.a - 2000.0).abs() < 1e-6);
/// assert!((fit.predict(64.0) - 1031.25).abs() < 1e-6);
/// assert!(fit.r_squared > 0.999);
/// # Ok::<(), noderep::cost::CostError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AmortisedFit {
    /// Per-batch cost, amortised over the batch (same unit as the input).
    pub a: f64,
    /// Per-write cost that no batching removes.
    pub b: f64,
    /// Coefficient of determination (1 = perfect; can be < 0 for a bad model).
    pub r_squared: f64,
    /// Root-mean-square residual, in the input's unit.
    pub rms_residual: f64,
}

impl AmortisedFit {
    /// Fits `y = b + a / batch` to `(batch, y)` points by least squares.
    ///
    /// Points with a non-positive or non-finite batch, or a non-finite `y`,
    /// are left out.
    ///
    /// # Errors
    ///
    /// [`CostError::TooFewPoints`] unless at least two usable points with
    /// distinct batch sizes remain; [`CostError::OutOfRange`] if the
    /// arithmetic overflows.
    pub fn fit(points: &[(f64, f64)]) -> Result<Self, CostError> {
        // x = 1/batch must be a normal number (a subnormal batch makes it
        // infinite); the means are running means, so that large y values
        // do not overflow a sum.
        let usable: Vec<(f64, f64)> = points
            .iter()
            .filter(|(n, y)| *n > 0.0 && (1.0 / n).is_normal() && y.is_finite())
            .map(|&(n, y)| (1.0 / n, y))
            .collect();
        let k = usable.len() as f64;
        let (mut mean_x, mut mean_y) = (0.0, 0.0);
        for (i, p) in usable.iter().enumerate() {
            let n = (i + 1) as f64;
            mean_x += (p.0 - mean_x) / n;
            mean_y += (p.1 - mean_y) / n;
        }
        let sxx: f64 = usable.iter().map(|p| (p.0 - mean_x).powi(2)).sum();
        // Distinct batch sizes spread x by far more than rounding does,
        // whatever the scale of x: the test is relative to the mean.
        if usable.len() < 2 || sxx <= f64::EPSILON * k * mean_x * mean_x {
            return Err(CostError::TooFewPoints {
                points: usable.len(),
            });
        }
        let sxy: f64 = usable.iter().map(|p| (p.0 - mean_x) * (p.1 - mean_y)).sum();
        let a = sxy / sxx;
        let b = mean_y - a * mean_x;
        let ss_res: f64 = usable.iter().map(|p| (p.1 - (b + a * p.0)).powi(2)).sum();
        let ss_tot: f64 = usable.iter().map(|p| (p.1 - mean_y).powi(2)).sum();
        let r_squared = if ss_tot == 0.0 {
            1.0
        } else {
            1.0 - ss_res / ss_tot
        };
        let fit = AmortisedFit {
            a,
            b,
            r_squared,
            rms_residual: (ss_res / k).sqrt(),
        };
        if [fit.a, fit.b, fit.r_squared, fit.rms_residual]
            .iter()
            .all(|v| v.is_finite())
        {
            Ok(fit)
        } else {
            Err(CostError::OutOfRange)
        }
    }

    /// The model's prediction at `batch`.
    pub fn predict(&self, batch: f64) -> f64 {
        self.b + self.a / batch
    }
}

/// The same as [`AmortisedFit::fit`], kept at this path for code written
/// against it.
#[doc(hidden)]
pub fn fit_amortised(points: &[(f64, f64)]) -> Result<AmortisedFit, CostError> {
    AmortisedFit::fit(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_errors_map_to_clear_messages() {
        let cases = [
            (libc::ENOENT, UnavailableReason::NoSuchEvent, "ENOENT"),
            (
                libc::EOPNOTSUPP,
                UnavailableReason::NotSupported,
                "EOPNOTSUPP",
            ),
            (
                libc::EACCES,
                UnavailableReason::PermissionDenied,
                "perf_event_paranoid",
            ),
            (libc::EPERM, UnavailableReason::PermissionDenied, "EPERM"),
            (libc::ENOSYS, UnavailableReason::NoPerfEvents, "ENOSYS"),
        ];
        for (errno, reason, needle) in cases {
            let why = classify_counter_error("cycles", &io::Error::from_raw_os_error(errno));
            assert_eq!(why.reason, reason);
            let msg = why.to_string();
            assert!(msg.starts_with("hardware counters unavailable: "), "{msg}");
            assert!(msg.contains(needle), "{msg} should mention {needle}");
            assert!(msg.contains("cycles"), "{msg}");
        }
        let other =
            classify_counter_error("instructions", &io::Error::from_raw_os_error(libc::EBUSY));
        assert_eq!(other.reason, UnavailableReason::Other(libc::EBUSY));
    }

    #[test]
    fn meter_falls_back_or_counts_and_says_which() {
        let mut meter = CostMeter::new();
        let ((), cost) = meter
            .measure(|| {
                let mut x = 0u64;
                for i in 0..200_000u64 {
                    x = core::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                }
            })
            .expect("CPU clocks exist on Linux");
        match meter.source() {
            CostSource::HardwareCounters { .. } => {
                assert!(cost.cycles.is_some() || cost.instructions.is_some());
            }
            CostSource::CpuClocks(why) => {
                assert!(why
                    .to_string()
                    .starts_with("hardware counters unavailable: "));
                assert_eq!(cost.cycles, None);
                assert_eq!(cost.instructions, None);
            }
        }
        assert!(meter
            .source()
            .to_string()
            .contains("CLOCK_PROCESS_CPUTIME_ID"));
    }

    #[test]
    fn clock_fallback_counts_cpu_of_this_and_other_threads() {
        let mut meter = CostMeter::clocks_only();
        assert!(matches!(
            meter.source(),
            CostSource::CpuClocks(CountersUnavailable {
                reason: UnavailableReason::NotRequested,
                ..
            })
        ));
        let spin = || {
            let start = thread_cpu_time().expect("thread clock");
            let mut x = 0u64;
            while thread_cpu_time().expect("thread clock") - start < Duration::from_millis(20) {
                x = core::hint::black_box(x.wrapping_add(1));
            }
        };
        // Work on another thread shows in the process clock only.
        let ((), cost) = meter
            .measure(|| std::thread::spawn(spin).join().expect("spinner"))
            .expect("clocks");
        assert!(cost.process_cpu_ns >= 20_000_000, "{cost:?}");
        assert!(cost.thread_cpu_ns < cost.process_cpu_ns, "{cost:?}");
        assert_eq!(cost.cycles, None);
        // Work on this thread shows in both.
        let ((), cost) = meter.measure(spin).expect("clocks");
        assert!(cost.thread_cpu_ns >= 20_000_000, "{cost:?}");
        assert!(cost.process_cpu_ns >= cost.thread_cpu_ns, "{cost:?}");
        assert_eq!(cost.cpu_ns_per(0), 0.0);
    }

    #[test]
    fn fit_recovers_exact_model_and_rejects_degenerate_input() {
        let pts: Vec<(f64, f64)> = [1.0, 4.0, 16.0, 64.0]
            .iter()
            .map(|&n| (n, 300.0 + 2000.0 / n))
            .collect();
        let fit = AmortisedFit::fit(&pts).expect("four distinct batch sizes");
        assert!((fit.a - 2000.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.b - 300.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.r_squared - 1.0).abs() < 1e-12);
        assert!(fit.rms_residual < 1e-6);
        assert!((fit.predict(8.0) - 550.0).abs() < 1e-6);
        assert!(matches!(
            AmortisedFit::fit(&[(4.0, 1.0), (4.0, 2.0)]),
            Err(CostError::TooFewPoints { .. })
        ));
        assert!(matches!(
            AmortisedFit::fit(&[(0.0, 1.0), (4.0, 2.0)]),
            Err(CostError::TooFewPoints { points: 1 })
        ));
        // Noisy data gives R² < 1 and a positive residual.
        let noisy = [(1.0, 2400.0), (4.0, 760.0), (16.0, 420.0), (64.0, 335.0)];
        let fit = AmortisedFit::fit(&noisy).expect("fit");
        assert!(fit.r_squared < 1.0 && fit.r_squared > 0.9);
        assert!(fit.rms_residual > 0.0);
    }

    #[test]
    fn fit_never_returns_a_non_finite_model() {
        // A subnormal batch makes 1/batch infinite: the point is left out.
        assert!(matches!(
            AmortisedFit::fit(&[(1e-310, 1.0), (2.0, 1.0)]),
            Err(CostError::TooFewPoints { points: 1 })
        ));
        // Values near f64::MAX: the running means do not overflow, and a
        // constant y fits exactly.
        let flat = AmortisedFit::fit(&[(1.0, f64::MAX), (2.0, f64::MAX)]).expect("flat fit");
        assert_eq!((flat.a, flat.b), (0.0, f64::MAX));
        // Where the squares do overflow, the error says so.
        assert!(matches!(
            AmortisedFit::fit(&[(1.0, f64::MAX), (2.0, -f64::MAX)]),
            Err(CostError::OutOfRange)
        ));
        // Huge batch sizes are distinct however small 1/batch is.
        let big = AmortisedFit::fit(&[(1e9, 100.0), (2e9, 50.0)]).expect("distinct batches");
        assert!((big.predict(4e9) - 25.0).abs() < 1e-6, "{big:?}");
    }

    #[test]
    fn phase_times_accumulate_and_share() {
        let mut t = PhaseTimes::default();
        assert_eq!(t.share(WritePhase::Checksum), 0.0);
        t.add(WritePhase::Bookkeeping, 10);
        t.add(WritePhase::Checksum, 30);
        t.add(WritePhase::Checksum, 20);
        t.add(WritePhase::Completion, 40);
        assert_eq!(t.get(WritePhase::Checksum), 50);
        assert_eq!(t.total(), 100);
        assert!((t.share(WritePhase::Completion) - 0.4).abs() < 1e-12);
        let mut timer = PhaseTimer::start();
        timer.lap(&mut t, WritePhase::Submission);
        assert!(t.total() >= 100);
        assert_eq!(WritePhase::ALL.map(WritePhase::name)[3], "completion");
    }
}
