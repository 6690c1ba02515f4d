//! The allocator of a policy instance: a bump allocator over an arena in the
//! module's own data, falling back to `memory.grow` for what does not fit.
//!
//! Every call runs in a fresh instance that is thrown away afterwards, so
//! freeing memory is pointless: bumping a pointer is the fastest allocator
//! there is. The arena lies inside the memory the instance starts with, so a
//! typical call never grows its memory, and the host, which keeps those first
//! pages resident between calls, serves it without a page fault. Growth past
//! the arena goes through `memory.grow`, where the host's memory cap applies:
//! an allocation past the cap fails, and the failure becomes a trap.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;

/// Bytes of the arena: enough for a decision over dozens of candidates, and
/// small enough that the arena, a 16 KiB stack and a policy's data share the
/// first 64 KiB page, the one the host keeps resident.
const ARENA_BYTES: usize = 16 * 1024;
const PAGE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);

/// The bump state: the next free address in the arena, then in grown memory.
pub struct BumpAllocator {
    arena: Arena,
    /// Offset of the next free byte in the arena.
    next: UnsafeCell<usize>,
    /// The free range of memory obtained with `memory.grow`: [start, end).
    grown: UnsafeCell<(usize, usize)>,
}

// SAFETY: a policy instance is single-threaded (wasm32 without threads).
unsafe impl Sync for BumpAllocator {}

impl BumpAllocator {
    /// An allocator with an empty arena.
    pub const fn new() -> Self {
        Self {
            arena: Arena(UnsafeCell::new([0; ARENA_BYTES])),
            next: UnsafeCell::new(0),
            grown: UnsafeCell::new((0, 0)),
        }
    }
}

impl Default for BumpAllocator {
    fn default() -> Self {
        Self::new()
    }
}

fn align_up(addr: usize, align: usize) -> usize {
    (addr + align - 1) & !(align - 1)
}

unsafe impl GlobalAlloc for BumpAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = self.arena.0.get() as usize;
        // SAFETY: single-threaded; no other reference to the cells is live.
        let next = unsafe { &mut *self.next.get() };
        let start = align_up(base + *next, layout.align());
        if let Some(end) = start.checked_add(layout.size()) {
            if end <= base + ARENA_BYTES {
                *next = end - base;
                return start as *mut u8;
            }
        }
        // SAFETY: as above.
        let grown = unsafe { &mut *self.grown.get() };
        let start = align_up(grown.0, layout.align());
        if grown.0 != 0 && start + layout.size() <= grown.1 {
            grown.0 = start + layout.size();
            return start as *mut u8;
        }
        // Grow by whole pages, enough for this request and its alignment.
        let pages = (layout.size() + layout.align()).div_ceil(PAGE).max(1);
        #[cfg(target_arch = "wasm32")]
        let old = core::arch::wasm32::memory_grow(0, pages);
        #[cfg(not(target_arch = "wasm32"))]
        let old = {
            let _ = pages;
            usize::MAX
        };
        if old == usize::MAX {
            return core::ptr::null_mut();
        }
        let region = old * PAGE;
        let start = align_up(region, layout.align());
        *grown = (start + layout.size(), region + pages * PAGE);
        start as *mut u8
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {
        // The instance is dropped after the call: nothing to give back.
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `layout` describes `ptr`, as the caller guarantees.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as for `alloc`.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks are valid for the smaller size and distinct.
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size)) };
        }
        new
    }
}
