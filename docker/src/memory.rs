//! Keeping the idle plugin process small.
//!
//! Ceph's client libraries build their option tables in static constructors that run
//! before `main` and use almost 1 MiB of the main thread's stack. Those frames are dead
//! once `main` runs, but the pages stay resident for the life of the process.
//! [`release_unused_stack`] hands them back to the kernel. [`trim_heap`] does the same for
//! the heap after a burst of requests (see BENCHMARKS.md, "List latency and idle
//! memory").

use std::io;

/// How much of the stack below the current frame [`release_unused_stack`] leaves alone:
/// room for the frames of the call itself (a few hundred bytes) with a wide margin, and
/// for the shallow frames the caller will use next, so they need not fault back in.
pub const STACK_MARGIN: usize = 64 * 1024;

/// Returns to the kernel the pages of the calling thread's stack that lie more than
/// [`STACK_MARGIN`] below the current frame, and returns how many bytes that range spans
/// (0 if the stack is shallower than the margin).
///
/// The stack is the mapping in `/proc/self/maps` that holds the current stack pointer
/// (`[stack]` on the main thread); the range from its low end up to the page-aligned
/// stack pointer minus [`STACK_MARGIN`] is released with `madvise(MADV_DONTNEED)`. Those
/// pages hold only dead frames: a stack grows down, every live frame is above the stack
/// pointer. When the thread goes that deep again they fault back in as zero pages, like
/// stack never touched before, so this is only worth calling once, after something
/// deep is over (the plugin calls it at the top of `main`).
///
/// Errors: `/proc/self/maps` unreadable, no mapping holds the stack pointer, or
/// `madvise(2)` failed; nothing is changed then.
#[cfg(target_os = "linux")]
#[inline(never)]
pub fn release_unused_stack() -> io::Result<usize> {
    // The address of a local of this (never inlined) frame: at most a few bytes above the
    // stack pointer, and below every frame of the callers.
    let marker = 0u8;
    let sp = std::hint::black_box(&marker) as *const u8 as usize;
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    let (low, _high) = mapping_containing(&maps, sp).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("no mapping in /proc/self/maps holds the stack pointer {sp:#x}"),
        )
    })?;
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => 4096,
    };
    let end = sp.saturating_sub(STACK_MARGIN) & !(page - 1);
    if end <= low {
        return Ok(0);
    }
    let len = end - low;
    // SAFETY: [low, end) is page aligned (mapping starts are) and lies inside the private
    // anonymous mapping that holds this thread's stack, entirely below the current stack
    // pointer minus STACK_MARGIN. No live frame of this thread is there (the stack grows
    // down and every caller's frame is above `marker`), and no other thread runs on this
    // stack, so nothing refers to that memory any more. MADV_DONTNEED drops the pages;
    // the next access faults in zero pages, which is what an untouched stack holds.
    let rc = unsafe { libc::madvise(low as *mut libc::c_void, len, libc::MADV_DONTNEED) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len)
}

/// Not Linux: nothing is released.
#[cfg(not(target_os = "linux"))]
pub fn release_unused_stack() -> io::Result<usize> {
    Ok(0)
}

/// Returns the free memory of every malloc arena to the kernel (glibc's `malloc_trim(0)`)
/// and says whether any was released.
///
/// glibc gives back freed memory on its own only from the top of each heap; what a burst
/// of requests (or Ceph's connect) allocated and freed in the middle stays resident until
/// this is called. It walks the free lists under each arena's lock: well under a
/// millisecond for a heap of the plugin's size. Not glibc: nothing is done.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim_heap() -> bool {
    // SAFETY: malloc_trim(3) has no preconditions and is thread safe (it takes each
    // arena's lock); it only releases pages that hold no allocated block.
    unsafe { libc::malloc_trim(0) != 0 }
}

/// Not glibc: nothing is released.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim_heap() -> bool {
    false
}

/// Makes every thread allocate from one malloc arena (glibc's `mallopt(M_ARENA_MAX, 1)`)
/// and says whether glibc took it. Call it before any thread starts.
///
/// By default glibc gives threads that contend for the heap arenas of their own (up to
/// eight per core), and an arena keeps about half a megabyte resident once its threads
/// are idle or gone, which [`trim_heap`] cannot give back. After a burst of 1000 Creates
/// that was 3 MiB of the plugin's RSS (BENCHMARKS.md). The plugin allocates little and
/// rarely from several threads at once (the volume work runs in its worker process, which
/// keeps the default), so the lock contention this trades for is not measurable there.
/// Not glibc: nothing is done.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn single_arena() -> bool {
    // SAFETY: mallopt(3) only changes an allocator parameter; M_ARENA_MAX affects arenas
    // created after the call.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) == 1 }
}

/// Not glibc: nothing is done.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn single_arena() -> bool {
    false
}

