//! Per-thread operation slots: how a thread hands a write to its replica's
//! flat combiner and gets the response back.
//!
//! # How it works
//!
//! Each registered thread owns one cache-padded [`Context`] in its replica.
//! The state word moves `EMPTY → PENDING` (the thread stored its operation),
//! `PENDING → TAKEN` (a combiner moved the operation into the log), and
//! `TAKEN → DONE` (the combiner stored the response and, once the batch
//! is committed, published it) or `TAKEN → PANICKED`
//! (the operation panicked; the payload is stored instead), and back to
//! `EMPTY` when the thread has taken the result. Each transition hands the
//! cells to the other side: the thread touches `op` only in `EMPTY`, the
//! combiner only in `PENDING`; the combiner writes `result` only in `TAKEN`,
//! the thread reads it only in `DONE`/`PANICKED`.
//!
//! # Trade-offs
//!
//! One operation in flight per thread keeps the slot to one cache line and
//! the protocol simple; a thread that wants to batch its own writes can
//! combine them into one `WriteOperation`.

use crate::mutants;
use crate::sync::{AtomicBool, AtomicUsize, Ordering, UnsafeCell};

/// No operation in the slot.
pub(crate) const EMPTY: usize = 0;
/// The thread stored an operation for the combiner.
pub(crate) const PENDING: usize = 1;
/// A combiner moved the operation into the log.
pub(crate) const TAKEN: usize = 2;
/// The response is in `result`.
pub(crate) const DONE: usize = 3;
/// The operation panicked; `result` holds the payload (std only).
pub(crate) const PANICKED: usize = 4;

/// What a combiner hands back.
pub(crate) enum Outcome<R> {
    /// The operation's response.
    Response(R),
    /// The operation panicked with this payload.
    #[cfg(feature = "std")]
    Panicked(alloc::boxed::Box<dyn core::any::Any + Send + 'static>),
}

impl<R> Outcome<R> {
    /// Whether the operation panicked.
    #[inline]
    pub(crate) fn is_panic(&self) -> bool {
        match self {
            Outcome::Response(_) => false,
            #[cfg(feature = "std")]
            Outcome::Panicked(_) => true,
        }
    }
}

/// One thread's operation slot.
pub(crate) struct Context<W, R> {
    /// State word (see the module docs). Written by both sides.
    state: AtomicUsize,
    /// Whether a thread has registered this slot. Written by `register` and
    /// token drop; read by registration.
    in_use: AtomicBool,
    /// The pending operation: written by the thread, taken by the combiner.
    op: UnsafeCell<Option<W>>,
    /// The result: written by the combiner, taken by the thread.
    result: UnsafeCell<Option<Outcome<R>>>,
}

impl<W, R> Context<W, R> {
    pub(crate) fn new() -> Self {
        Self {
            state: AtomicUsize::new(EMPTY),
            in_use: AtomicBool::new(false),
            op: UnsafeCell::new(None),
            result: UnsafeCell::new(None),
        }
    }

    /// Claims the slot for a registering thread; false if it is taken.
    pub(crate) fn claim(&self) -> bool {
        // Acquire on success: pairs with the Release in `release`, so the
        // previous owner's last use of the slot happens before ours.
        self.in_use
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }

    /// Frees the slot (token drop). The slot must be `EMPTY`.
    pub(crate) fn release(&self) {
        // Release: pairs with the Acquire in `claim`.
        let order = mutants::ordering!("token_release_relaxed", Release, Relaxed);
        self.in_use.store(false, order);
    }

    /// The owning thread submits `op`. The slot must be `EMPTY`.
    pub(crate) fn submit(&self, op: W) {
        self.op.with_mut(|p| {
            // SAFETY: in state EMPTY only the owning thread touches `op`
            // (module docs); we are that thread.
            unsafe { *p = Some(op) }
        });
        // Release: publishes `op`; pairs with the Acquire in `is_pending`.
        let order = mutants::ordering!("context_submit_relaxed", Release, Relaxed);
        self.state.store(PENDING, order);
    }

    /// Whether the slot holds an operation for the combiner.
    pub(crate) fn is_pending(&self) -> bool {
        // Acquire: pairs with the Release in `submit`; makes `op` visible.
        self.state.load(Ordering::Acquire) == PENDING
    }

