//! The one place where std, core or loom synchronisation primitives are chosen.
//!
//! Every concurrent file in noderep imports its atomics, `Arc`, `UnsafeCell`,
//! threads and spin hints from here, never from `std::sync::atomic` or `loom`
//! directly, so that the very same protocol code runs natively and under the
//! loom model checker (`RUSTFLAGS="--cfg loom"`). It is crate-private: its
//! types change under loom, so they are no part of the public API (the loom
//! models reach the real code through the public API and the
//! `cfg(loom)`-only `nr::loom_api`).
//!
//! # How it works
//!
//! Under `cfg(loom)` the items are loom's instrumented versions; otherwise
//! they are `core`/`alloc` (and `std::thread` when the `std` feature is on).
//! `UnsafeCell` always exposes loom's closure API (`with` / `with_mut`) so
//! that loom can check every access for data races; natively the closures
//! compile down to a raw pointer.
//!
//! [`Backoff`] is the single spin-wait helper: it spins with exponential
//! `spin_loop` hints, then yields the CPU (with `std`), and under loom it
//! yields at once so the model checker can schedule the thread we wait for.
//!
//! # Trade-offs
//!
//! Loom's atomics are bigger and slower; constants that size buffers shrink
//! under `cfg(loom)` where they are defined (see `nr::config`), never here.

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(loom)]
pub(crate) use loom::sync::Arc;

#[cfg(not(loom))]
pub(crate) use alloc::sync::Arc;
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use core::sync::atomic::{
    fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};

#[cfg(all(loom, feature = "std"))]
#[allow(unused_imports)]
pub(crate) use loom::thread;
#[cfg(all(not(loom), feature = "std"))]
#[allow(unused_imports)]
pub(crate) use std::thread;

#[allow(unused_imports)]
pub(crate) use crossbeam_utils::CachePadded;

/// A blocking mutex, for cold paths only (registration, re-backup, event logs).
#[cfg(all(loom, feature = "std"))]
#[allow(unused_imports)]
pub(crate) use loom::sync::{Mutex, MutexGuard};
/// A blocking mutex, for cold paths only (registration, re-backup, event logs).
#[cfg(all(not(loom), feature = "std"))]
#[allow(unused_imports)]
pub(crate) use std::sync::{Mutex, MutexGuard};

/// An `UnsafeCell` with loom's closure-based access API.
#[cfg(loom)]
pub(crate) use loom::cell::UnsafeCell;

/// An `UnsafeCell` with loom's closure-based access API.
#[cfg(not(loom))]
#[derive(Debug, Default)]
#[repr(transparent)]
pub(crate) struct UnsafeCell<T: ?Sized>(core::cell::UnsafeCell<T>);

#[cfg(not(loom))]
#[allow(dead_code)]
impl<T> UnsafeCell<T> {
    /// Wraps `value`.
    pub(crate) const fn new(value: T) -> Self {
        Self(core::cell::UnsafeCell::new(value))
    }

    /// Consumes the cell and returns the value.
    pub(crate) fn into_inner(self) -> T {
        self.0.into_inner()
    }
}

#[cfg(not(loom))]
#[allow(dead_code)]
impl<T: ?Sized> UnsafeCell<T> {
    /// Gives `f` a shared raw pointer to the value.
    #[inline(always)]
    pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
        f(self.0.get())
    }

    /// Gives `f` an exclusive raw pointer to the value.
    #[inline(always)]
    pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
        f(self.0.get())
    }
}

/// The ordering of the loads that follow [`store_then_fence`] in a Dekker
/// (store-then-load) handshake: SeqCst natively, so they join the total order
/// with the SeqCst store; Acquire under loom, where the SeqCst fence does
/// that job.
#[cfg(not(loom))]
pub(crate) const DEKKER_LOAD: Ordering = Ordering::SeqCst;
/// See the native definition.
#[cfg(loom)]
pub(crate) const DEKKER_LOAD: Ordering = Ordering::Acquire;