/// The `[start, end)` of the mapping in a `/proc/PID/maps` text that holds `addr`.
fn mapping_containing(maps: &str, addr: usize) -> Option<(usize, usize)> {
    maps.lines().find_map(|line| {
        let range = line.split_whitespace().next()?;
        let (a, b) = range.split_once('-')?;
        let start = usize::from_str_radix(a, 16).ok()?;
        let end = usize::from_str_radix(b, 16).ok()?;
        (start <= addr && addr < end).then_some((start, end))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The resident KiB of the mapping that holds `addr`, from `/proc/self/smaps`.
    fn rss_kib_of_mapping(addr: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut inside = false;
        for line in smaps.lines() {
            if let Some(range) = line.split_whitespace().next()
                && let Some((a, b)) = range.split_once('-')
                && let (Ok(start), Ok(end)) =
                    (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
            {
                inside = start <= addr && addr < end;
                continue;
            }
            if inside && let Some(v) = line.strip_prefix("Rss:") {
                return v.trim().trim_end_matches("kB").trim().parse().unwrap();
            }
        }
        panic!("no mapping holds {addr:#x}");
    }

    /// Recurses until `depth` bytes of stack below `top` are in use, writing a pattern
    /// into each frame's buffer and checking it once the deeper calls have returned;
    /// returns how many frames it used. (Frame sizes differ between debug and release
    /// builds, so the depth is measured, not counted.)
    #[inline(never)]
    fn touch_stack(top: usize, depth: usize, seed: u8) -> usize {
        let mut buf = [0u8; 16 * 1024];
        for (i, b) in buf.iter_mut().enumerate() {
            *b = seed.wrapping_add(i as u8);
        }
        let here = std::hint::black_box(&mut buf) as *mut _ as usize;
        let deeper = if top - here < depth {
            touch_stack(top, depth, seed.wrapping_add(1))
        } else {
            0
        };
        let intact = buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == seed.wrapping_add(i as u8));
        assert!(intact, "a live frame changed");
        deeper + 1
    }

    #[test]
    fn releases_dead_stack_pages_and_the_thread_keeps_working() {
        const DEEP: usize = 3 * 1024 * 1024;
        let t = std::thread::Builder::new()
            .stack_size(16 * 1024 * 1024)
            .spawn(|| {
                // A live buffer in this frame must survive the release.
                let live = std::hint::black_box([0xa5u8; 16 * 1024]);
                let here = std::hint::black_box(&live) as *const _ as usize;
                assert!(touch_stack(here, DEEP, 7) > 1);
                let before = rss_kib_of_mapping(here);
                assert!(before >= 3 * 1024, "deep frames resident: {before} KiB");

                let released = release_unused_stack().unwrap();
                let after = rss_kib_of_mapping(here);
                assert!(
                    released >= DEEP - STACK_MARGIN - 128 * 1024,
                    "released only {released} bytes"
                );
                assert!(
                    after + 2 * 1024 <= before,
                    "stack RSS {before} KiB -> {after} KiB"
                );
                assert!(live.iter().all(|&b| b == 0xa5), "live frame changed");

                // Going deep again works: fresh zero pages, new data reads back.
                assert!(touch_stack(here, DEEP, 42) > 1);
                assert!(rss_kib_of_mapping(here) >= 3 * 1024);
                assert!(live.iter().all(|&b| b == 0xa5), "live frame changed");
            })
            .unwrap();
        t.join().unwrap();
    }

    #[test]
    fn a_shallow_stack_keeps_its_top_pages() {
        let t = std::thread::Builder::new()
            .stack_size(STACK_MARGIN)
            .spawn(|| {
                let live = std::hint::black_box([0x5au8; 4096]);
                // The whole stack is within the margin: nothing to release.
                assert_eq!(release_unused_stack().unwrap(), 0);
                assert!(live.iter().all(|&b| b == 0x5a));
            })
            .unwrap();
        t.join().unwrap();
    }

    #[test]
    fn finds_the_mapping_that_holds_an_address() {
        let maps = "55e8d7604000-55e8d76c7000 rw-p 00000000 00:00 0 [heap]\n\
                    7ffd7d205000-7ffd7d2fa000 rw-p 00000000 00:00 0 [stack]\n";
        assert_eq!(
            mapping_containing(maps, 0x7ffd7d2f0000),
            Some((0x7ffd7d205000, 0x7ffd7d2fa000))
        );
        assert_eq!(
            mapping_containing(maps, 0x55e8d7604000),
            Some((0x55e8d7604000, 0x55e8d76c7000))
        );
        assert_eq!(mapping_containing(maps, 0x7ffd7d2fa000), None);
        assert_eq!(mapping_containing("garbage\n", 1), None);
    }

    /// This process's VmRSS in KiB.
    fn process_rss_kib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_heap_returns_freed_blocks_below_a_live_one() {
        const BLOCK: usize = 4096;
        const BLOCKS: usize = 8192; // 32 MiB
        // Small blocks come from the heap, not from mmap. The block allocated last stays
        // alive above the freed ones, so free() cannot shrink the heap from the top: only
        // trim_heap can give those pages back.
        let mut blocks: Vec<Vec<u8>> = (0..BLOCKS).map(|i| vec![i as u8 | 1; BLOCK]).collect();
        let pin = std::hint::black_box(vec![7u8; BLOCK]);
        let full = process_rss_kib();
        blocks.clear();
        blocks.shrink_to_fit();
        let freed = process_rss_kib();
        assert!(trim_heap(), "malloc_trim released nothing");
        let trimmed = process_rss_kib();
        assert!(
            trimmed + 16 * 1024 <= freed,
            "RSS {full} KiB full, {freed} KiB after free, {trimmed} KiB after trim_heap"
        );
        // The heap still works, and the live block is intact.
        assert!(pin.iter().all(|&b| b == 7));
        let again: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; BLOCK]).collect();
        assert!(
            again
                .iter()
                .enumerate()
                .all(|(i, v)| v.iter().all(|&b| b == i as u8))
        );
    }
}