    /// The combiner takes the pending operation.
    ///
    /// # Safety
    ///
    /// The caller holds the combiner lock of this slot's replica and saw
    /// [`is_pending`](Self::is_pending) return true.
    pub(crate) unsafe fn take_op(&self) -> W {
        let op = self.op.with_mut(|p| {
            // SAFETY: state is PENDING and we are the only combiner (lock
            // held), so nobody else touches `op`.
            unsafe { (*p).take() }
        });
        // Relaxed: only the combiner reads TAKEN (the thread waits for DONE);
        // the thread learns of our progress through the Release in `publish`.
        // A taken operation that is never published (the instance was
        // poisoned first) must not be collected again; TAKEN says so here,
        // and `Shared::combine` also refuses to collect once poisoned, so
        // mutant `context_take_keeps_pending`, which leaves the slot
        // PENDING, is caught by no model: it is equivalent while that check
        // stands (loom-tests/README.md).
        if !mutants::skip!("context_take_keeps_pending") {
            self.state.store(TAKEN, Ordering::Relaxed);
        }
        op.expect("a PENDING context holds an operation")
    }

    /// The combiner stores the result of the operation it took; the thread
    /// sees it only after [`publish`](Self::publish).
    ///
    /// # Safety
    ///
    /// The caller took this slot's operation with [`take_op`](Self::take_op)
    /// and has not published it yet, or is the slot's own thread combining
    /// its own operation, which bypassed the slot (the slot is `EMPTY`).
    pub(crate) unsafe fn store_result(&self, outcome: Outcome<R>) {
        self.result.with_mut(|p| {
            // SAFETY: state is TAKEN: only the combiner that took the
            // operation writes `result`, and the thread does not read it yet.
            unsafe { *p = Some(outcome) }
        });
    }

    /// The combiner hands the stored result (if any) to the thread. A slot
    /// without a result (its operation was not applied because the instance
    /// was poisoned first) stays TAKEN; its thread sees the poison flag.
    ///
    /// # Safety
    ///
    /// The caller took this slot's operation with [`take_op`](Self::take_op)
    /// in the current combining round and has not published it yet, or is
    /// the slot's own thread (see [`store_result`](Self::store_result)).
    pub(crate) unsafe fn publish(&self) {
        let state = self.result.with(|p| {
            // SAFETY: still TAKEN: the combiner owns `result`.
            match unsafe { &*p } {
                None => None,
                Some(Outcome::Response(_)) => Some(DONE),
                #[cfg(feature = "std")]
                Some(Outcome::Panicked(_)) => Some(PANICKED),
            }
        });
        if let Some(state) = state {
            // Release: publishes `result`; pairs with the Acquire in `poll`.
            let order = mutants::ordering!("context_finish_relaxed", Release, Relaxed);
            self.state.store(state, order);
        }
    }

    /// The owning thread takes back an operation that no combiner will ever
    /// take (its replica was removed). Returns whether there was one.
    ///
    /// # Safety
    ///
    /// Only the slot's own thread may call this, while it holds its
    /// replica's combiner lock (so no combiner is collecting the slot).
    pub(crate) unsafe fn withdraw(&self) -> bool {
        // Relaxed: we hold the combiner lock, whose Acquire ordered every
        // earlier combiner's accesses to this slot before ours.
        if self.state.load(Ordering::Relaxed) != PENDING {
            return false;
        }
        self.op.with_mut(|p| {
            // SAFETY: PENDING and we hold the combiner lock: nobody else
            // touches `op`.
            unsafe { *p = None }
        });
        // Relaxed: as above; the next `submit` publishes with Release.
        self.state.store(EMPTY, Ordering::Relaxed);
        true
    }

    /// The owning thread checks for its result, taking it if it is there.
    pub(crate) fn poll(&self) -> Option<Outcome<R>> {
        // Acquire: pairs with the Release in `publish`.
        let s = self.state.load(Ordering::Acquire);
        if s != DONE && s != PANICKED {
            return None;
        }
        let out = self.result.with_mut(|p| {
            // SAFETY: state is DONE/PANICKED: the combiner is done with the
            // slot and only the owning thread (us) touches `result`.
            unsafe { (*p).take() }
        });
        // Relaxed: EMPTY is only read by this thread (the next `submit`
        // publishes with Release).
        self.state.store(EMPTY, Ordering::Relaxed);
        out
    }
}