/// The store half of a Dekker handshake: stores `value` so that no later
/// [`DEKKER_LOAD`] of this thread can be ordered before it.
///
/// Natively a SeqCst store (`xchg` on x86: far cheaper than `mfence` on AMD
/// Zen), whose partner loads are SeqCst; under loom, which treats SeqCst
/// accesses as AcqRel but models SeqCst fences exactly, a Relaxed store and a
/// SeqCst fence. Both give the store-load ordering in the C11 model.
#[inline(always)]
pub(crate) fn store_then_fence(flag: &AtomicBool, value: bool) {
    #[cfg(not(loom))]
    flag.store(value, Ordering::SeqCst);
    #[cfg(loom)]
    {
        flag.store(value, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }
}

/// Asymmetric Dekker fences: the light side is a compiler fence, the heavy
/// side makes every CPU that runs a thread of this process execute a full
/// memory barrier (Linux `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`).
///
/// A thread that stores a flag, passes a [`light_fence`] and loads the other
/// side's flag, paired with a thread that stores its flag, calls
/// [`heavy_fence`] and then loads, gets Dekker's guarantee: if the light
/// side's load ran before the heavy side's barrier reached its CPU, that
/// barrier drained the light side's store, which the heavy side's later load
/// then sees; otherwise the light side's load comes after the heavy side's
/// store and sees it. This is the `membarrier(2)` use case; loom cannot model
/// it, so it is compiled only natively (see [`asymmetric_fences`]).
#[cfg(all(not(loom), feature = "std", target_os = "linux"))]
mod membarrier {
    const QUERY: libc::c_long = 0;
    const PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier takes two integer arguments besides the command
        // and touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    }

    /// Registers the process for expedited private barriers (once); false if
    /// the kernel does not offer them.
    pub(crate) fn available() -> bool {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| {
            let cmds = call(QUERY);
            cmds >= 0 && cmds & PRIVATE_EXPEDITED != 0 && call(REGISTER_PRIVATE_EXPEDITED) == 0
        })
    }

    pub(crate) fn barrier() {
        // It cannot fail once `available` registered the process (the only
        // errors are "not registered" and "not supported"); if it did, the
        // light side's readers would be unprotected, so stop the process
        // rather than risk a torn read.
        if call(PRIVATE_EXPEDITED) != 0 {
            std::eprintln!("noderep: membarrier failed after registration; aborting");
            std::process::abort();
        }
    }
}

/// Whether [`light_fence`]/[`heavy_fence`] can be used: Linux with `std` and
/// a kernel with expedited private `membarrier` (4.14+). The first call
/// registers the process. Under loom they are always available, as a pair of
/// SeqCst fences (see [`light_fence`]).
pub(crate) fn asymmetric_fences() -> bool {
    #[cfg(loom)]
    return true;
    #[cfg(all(not(loom), feature = "std", target_os = "linux"))]
    return membarrier::available();
    #[cfg(not(any(loom, all(feature = "std", target_os = "linux"))))]
    return false;
}

/// The light side of an asymmetric Dekker handshake: keeps the compiler
/// from moving the flag store after the following load; the CPU may still
/// reorder them, which [`heavy_fence`] on the other side covers.
///
/// Under loom, which cannot model `membarrier`, both sides are SeqCst
/// fences: the models then check everything around the handshake (the
/// Acquire/Release pairs that carry the data) and take the handshake itself
/// as given, which is what `membarrier(2)` documents.
#[inline(always)]
pub(crate) fn light_fence() {
    #[cfg(not(loom))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(loom)]
    fence(Ordering::SeqCst);
}

/// The heavy side: a full barrier on every CPU running a thread of this
/// process. Only call it when [`asymmetric_fences`] returned true.
pub(crate) fn heavy_fence() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
    #[cfg(all(not(loom), feature = "std", target_os = "linux"))]
    membarrier::barrier();
    #[cfg(not(any(loom, all(feature = "std", target_os = "linux"))))]
    unreachable!("asymmetric fences are never enabled on this target");
}

