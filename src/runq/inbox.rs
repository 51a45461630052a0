//! A queue's inbox: where other cores deliver tasks (spawns, wake-ups,
//! migrations) for the queue's owner to accept.
//!
//! Any core may push; only the owner of the current epoch may take. The head
//! word carries the epoch, so a takeover re-tags it and a zombie's take fails:
//! tasks delivered after the fence reach the new owner only.
//!
//! # How it works
//!
//! A Treiber stack of heap nodes whose head word packs `epoch:16 | ptr:48`.
//! Producers CAS a new node on top, keeping the tag. The owner detaches the
//! whole list with one CAS `(e, list) -> (e, empty)` and reverses it (FIFO).
//! Because the consumer always takes everything, a producer never reads another
//! node, so there is no ABA hazard and a node is freed only by the consumer
//! that detached it. A delivery is a *proposal*: the task's own state word
//! (in transit to this queue) decides whether it is accepted, so stale or
//! duplicated deliveries are harmless.
//!
//! # Trade-offs
//!
//! One allocation per delivery, and the epoch tag is the low 16 bits of the
//! 24-bit epoch: a zombie 65 536 takeovers behind could slip past the tag (its
//! accept would still fail on the task word and the ring, see `owner.rs`).
//! Pointers must fit in 48 bits (true for user space on x86-64 and AArch64).

use crate::sync::{AtomicU64, CachePadded, Ordering};
use alloc::boxed::Box;
use alloc::vec::Vec;

use super::task::TaskId;

const PTR_MASK: u64 = (1 << 48) - 1;

struct Node {
    task: u64,
    next: u64,
}

/// What a take found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// The delivered tasks, oldest first.
    Tasks(Vec<TaskId>),
    /// The inbox belongs to a later epoch: the caller is fenced.
    Fenced,
}

/// One queue's inbox. `head` is written by producers (push), the owner
/// (take) and a taker (retag), all by CAS.
pub(crate) struct Inbox {
    head: CachePadded<AtomicU64>,
}

fn tag(epoch: u32) -> u64 {
    u64::from(epoch & 0xffff) << 48
}

impl Inbox {
    /// An empty inbox for the owner of `epoch`.
    pub(crate) fn new(epoch: u32) -> Self {
        Self {
            head: CachePadded::new(AtomicU64::new(tag(epoch))),
        }
    }

    /// Delivers `task`; returns the epoch tag it was delivered under.
    pub(crate) fn push(&self, task: TaskId) -> u64 {
        let node = Box::into_raw(Box::new(Node {
            task: task.to_raw(),
            next: 0,
        }));
        let addr = node as usize as u64;
        assert_eq!(addr & !PTR_MASK, 0, "heap pointer does not fit in 48 bits");
        // Acquire: a first guess of the tag (the CAS below re-reads); pairs
        // with the Release half of the CASes in `retag` and `take`. The node
        // list itself is never read by producers.
        let mut h = self.head.load(Ordering::Acquire);
        loop {
            // SAFETY: `node` came from Box::into_raw above and is not yet
            // published, so this thread has exclusive access to it.
            unsafe { (*node).next = h & PTR_MASK };
            // Release: publishes the node's fields to the consumer's Acquire
            // CAS in `take`; Acquire on failure re-reads the tag.
            match self.head.compare_exchange_weak(
                h,
                (h & !PTR_MASK) | addr,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return h & !PTR_MASK,
                Err(a) => h = a,
            }
        }
    }

    /// The current epoch tag, read by a read-modify-write (that changes
    /// nothing) so that it is ordered against a takeover's `retag`: a sender
    /// that finalised a delivery and then reads the tag it delivered under
    /// knows the takeover's later table scan sees its task word; if it reads
    /// a new tag, its delivery may have gone to the dead owner and it
    /// delivers again (duplicates are harmless: the task word decides).
    pub(crate) fn tag_now(&self) -> u64 {
        // AcqRel: Release makes the caller's task-word CAS visible to a
        // `retag` that reads from this RMW (and so to the scan after it);
        // Acquire reads a `retag` that came first.
        self.head.fetch_add(0, Ordering::AcqRel) & !PTR_MASK
    }

    /// Detaches every delivered task if the inbox still belongs to `epoch`.
    pub(crate) fn take(&self, epoch: u32) -> Take {
        // Acquire: a first guess of the tag (the CAS below re-reads); pairs with
        // the Release half of the CASes in `push`, `take` and `retag`.
        let mut h = self.head.load(Ordering::Acquire);
        loop {
            if h & !PTR_MASK != tag(epoch) {
                return Take::Fenced;
            }
            if h & PTR_MASK == 0 {
                return Take::Tasks(Vec::new());
            }
            // AcqRel: Acquire pairs with the producers' Release CAS (node
            // contents); Release is for the tag we keep.
            match self.head.compare_exchange_weak(
                h,
                tag(epoch),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(a) => h = a,
            }
        }
        let mut out = Vec::new();
        let mut p = h & PTR_MASK;
        while p != 0 {
            let node = p as usize as *mut Node;
            // SAFETY: the CAS above detached the whole list, so this thread is
            // the only one that can reach these nodes; each was created by
            // Box::into_raw in `push` and is freed exactly once, here.
            let node = unsafe { Box::from_raw(node) };
            out.push(TaskId::from_raw(node.task));
            p = node.next;
        }
        out.reverse();
        Take::Tasks(out)
    }

    /// Hands the inbox to the owner of `new_epoch` (the takeover's fence for
    /// deliveries); the queued deliveries stay for the new owner.
    pub(crate) fn retag(&self, new_epoch: u32) {
        // Acquire: a first guess of the tag (the CAS below re-reads); pairs with
        // the Release half of the CASes in `push`, `take` and `retag`.
        let mut h = self.head.load(Ordering::Acquire);
        loop {
            // AcqRel: Release makes the new tag visible to a zombie's `take`
            // CAS, which then fails; Acquire keeps the pushed nodes visible.
            match self.head.compare_exchange_weak(
                h,
                tag(new_epoch) | (h & PTR_MASK),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(a) => h = a,
            }
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        // Relaxed is enough: `&mut self` means no other thread can touch it.
        let mut p = self.head.load(Ordering::Relaxed) & PTR_MASK;
        while p != 0 {
            // SAFETY: with `&mut self` no producer or consumer is left; every
            // node still linked was created by `push` and not yet freed.
            let node = unsafe { Box::from_raw(p as usize as *mut Node) };
            p = node.next;
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn fifo_take_and_retag_fences_the_old_epoch() {
        let ib = Inbox::new(1);
        for s in 1..=3 {
            ib.push(TaskId::new(s, 1));
        }
        assert_eq!(
            ib.take(1),
            Take::Tasks(vec![
                TaskId::new(1, 1),
                TaskId::new(2, 1),
                TaskId::new(3, 1)
            ])
        );
        ib.push(TaskId::new(9, 1));
        ib.retag(2);
        assert_eq!(ib.take(1), Take::Fenced);
        assert_eq!(ib.take(2), Take::Tasks(vec![TaskId::new(9, 1)]));
        ib.push(TaskId::new(10, 1)); // freed by Drop
    }
}
