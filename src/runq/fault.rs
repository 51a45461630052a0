//! Fault injection that is real: a core's thread crashes at a named point
//! (inside an operation if so armed), is frozen by a signal that parks it
//! until thawed, or is slowed down beyond its lease.
//!
//! # How it works
//!
//! * **Crash / slow**: [`FaultTable::arm`] sets, per core, a fault point, a
//!   countdown of hits and an action. Each fault point in the protocol costs
//!   one Relaxed load when nothing is armed. A crash parks the thread in
//!   place (it never finishes the operation, exactly like a dead core) until
//!   [`FaultTable::release_crashed`], then unwinds with [`Crashed`] (use
//!   [`catch_crash`] at the top of the thread). With `park_on_crash` off (a
//!   single-threaded test) it unwinds at once. A slow-down sleeps in place.
//! * **Freeze**: [`Freezer::freeze`] sends `SIGUSR2` to the thread with
//!   `pthread_kill`; the handler parks it in `nanosleep` until
//!   [`Freezer::thaw`]. The thread stops wherever it happens to be, exactly as
//!   a stopped core would, and wakes up as a zombie if its lease expired.
//!   Threads block the signal while they hold a cold-path lock
//!   ([`masked`]), as a kernel disables preemption under a spinlock, so a
//!   frozen thread can never hold a lock another thread needs.
//!
//! # Trade-offs
//!
//! The handler only touches atomics and `nanosleep` (async-signal-safe). The
//! freeze table is process-wide (signal handlers cannot find a per-scheduler
//! table), with [`MAX_FROZEN_THREADS`] registrations per process.

use crate::sync::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::time::Duration;

pub use super::fault_points::FaultPoint;

/// The payload a crashed thread unwinds with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crashed {
    /// The crashed core.
    pub core: usize,
    /// Where it crashed.
    pub point: FaultPoint,
}

/// What an armed fault does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultAction {
    /// Stop the thread here for good.
    Crash,
    /// Sleep this long here (beyond the lease makes the core a zombie).
    Stall(Duration),
}

/// Per-core armed faults, reached through [`RunQueues::faults`](super::RunQueues::faults).
///
/// # Examples
///
/// Core 0 crashes inside an operation, after the operation reached its
/// backup; the backup takes the queue over once the lease has run out, and
/// the task is still there. Times are passed explicitly, as a scheduler's
/// tick would (ns since the scheduler was built).
///
/// ```
/// use noderep::runq::fault::{catch_crash, FaultAction, FaultPoint};
/// use noderep::runq::{BackupEvent, Exit, Pick, RunQueues};
///
/// const MS: u64 = 1_000_000;
/// let rq = RunQueues::builder().cores(2).build()?; // lease 20 ms, margin 5 ms
/// // One thread plays both cores here, so a crash unwinds at once instead
/// // of parking the thread for good as a dead core would.
/// rq.faults().set_park_on_crash(false);
/// let task = rq.spawner(1)?.spawn(0)?;
/// let mut owner = rq.owner(0)?;
/// owner.tick(0)?;
/// let mut backups = Vec::new();
/// rq.attach_backups(1, &mut backups)?; // core 1 backs queue 0 up
/// backups[0].poll(0)?;
///
/// rq.faults().arm(0, FaultPoint::AfterCommit, 1, FaultAction::Crash);
/// assert!(catch_crash(|| owner.pick()).is_err());
/// assert!(rq.faults().has_crashed(0));
///
/// // Before lease + margin the backup waits; after it, it takes over.
/// assert!(!matches!(backups[0].poll(10 * MS)?, BackupEvent::TookOver { .. }));
/// let BackupEvent::TookOver { owner: mut adopted, report } = backups[0].poll(26 * MS)? else {
///     panic!("the lease expired: core 1 must take queue 0 over");
/// };
/// assert_eq!(report.by, 1);
/// // The task core 0 was picking when it died runs again, once.
/// assert_eq!(adopted.pick()?, Pick::Task(task));
/// adopted.complete(task, Exit::Done)?;
/// assert_eq!(adopted.pick()?, Pick::Empty);
/// # Ok::<(), noderep::runq::RunqError>(())
/// ```
pub struct FaultTable {
    /// Per core: `point:8 | countdown:24 | action:32` (action 0 = crash, else
    /// stall milliseconds); 0 = nothing armed.
    armed: Box<[AtomicU64]>,
    crashed: Box<[AtomicBool]>,
    /// Per core: `point << 56 | ns` of the last fault that fired (0 = none).
    last_fired: Box<[AtomicU64]>,
    park_on_crash: AtomicBool,
    released: AtomicBool,
    hits: AtomicU64,
}

