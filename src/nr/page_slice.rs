//! A fixed-length slice in pages of its own.
//!
//! # How it works
//!
//! A replica's thread slots and reader flags are touched all the time by the
//! replica's own threads, so they must sit on the replica's NUMA node. The
//! builder moves them there after building (move_pages), and a page can only
//! be on one node: an ordinary heap slice may share its first and last page
//! with another replica's slots (two build threads can get the same
//! allocator arena), and then whichever move ran last wins. [`PageSlice`]
//! allocates from the global allocator with page alignment and a length
//! rounded up to whole pages, so nothing else ever shares its pages.
//!
//! # Trade-offs
//!
//! Up to one page minus one element is wasted per slice. [`PAGE`] is the
//! base page of x86-64 and of most arm64 kernels; on a kernel with larger
//! pages the slice still starts and ends on a 4 KiB boundary, which keeps
//! it off other allocations' cache lines but not off their pages.

use alloc::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use core::ops::Deref;
use core::ptr::NonNull;

/// The page size the slices are aligned and padded to.
pub(crate) const PAGE: usize = 4096;

/// A boxed slice of `T` that shares no page with any other allocation.
pub(crate) struct PageSlice<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: a PageSlice owns its elements exactly like a Box<[T]> does.
unsafe impl<T: Send> Send for PageSlice<T> {}
// SAFETY: shared access only hands out `&[T]`, as a Box<[T]> does.
unsafe impl<T: Sync> Sync for PageSlice<T> {}

impl<T> PageSlice<T> {
    /// `len` elements, the `i`th made by `make(i)`. `make` must not panic
    /// (the crate passes constructors of atomics and empty slots); if it
    /// did, the elements made so far and the allocation would leak.
    pub(crate) fn from_fn(len: usize, mut make: impl FnMut(usize) -> T) -> Self {
        let layout = Self::layout(len);
        if layout.size() == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len,
            };
        }
        // SAFETY: `layout` has a non-zero size (checked above).
        let raw = unsafe { alloc(layout) }.cast::<T>();
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        for i in 0..len {
            // SAFETY: `i < len` and the allocation holds at least `len`
            // elements of `T`, suitably aligned (`layout`); each slot is
            // written once, before any read.
            unsafe { ptr.as_ptr().add(i).write(make(i)) };
        }
        Self { ptr, len }
    }

    /// Page-aligned, whole pages, at least `len` elements (zero-sized when
    /// `len` or `T` is).
    fn layout(len: usize) -> Layout {
        let elements = Layout::array::<T>(len).expect("a slice that fits in memory");
        if elements.size() == 0 {
            return elements;
        }
        elements
            .align_to(PAGE.max(elements.align()))
            .expect("page alignment is a valid power of two")
            .pad_to_align()
    }
}

impl<T> Deref for PageSlice<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `ptr` points to `len` initialised elements (`from_fn`),
        // or is dangling with a zero-sized layout, which is valid for an
        // empty or zero-sized slice; the elements live as long as `self`.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for PageSlice<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        // SAFETY: the `len` elements were initialised in `from_fn` and are
        // dropped exactly once, here; the memory was allocated with this
        // same layout unless it is zero-sized, in which case nothing was
        // allocated.
        unsafe {
            core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            ));
            if layout.size() != 0 {
                dealloc(self.ptr.as_ptr().cast::<u8>(), layout);
            }
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use alloc::sync::Arc;

    #[test]
    fn slices_start_on_a_page_and_fill_whole_pages() {
        for len in [1usize, 3, 31, 32, 33, 1000] {
            let s = PageSlice::from_fn(len, |i| [i as u64; 16]);
            assert_eq!(s.len(), len);
            assert_eq!(s.as_ptr() as usize % PAGE, 0, "len {len}");
            assert!(s.iter().enumerate().all(|(i, e)| e[0] == i as u64));
            let layout = PageSlice::<[u64; 16]>::layout(len);
            assert_eq!(layout.size() % PAGE, 0);
            assert!(layout.size() >= len * 128);
        }
    }

    #[test]
    fn every_element_is_dropped_once() {
        let counter = Arc::new(());
        let s = PageSlice::from_fn(100, |_| Arc::clone(&counter));
        assert_eq!(Arc::strong_count(&counter), 101);
        drop(s);
        assert_eq!(Arc::strong_count(&counter), 1);
    }

    #[test]
    fn empty_and_zero_sized_slices_allocate_nothing() {
        let empty = PageSlice::<u64>::from_fn(0, |_| 0);
        assert!(empty.is_empty());
        let units = PageSlice::from_fn(5, |_| ());
        assert_eq!(units.len(), 5);
    }
}
