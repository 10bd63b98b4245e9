//! The program's allocator (a module of the binary, installed in `main.rs`): glibc for
//! everything small, and for big buffers (decoded chunks, raw chunk files, pipeline blocks;
//! 1 MiB and up) a private mapping each, backed by transparent huge pages, with freed
//! mappings kept for reuse.
//!
//! Why: a mount or a push moves every byte through freshly allocated multi-MiB buffers. In
//! glibc's own mappings each 4 KiB page faults on first touch and the kernel zeroes it;
//! together that was a quarter of a cold mount read's CPU time (and in a VM whose free
//! memory goes back to the host, first touches cost several times more). Huge pages take
//! one fault per 2 MiB, and reused pages take none and need no zeroing. Heap reuse would
//! avoid faults too, but multi-MiB buffers freed by many threads fragment glibc's arenas
//! until RSS is a multiple of the live data.
//!
//! A mapping is exactly as long as its allocation (rounded to pages: a partial huge page at
//! the end would be backed by a whole one and add up to 2 MiB of RSS per cached chunk).
//! Pooled pages serve any size: a mapping that is too big is trimmed; for one that is too
//! small, several pooled mappings are moved side by side into one window. Chunk sizes
//! vary (1-16 MiB), so without that a 16 MiB chunk would find no freed mapping to use.
//!
//! The pool does not raise the peak RSS of a mount: what goes into it comes out of the
//! chunk cache, which makes room (evicts, or drops what a reader has passed) just before it
//! allocates the chunks it fetches next, so pooled pages stand in for memory that was
//! already counted.

use std::alloc::{GlobalAlloc, Layout, System};

/// Buffers at least this big get their own mapping.
const BIG: usize = 1 << 20;
/// Transparent huge page size on x86-64 and (usually) aarch64.
const HUGE_PAGE: usize = 2 << 20;
const PAGE: usize = 4096;

/// Freed mappings kept for reuse: at most this many, of at most this many bytes in all
/// (three of the largest chunks: with read-ahead, several are freed and fetched at once).
const POOL_SLOTS: usize = 16;
const POOL_BYTES: usize = 48 << 20;

pub struct BigBufferAlloc;

/// Freed big mappings as (address, page-rounded length); (0, 0) is an empty slot. A std
/// Mutex is fine inside the allocator: on Linux it is a futex and never allocates.
struct Pool {
    slots: [(usize, usize); POOL_SLOTS],
    bytes: usize,
}

static POOL: std::sync::Mutex<Pool> = std::sync::Mutex::new(Pool {
    slots: [(0, 0); POOL_SLOTS],
    bytes: 0,
});

/// Pooled pages for a buffer of `len` (page-rounded) bytes: the smallest pooled mapping
/// that is big enough, trimmed to size; else as many of the biggest as it takes, their pages
/// moved side by side into one fresh window (page tables move, nothing is copied or
/// zeroed; only a part no pooled page covers faults in fresh). None when the pool is empty.
unsafe fn take_pooled(len: usize) -> Option<*mut u8> {
    let mut pieces = [(0usize, 0usize); POOL_SLOTS];
    {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        let used = (0..POOL_SLOTS).filter(|&i| pool.slots[i].1 > 0);
        let fits = used
            .clone()
            .filter(|&i| pool.slots[i].1 >= len)
            .min_by_key(|&i| pool.slots[i].1);
        if let Some(best) = fits {
            pieces[0] = std::mem::take(&mut pool.slots[best]);
        } else {
            let mut order: [usize; POOL_SLOTS] = std::array::from_fn(|i| i);
            order.sort_unstable_by_key(|&i| std::cmp::Reverse(pool.slots[i].1));
            let mut covered = 0;
            for (n, &i) in order.iter().enumerate() {
                if covered >= len || pool.slots[i].1 == 0 {
                    break;
                }
                covered += pool.slots[i].1;
                pieces[n] = std::mem::take(&mut pool.slots[i]);
            }
        }
        pool.bytes -= pieces.iter().map(|p| p.1).sum::<usize>();
    }
    let (first, first_len) = pieces[0];
    if first_len == 0 {
        return None;
    }
    if first_len >= len {
        return Some(resize_mapping(first as *mut u8, first_len, len));
    }
    let window = map_big(len);
    if window.is_null() {
        for (addr, piece_len) in pieces.into_iter().filter(|p| p.1 > 0) {
            libc::munmap(addr as *mut libc::c_void, piece_len);
        }
        return None;
    }
    let mut at = 0;
    for (addr, piece_len) in pieces.into_iter().filter(|p| p.1 > 0) {
        // Pieces were taken until they cover the window: only the last one has a rest.
        let used = piece_len.min(len - at);
        if used < piece_len {
            libc::munmap((addr + used) as *mut libc::c_void, piece_len - used);
        }
        let moved = libc::mremap(
            addr as *mut libc::c_void,
            used,
            used,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            window.add(at) as *mut libc::c_void,
        );
        if moved == libc::MAP_FAILED {
            libc::munmap(addr as *mut libc::c_void, used); // that part of the window stays fresh
        }
        at += used;
    }
    Some(window)
}