impl core::fmt::Debug for FaultTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("FaultTable")
            .field("cores", &self.armed.len())
            .finish()
    }
}

impl FaultTable {
    pub(crate) fn new(cores: usize) -> Self {
        Self {
            armed: (0..cores)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            crashed: (0..cores)
                .map(|_| AtomicBool::new(false))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            last_fired: (0..cores)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
            park_on_crash: AtomicBool::new(true),
            released: AtomicBool::new(false),
            hits: AtomicU64::new(0),
        }
    }

    /// Arms `action` on `core` at the `after`-th next hit (from 1) of `point`.
    /// Replaces what was armed there.
    pub fn arm(&self, core: usize, point: FaultPoint, after: u32, action: FaultAction) {
        let act = match action {
            FaultAction::Crash => 0,
            FaultAction::Stall(d) => u64::try_from(d.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, u64::from(u32::MAX)),
        };
        let w = (point as u64) << 56 | (u64::from(after.clamp(1, (1 << 24) - 1))) << 32 | act;
        if let Some(a) = self.armed.get(core) {
            // Release: pairs with the Acquire CAS in `hit`.
            a.store(w, Ordering::Release);
        }
    }

    /// Disarms `core`.
    pub fn disarm(&self, core: usize) {
        if let Some(a) = self.armed.get(core) {
            // Relaxed: a stale armed fault firing once more is harmless.
            a.store(0, Ordering::Relaxed);
        }
    }

    /// With `false`, a crash unwinds at once instead of parking (for
    /// single-threaded tests that drive several handles from one thread).
    pub fn set_park_on_crash(&self, park: bool) {
        // Relaxed: set before the faults are armed.
        self.park_on_crash.store(park, Ordering::Relaxed);
    }

    /// Lets every parked crashed thread unwind (at shutdown).
    pub fn release_crashed(&self) {
        // Release: pairs with the Acquire load in the parked loop.
        self.released.store(true, Ordering::Release);
    }

    /// Has `core` crashed?
    pub fn has_crashed(&self, core: usize) -> bool {
        // Acquire: pairs with the Release store when crashing.
        self.crashed
            .get(core)
            .is_some_and(|c| c.load(Ordering::Acquire))
    }

    /// Faults that fired so far.
    pub fn fired(&self) -> u64 {
        // Relaxed: a statistics counter.
        self.hits.load(Ordering::Relaxed)
    }

    /// The last fault that fired on `core`: where, and when (ns on the
    /// scheduler's clock, [`super::RunQueues::now`]).
    pub fn last_fired(&self, core: usize) -> Option<(FaultPoint, u64)> {
        // Acquire: pairs with the Release store when firing.
        let w = self.last_fired.get(core)?.load(Ordering::Acquire);
        FaultPoint::from_u8((w >> 56) as u8).map(|p| (p, w & ((1 << 56) - 1)))
    }

    /// A fault point on `core`; `now` reads the clock (only when firing).
    #[inline]
    pub(crate) fn hit(&self, core: usize, point: FaultPoint, now: impl FnOnce() -> u64) {
        let Some(a) = self.armed.get(core) else {
            return;
        };
        // Relaxed: the fast path; the CAS below re-reads with Acquire.
        let mut w = a.load(Ordering::Relaxed);
        loop {
            if w == 0 || FaultPoint::from_u8((w >> 56) as u8) != Some(point) {
                return;
            }
            let count = (w >> 32) & ((1 << 24) - 1);
            let next = if count <= 1 { 0 } else { w - (1 << 32) };
            // AcqRel: one hit consumes one count; exactly one thread fires.
            // Acquire pairs with the Release store in `arm`; the hitters'
            // CASes on the word are totally ordered.
            match a.compare_exchange(w, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) if count <= 1 => break,
                Ok(_) => return,
                Err(x) => w = x,
            }
        }
        // Relaxed: a statistics counter.
        self.hits.fetch_add(1, Ordering::Relaxed);
        // Release: pairs with the Acquire load in `last_fired`.
        self.last_fired[core].store(
            (point as u64) << 56 | (now() & ((1 << 56) - 1)),
            Ordering::Release,
        );
        let act = w & 0xffff_ffff;
        if act != 0 {
            std::thread::sleep(Duration::from_millis(act));
            return;
        }
        // Release: observers (tests, the demo) see the crash flag.
        self.crashed[core].store(true, Ordering::Release);
        if self.park_on_crash.load(Ordering::Relaxed) {
            // Acquire: pairs with the Release store in `release_crashed`.
            while !self.released.load(Ordering::Acquire) {
                std::thread::park_timeout(Duration::from_millis(5));
            }
        }
        std::panic::resume_unwind(Box::new(Crashed { core, point }));
    }
}