/// Spin-then-yield backoff: the only way noderep waits for another thread.
///
/// It spins for a bounded number of rounds, each a few `spin_loop` hints
/// (at most [`Backoff::MAX_PAUSES`], so the waiter re-checks its condition
/// often: on AMD Zen one `pause` is ~65 cycles, and the exponential backoff
/// to 64 pauses this replaced made a waiter oversleep a combiner's 100 ns
/// batch by microseconds), then yields the CPU to the scheduler (essential
/// when threads outnumber cores: a waiter that only spins can occupy the very
/// core the thread it waits for needs). Under loom every call yields so the
/// model checker explores the other threads.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    step: u32,
}

impl Backoff {
    /// Rounds that spin before the backoff starts yielding (about 250
    /// pauses in all: a few microseconds).
    const SPIN_ROUNDS: u32 = 64;
    /// Most `spin_loop` hints in one round (rounds 0, 1, 2.. spin 1, 2, 4..).
    pub(crate) const MAX_PAUSES: u32 = 4;

    /// A fresh backoff, spinning first.
    pub(crate) const fn new() -> Self {
        Self { step: 0 }
    }

    /// Waits a little; longer on the first few calls, then a yield of the CPU.
    #[inline]
    pub(crate) fn snooze(&mut self) {
        #[cfg(loom)]
        {
            loom::thread::yield_now();
        }
        #[cfg(not(loom))]
        {
            if self.step < Self::SPIN_ROUNDS {
                for _ in 0..(1u32 << self.step.min(Self::MAX_PAUSES.trailing_zeros())) {
                    core::hint::spin_loop();
                }
                self.step += 1;
            } else {
                #[cfg(feature = "std")]
                std::thread::yield_now();
                #[cfg(not(feature = "std"))]
                for _ in 0..Self::MAX_PAUSES {
                    core::hint::spin_loop();
                }
            }
        }
    }

    /// True once the backoff has moved from spinning to yielding.
    pub(crate) fn is_yielding(&self) -> bool {
        self.step >= Self::SPIN_ROUNDS
    }

    /// Starts over with short spins (call after progress was made).
    pub(crate) fn reset(&mut self) {
        self.step = 0;
    }
}

/// Sleeps while `word` holds `expected`, for at most about a millisecond: a
/// futex wait on Linux with `std`. Elsewhere (and under loom) it yields or
/// spins once; callers re-check their condition in a loop either way.
///
/// The bounded sleep is a backstop, not the protocol: every state change a
/// sleeper waits for is followed by [`wake_all`] on the same word.
#[inline]
pub(crate) fn wait_on(word: &AtomicU32, expected: u32) {
    #[cfg(loom)]
    {
        let _ = (word, expected);
        loom::thread::yield_now();
    }
    #[cfg(all(not(loom), feature = "std", target_os = "linux"))]
    {
        let timeout = libc::timespec {
            tv_sec: 0,
            tv_nsec: 1_000_000,
        };
        // SAFETY: `word` is a live, aligned 32-bit atomic for the duration of
        // the call; FUTEX_WAIT only reads it (atomically, in the kernel) and
        // returns at once if it no longer holds `expected`. `timeout` is a
        // valid relative timespec on our stack.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                &timeout as *const libc::timespec,
            );
        }
    }
    #[cfg(all(not(loom), feature = "std", not(target_os = "linux")))]
    {
        // Relaxed: only decides whether to yield; the caller re-reads the
        // word with the ordering its protocol needs.
        if word.load(Ordering::Relaxed) == expected {
            std::thread::yield_now();
        }
    }
    #[cfg(all(not(loom), not(feature = "std")))]
    {
        // Relaxed: as above.
        if word.load(Ordering::Relaxed) == expected {
            core::hint::spin_loop();
        }
    }
}

/// Wakes every thread sleeping in [`wait_on`] on `word`.
#[inline]
pub(crate) fn wake_all(word: &AtomicU32) {
    #[cfg(all(not(loom), feature = "std", target_os = "linux"))]
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAKE does not
    // access memory through the pointer, it only names the wait queue.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            i32::MAX,
        );
    }
    #[cfg(not(all(not(loom), feature = "std", target_os = "linux")))]
    let _ = word;
}