/// Resizes a mapping from `old` to `new` bytes (page-rounded), keeping
/// its contents and its huge-page alignment; null when out of address space.
unsafe fn resize_mapping(ptr: *mut u8, old: usize, new: usize) -> *mut u8 {
    if new <= old {
        if new < old {
            libc::munmap(ptr.add(new) as *mut libc::c_void, old - new);
        }
        return ptr;
    }
    // Grow in place when the address space after it is free, else move the old pages to
    // the start of a fresh aligned window (page tables move; nothing is copied).
    let grown = libc::mremap(ptr as *mut libc::c_void, old, new, 0);
    if grown != libc::MAP_FAILED {
        return ptr;
    }
    let window = map_big(new);
    if window.is_null() {
        return std::ptr::null_mut();
    }
    let moved = libc::mremap(
        ptr as *mut libc::c_void,
        old,
        old,
        libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
        window as *mut libc::c_void,
    );
    if moved == libc::MAP_FAILED {
        libc::munmap(window as *mut libc::c_void, new);
        return std::ptr::null_mut();
    }
    window
}

/// Keeps a freed mapping of `len` bytes if the pool has room.
fn keep_pooled(ptr: *mut u8, len: usize) -> bool {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.bytes + len > POOL_BYTES {
        return false;
    }
    let Some(free) = pool.slots.iter().position(|&(_, l)| l == 0) else {
        return false;
    };
    pool.slots[free] = (ptr as usize, len);
    pool.bytes += len;
    true
}

fn is_big(size: usize, align: usize) -> bool {
    size >= BIG && align <= PAGE
}

/// Length of the mapping behind a big allocation of `size` bytes.
fn map_len(size: usize) -> usize {
    (size + PAGE - 1) & !(PAGE - 1)
}

/// A fresh zeroed mapping of `size` bytes starting on a huge-page boundary (so the kernel
/// can back it with huge pages), or null.
unsafe fn map_big(size: usize) -> *mut u8 {
    let len = map_len(size);
    // Over-map by one huge page, then trim head and tail to the aligned window.
    let Some(total) = len.checked_add(HUGE_PAGE) else {
        return std::ptr::null_mut();
    };
    let raw = libc::mmap(
        std::ptr::null_mut(),
        total,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        -1,
        0,
    );
    if raw == libc::MAP_FAILED {
        return std::ptr::null_mut();
    }
    let start = raw as usize;
    let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let head = aligned - start;
    if head > 0 {
        libc::munmap(raw, head);
    }
    let tail = HUGE_PAGE - head;
    if tail > 0 {
        libc::munmap((aligned + len) as *mut libc::c_void, tail);
    }
    // Advice only: without THP the mapping still works, with 4 KiB pages.
    libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    aligned as *mut u8
}

unsafe fn unmap_big(ptr: *mut u8, size: usize) {
    let len = map_len(size);
    if !keep_pooled(ptr, len) {
        libc::munmap(ptr as *mut libc::c_void, len);
    }
}