/// Runs `f`, turning a [`Crashed`] unwind into `Err(Crashed)`; other panics
/// propagate.
///
/// # Errors
///
/// The [`Crashed`] payload of a crash fault that fired inside `f`.
pub fn catch_crash<R>(f: impl FnOnce() -> R) -> Result<R, Crashed> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => Ok(r),
        Err(payload) => match payload.downcast::<Crashed>() {
            Ok(c) => Err(*c),
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

/// Most threads that can be registered for freezing in one process.
pub const MAX_FROZEN_THREADS: usize = 1024;

const SIG: libc::c_int = libc::SIGUSR2;

#[allow(clippy::declare_interior_mutable_const)]
const FALSE: AtomicBool = AtomicBool::new(false);
static FREEZE: [AtomicBool; MAX_FROZEN_THREADS] = [FALSE; MAX_FROZEN_THREADS];
static PARKED: [AtomicBool; MAX_FROZEN_THREADS] = [FALSE; MAX_FROZEN_THREADS];
static NEXT_SLOT: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

std::thread_local! {
    static SLOT: core::cell::Cell<usize> = const { core::cell::Cell::new(usize::MAX) };
}

extern "C" fn on_freeze(_sig: libc::c_int) {
    let slot = SLOT.with(|s| s.get());
    if slot >= MAX_FROZEN_THREADS {
        return;
    }
    // Release: tells `freeze` the thread is parked (pairs with the Acquire
    // load of PARKED in `Freezer::freeze`).
    PARKED[slot].store(true, Ordering::Release);
    // Acquire: pairs with the Release store in `thaw`.
    while FREEZE[slot].load(Ordering::Acquire) {
        let ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 200_000,
        };
        // SAFETY: nanosleep is async-signal-safe; `ts` is a valid timespec and
        // the remainder pointer may be null.
        unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
    }
    // Release: tells `thaw` the thread runs again (pairs with the Acquire
    // load of PARKED in `Freezer::thaw`).
    PARKED[slot].store(false, Ordering::Release);
}

fn install() -> Result<(), FreezeError> {
    // AcqRel: one thread installs the handler; pairs with the other
    // installers' swaps and with the Release store of a failed install below.
    if INSTALLED.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    // SAFETY: a zeroed sigaction is a valid starting value; we set a plain
    // handler (no SA_SIGINFO) that only touches atomics and nanosleep, and
    // pass valid pointers to sigemptyset/sigaction.
    let rc = unsafe {
        let mut sa: libc::sigaction = core::mem::zeroed();
        sa.sa_sigaction = on_freeze as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(SIG, &sa, core::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        // Release: lets a later call try installing again (pairs with its
        // AcqRel swap above).
        INSTALLED.store(false, Ordering::Release);
        Err(FreezeError::Install)
    }
}

/// Freezing errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    /// The signal handler could not be installed.
    #[error("cannot install the SIGUSR2 freeze handler: is another library using SIGUSR2?")]
    Install,
    /// Too many threads were registered.
    #[error("more than {MAX_FROZEN_THREADS} threads registered for freezing in this process: reuse threads")]
    TooManyThreads,
    /// The signal could not be delivered.
    #[error("pthread_kill failed: the thread has exited; freeze only running threads")]
    Signal,
    /// The thread did not park (or wake) in time.
    #[error("the thread did not react to the freeze signal within a second: is SIGUSR2 blocked in it for long?")]
    Timeout,
}

