//! The guest's global allocator (feature `allocator`, on by default): a heap in the memory the
//! module already has.
//!
//! Rust's own allocator on `wasm32` (dlmalloc) takes its first 64 KiB from `memory.grow` on the
//! first allocation, which every request makes, and a grow costs the host a system call and a
//! larger memory to reset after the request. This heap starts at `__heap_base`, in the pages the
//! module declares after its stack and data, and grows memory only when they are full.
//!
//! Blocks need no header (`dealloc` is told the layout): small ones are powers of two from 16 bytes
//! to 64 KiB with a free list per size, larger ones multiples of 4 KiB on one first-fit list (split
//! to the size asked). A block freed at the top of the heap returns to it, and `realloc` resizes the
//! top block in place, so a growing `Vec` or `String` does not copy. Every request runs in a fresh
//! isolate (one thread, nothing shared), so the heap never outlives a request.
//!
//! To use an allocator of your own, depend on the SDK with `default-features = false`.

use core::alloc::{GlobalAlloc, Layout};
use core::arch::wasm32;
use core::ptr::{self, addr_of, addr_of_mut};

const ALIGN: usize = 16;
const SMALL_MIN: u32 = 4; // 16-byte blocks
const SMALL_MAX: u32 = 16; // 64 KiB blocks
const LARGE_UNIT: usize = 4096;
const MAX_REQUEST: usize = 0x7fff_0000;
const PAGE: u64 = 65536;

extern "C" {
    /// From the linker: where the stack and data end.
    static __heap_base: u8;
}

#[link(wasm_import_module = "isolate")]
extern "C" {
    /// Tells the host an allocation failed (ABI.md, "Out of memory").
    #[link_name = "out_of_memory"]
    fn host_out_of_memory(requested: u32);
}

/// An allocation of `size` bytes failed: the memory limit refused to grow memory (or `size` could
/// never fit). The host is told before Rust's alloc-error handler aborts with a bare `unreachable`,
/// so it reports `memory_limit` with the size; a `try_reserve` that recovers still answers (the host
/// only logs the failure).
#[cold]
fn failed(size: usize) -> *mut u8 {
    unsafe { host_out_of_memory(size.min(u32::MAX as usize) as u32) };
    ptr::null_mut()
}

/// Free blocks keep their list's next pointer (0: none), large ones their size after it.
struct State {
    top: usize,
    small: [usize; SMALL_MAX as usize + 1],
    large: usize,
}

static mut STATE: State = State { top: 0, small: [0; SMALL_MAX as usize + 1], large: 0 };

/// The heap; installed as the global allocator by the `allocator` feature.
pub struct Heap;

/// The block that holds `size` bytes.
fn block_size(size: usize) -> Option<usize> {
    if size > MAX_REQUEST {
        None
    } else if size <= 1 << SMALL_MIN {
        Some(1 << SMALL_MIN)
    } else if size <= 1 << SMALL_MAX {
        Some(size.next_power_of_two())
    } else {
        Some((size + LARGE_UNIT - 1) & !(LARGE_UNIT - 1))
    }
}

/// Memory up to `end` exists, grown if need be; false when the module's memory limit refuses.
fn reserve(end: u64) -> bool {
    if end >= 1 << 32 {
        return false; // the top must stay a 32-bit address
    }
    let have = wasm32::memory_size(0) as u64 * PAGE;
    if end <= have {
        return true;
    }
    wasm32::memory_grow(0, ((end - have + PAGE - 1) / PAGE) as usize) != usize::MAX
}

unsafe fn state() -> &'static mut State {
    &mut *addr_of_mut!(STATE)
}

/// A new block of `size` bytes at the top of the heap, aligned to `align`.
unsafe fn bump(size: usize, align: usize) -> *mut u8 {
    let s = state();
    if s.top == 0 {
        s.top = addr_of!(__heap_base) as usize;
    }
    let start = (s.top as u64 + align as u64 - 1) & !(align as u64 - 1);
    if !reserve(start + size as u64) {
        return ptr::null_mut();
    }
    s.top = (start + size as u64) as usize;
    start as usize as *mut u8
}

unsafe impl GlobalAlloc for Heap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let size = match block_size(layout.size()) {
            Some(size) => size,
            None => return failed(layout.size()),
        };
        let s = state();
        if layout.align() <= ALIGN {
            if size <= 1 << SMALL_MAX {
                let list = &mut s.small[size.trailing_zeros() as usize];
                if *list != 0 {
                    let block = *list;
                    *list = *(block as *const usize);
                    return block as *mut u8;
                }
            } else {
                let mut at: *mut usize = &mut s.large;
                while *at != 0 {
                    let block = *at;
                    let next = *(block as *const usize);
                    let have = *((block as *const usize).add(1));
                    if have >= size {
                        *at = next;
                        if have > size {
                            let rest = (block + size) as *mut usize;
                            *rest = s.large;
                            *rest.add(1) = have - size;
                            s.large = rest as usize;
                        }
                        return block as *mut u8;
                    }
                    at = block as *mut usize;
                }
            }
        }
        let block = bump(size, layout.align().max(ALIGN));
        if block.is_null() {
            return failed(layout.size());
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let size = match block_size(layout.size()) {
            Some(size) => size,
            None => return,
        };
        let s = state();
        let at = block as usize;
        if at + size == s.top {
            s.top = at; // the top block: give it back to the heap
        } else if size <= 1 << SMALL_MAX {
            let list = &mut s.small[size.trailing_zeros() as usize];
            *(block as *mut usize) = *list;
            *list = at;
        } else {
            *(block as *mut usize) = s.large;
            *(block as *mut usize).add(1) = size;
            s.large = at;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old, new) = match (block_size(layout.size()), block_size(new_size)) {
            (Some(old), Some(new)) => (old, new),
            _ => return failed(new_size),
        };
        if new == old {
            return block;
        }
        let s = state();
        let at = block as usize;
        if at + old == s.top && reserve(at as u64 + new as u64) {
            s.top = at + new; // the top block grows or shrinks where it is
            return block;
        }
        let moved = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !moved.is_null() {
            ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size));
            self.dealloc(block, layout);
        }
        moved
    }
}