unsafe impl GlobalAlloc for BigBufferAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_big(layout.size(), layout.align()) {
            take_pooled(map_len(layout.size())).unwrap_or_else(|| map_big(layout.size()))
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_big(layout.size(), layout.align()) {
            map_big(layout.size()) // fresh anonymous memory is zero; pooled is not
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_big(layout.size(), layout.align()) {
            unmap_big(ptr, layout.size())
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old_big = is_big(layout.size(), layout.align());
        let new_big = is_big(new_size, layout.align());
        match (old_big, new_big) {
            (false, false) => System.realloc(ptr, layout, new_size),
            (true, true) => resize_mapping(ptr, map_len(layout.size()), map_len(new_size)),
            _ => {
                let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                let new = self.alloc(new_layout);
                if !new.is_null() {
                    std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                    self.dealloc(ptr, layout);
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_buffers_are_aligned_zeroed_and_resizable() {
        let a = BigBufferAlloc;
        unsafe {
            let layout = Layout::from_size_align(3 * BIG + 123, 1).unwrap();
            let p = a.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE_PAGE, 0);
            let bytes = std::slice::from_raw_parts_mut(p, layout.size());
            assert!(bytes.iter().all(|&b| b == 0));
            bytes[layout.size() - 1] = 7;
            bytes[0] = 5;
            // Grow (mremap keeps the contents), shrink below the threshold (copied to the
            // heap), and free.
            let q = a.realloc(p, layout, 5 * BIG);
            assert!(!q.is_null());
            assert_eq!(*q, 5);
            assert_eq!(*q.add(layout.size() - 1), 7);
            let grown = Layout::from_size_align(5 * BIG, 1).unwrap();
            let r = a.realloc(q, grown, 100);
            assert!(!r.is_null());
            assert_eq!(*r, 5);
            a.dealloc(r, Layout::from_size_align(100, 1).unwrap());
        }
    }

    #[test]
    fn freed_mappings_are_reused_trimmed_to_size() {
        let a = BigBufferAlloc;
        unsafe {
            let big = Layout::from_size_align(6 * BIG, 1).unwrap();
            let p = a.alloc(big);
            *p = 1;
            a.dealloc(p, big);
            // Other tests run in parallel and may take it first: then a fresh mapping.
            let small = Layout::from_size_align(2 * BIG + 5, 1).unwrap();
            let q = a.alloc(small);
            assert!(!q.is_null());
            *q.add(small.size() - 1) = 3; // the whole requested range is mapped
            a.dealloc(q, small);
            let zeroed = a.alloc_zeroed(small);
            let bytes = std::slice::from_raw_parts(zeroed, small.size());
            assert!(
                bytes.iter().all(|&b| b == 0),
                "zeroed allocations never come from the pool"
            );
            a.dealloc(zeroed, small);
        }
    }

    #[test]
    fn a_buffer_bigger_than_any_freed_one_is_whole_and_aligned() {
        let a = BigBufferAlloc;
        unsafe {
            // Three freed mappings; the next buffer needs the pages of all of them (or, if
            // a parallel test took some, fresh ones for the rest).
            let piece = Layout::from_size_align(3 * BIG + 4096, 1).unwrap();
            for n in 0..3u8 {
                let p = a.alloc(piece);
                std::ptr::write_bytes(p, n + 1, piece.size());
                a.dealloc(p, piece);
            }
            let whole = Layout::from_size_align(8 * BIG + 100, 8).unwrap();
            let p = a.alloc(whole);
            assert!(!p.is_null());
            assert_eq!(p as usize % HUGE_PAGE, 0);
            std::ptr::write_bytes(p, 0xee, whole.size());
            let bytes = std::slice::from_raw_parts(p, whole.size());
            assert!(bytes.iter().all(|&b| b == 0xee));
            a.dealloc(p, whole);
        }
    }

    #[test]
    fn many_threads_allocating_freeing_and_resizing_never_share_memory() {
        // Each thread fills its buffers with its own byte and checks them before freeing:
        // a region handed out twice (a pool bug) would show up as foreign bytes.
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                std::thread::spawn(move || {
                    let a = BigBufferAlloc;
                    let mut seed = 0x9e37_79b9_u32.wrapping_mul(u32::from(t) + 1);
                    let mut next = move || {
                        seed ^= seed << 13;
                        seed ^= seed >> 17;
                        seed ^= seed << 5;
                        seed as usize
                    };
                    for _ in 0..200 {
                        let size = BIG + next() % (6 * BIG);
                        unsafe {
                            let layout = Layout::from_size_align(size, 8).unwrap();
                            let p = a.alloc(layout);
                            assert!(!p.is_null());
                            std::ptr::write_bytes(p, t, size);
                            let new_size = BIG / 2 + next() % (6 * BIG);
                            let q = a.realloc(p, layout, new_size);
                            assert!(!q.is_null());
                            let kept = std::slice::from_raw_parts(q, size.min(new_size));
                            assert!(kept.iter().all(|&b| b == t));
                            std::ptr::write_bytes(q, t, new_size);
                            std::thread::yield_now();
                            let all = std::slice::from_raw_parts(q, new_size);
                            assert!(all.iter().all(|&b| b == t));
                            a.dealloc(q, Layout::from_size_align(new_size, 8).unwrap());
                        }
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn small_buffers_grow_into_big_ones() {
        let a = BigBufferAlloc;
        unsafe {
            let small = Layout::from_size_align(64, 8).unwrap();
            let p = a.alloc(small);
            *p = 9;
            let q = a.realloc(p, small, 2 * BIG);
            assert_eq!(*q, 9);
            a.dealloc(q, Layout::from_size_align(2 * BIG, 8).unwrap());
        }
    }
}