/// A registered thread that can be frozen and thawed.
///
/// # Examples
///
/// ```
/// use noderep::runq::fault::Freezer;
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::{mpsc, Arc};
/// use std::time::Duration;
///
/// let count = Arc::new(AtomicU64::new(0));
/// let (tx, rx) = mpsc::channel();
/// let counter = Arc::clone(&count);
/// let worker = std::thread::spawn(move || {
///     tx.send(Freezer::register_current()).unwrap();
///     while counter.load(Ordering::Relaxed) < u64::MAX / 2 {
///         counter.fetch_add(1, Ordering::Relaxed);
///     }
/// });
/// let freezer = rx.recv()??;
/// freezer.freeze()?; // returns once the thread is parked in its handler
/// let frozen_at = count.load(Ordering::Relaxed);
/// std::thread::sleep(Duration::from_millis(20));
/// assert_eq!(count.load(Ordering::Relaxed), frozen_at, "a frozen thread does nothing");
/// freezer.thaw()?;
/// let deadline = std::time::Instant::now() + Duration::from_secs(10);
/// while count.load(Ordering::Relaxed) == frozen_at {
///     assert!(std::time::Instant::now() < deadline, "a thawed thread runs again");
///     std::thread::yield_now();
/// }
/// count.store(u64::MAX / 2, Ordering::Relaxed); // let the worker end
/// worker.join().unwrap();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Freezer {
    thread: libc::pthread_t,
    slot: usize,
}

impl Freezer {
    /// Registers the calling thread (call it on the thread to be frozen).
    ///
    /// # Errors
    ///
    /// [`FreezeError::Install`] if the signal handler cannot be installed,
    /// [`FreezeError::TooManyThreads`] past [`MAX_FROZEN_THREADS`].
    pub fn register_current() -> Result<Self, FreezeError> {
        install()?;
        // Relaxed: a unique counter.
        let slot = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
        if slot >= MAX_FROZEN_THREADS {
            return Err(FreezeError::TooManyThreads);
        }
        SLOT.with(|s| s.set(slot));
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(Self { thread, slot })
    }

    /// Stops the thread where it is; returns once it is parked.
    ///
    /// # Errors
    ///
    /// [`FreezeError::Signal`] if the thread is gone, [`FreezeError::Timeout`]
    /// if it does not park within a second.
    pub fn freeze(&self) -> Result<(), FreezeError> {
        // Release: the handler's Acquire load sees the request.
        FREEZE[self.slot].store(true, Ordering::Release);
        // SAFETY: `thread` is a live thread registered by `register_current`
        // (the caller keeps it alive until thawed); the handler is installed.
        if unsafe { libc::pthread_kill(self.thread, SIG) } != 0 {
            FREEZE[self.slot].store(false, Ordering::Release);
            return Err(FreezeError::Signal);
        }
        // Acquire: pairs with the handler's Release store of PARKED.
        wait_for(|| PARKED[self.slot].load(Ordering::Acquire))
    }

    /// Lets the thread run again; returns once it has left the handler.
    ///
    /// # Errors
    ///
    /// [`FreezeError::Timeout`] if the thread does not resume within a second.
    pub fn thaw(&self) -> Result<(), FreezeError> {
        // Release: pairs with the handler's Acquire load.
        FREEZE[self.slot].store(false, Ordering::Release);
        wait_for(|| !PARKED[self.slot].load(Ordering::Acquire))
    }
}

fn wait_for(cond: impl Fn() -> bool) -> Result<(), FreezeError> {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > Duration::from_secs(1) {
            return Err(FreezeError::Timeout);
        }
        std::thread::sleep(Duration::from_micros(50));
    }
    Ok(())
}

/// The freeze signal blocked for the lifetime of the value.
pub(crate) struct SignalMask {
    old: libc::sigset_t,
}

impl SignalMask {
    pub(crate) fn block() -> Self {
        // SAFETY: zeroed sigsets are valid inputs to sigemptyset; the pointers
        // passed are to live locals.
        unsafe {
            let mut set: libc::sigset_t = core::mem::zeroed();
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, SIG);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Self { old }
        }
    }
}

impl Drop for SignalMask {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by `block` on the same thread.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, core::ptr::null_mut());
        }
    }
}

/// Runs `f` with the freeze signal blocked (cold-path critical sections).
pub fn masked<R>(f: impl FnOnce() -> R) -> R {
    let _m = SignalMask::block();
    f()
}
