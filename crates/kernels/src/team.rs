//! A small team of threads for the matrix products of one decoding step.
//!
//! A decoding step is ~200 matrix products of a few hundred microseconds each,
//! with serial work (norms, attention) in between. Forking each product onto
//! rayon's pool cost a futex wake-up or sleep per product (9% of the time in
//! the kernel's scheduler at 2 threads). Here the caller drives the step and
//! the helpers wait at a spinning barrier, so handing out a product costs two
//! barrier crossings (well under a microsecond when both threads run).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Threads for a team: `CANDLE_NUM_THREADS`, else rayon's pool size; read
/// once per process (it is asked for at every decoding step).
pub fn threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::env::var("CANDLE_NUM_THREADS")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&n| n > 0)
            .unwrap_or_else(rayon::current_num_threads)
    })
}

/// Spins this many rounds at a barrier before yielding the CPU to others.
const SPINS: u32 = 1 << 14;

/// A reusable barrier for a fixed number of threads that spins, then yields.
struct SpinBarrier {
    n: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
}

impl SpinBarrier {
    fn new(n: usize) -> SpinBarrier {
        SpinBarrier {
            n,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
        }
    }

    /// Returns once all `n` threads have called `wait` for this round.
    fn wait(&self) {
        let g = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.n {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == g {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// The job the helpers run: a part index `1..threads`, or `None` to leave.
type Job<'a> = Option<&'a (dyn Fn(usize) + Sync)>;

/// One team at a time: two teams would fight over the same cores.
static ACTIVE: Mutex<()> = Mutex::new(());

/// The caller's handle on a running team: [`Team::run`] splits work.
pub struct Team<'s> {
    threads: usize,
    barrier: &'s SpinBarrier,
    /// Written by the caller between barriers, read by helpers after one.
    job: &'s JobSlot,
    /// Set by a helper whose part panicked.
    panicked: &'s std::sync::atomic::AtomicBool,
    /// Set while a job runs: a `run` from inside a job (any thread) runs its parts
    /// serially instead of handing the helpers a second job.
    busy: std::sync::atomic::AtomicBool,
}

/// Where the caller leaves the current job for the helpers.
struct JobSlot(std::cell::UnsafeCell<Job<'static>>);

// SAFETY: the slot is written only by the caller while every helper waits at
// the barrier, and read by helpers only after the barrier that follows the
// write; the barrier's acquire/release orders the accesses.
unsafe impl Sync for JobSlot {}

impl Team<'_> {
    /// Threads in the team (the caller included).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f(part)` for every part `0..threads`, the caller taking part 0,
    /// and returns when all parts are done.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        if self.threads == 1 {
            f(0);
            return;
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            // Called from inside a running job: the helpers are busy with that one,
            // so every part of this one runs here, in order.
            for part in 0..self.threads {
                f(part);
            }
            return;
        }
        struct Done<'a>(&'a std::sync::atomic::AtomicBool);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::Release);
            }
        }
        let _done = Done(&self.busy);
        // SAFETY: the helpers are all waiting at the barrier below (they only
        // read the slot between the next two barriers), and `f` outlives
        // their use of it: this function returns only after the second
        // barrier, once every helper is done with `f`.
        unsafe {
            *self.job.0.get() = Some(std::mem::transmute::<
                &(dyn Fn(usize) + Sync),
                &'static (dyn Fn(usize) + Sync),
            >(f));
        }
        self.barrier.wait();
        // Every thread reaches the second barrier even if its part panics,
        // so a panic propagates instead of leaving the others waiting.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0)));
        self.barrier.wait();
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if self.panicked.load(Ordering::Acquire) {
            panic!("a decoding helper thread panicked");
        }
    }

    /// Splits `out` into pieces of `chunk` values and runs `f(t, piece, scratch)` for
    /// every piece `t`, the pieces shared out over the team (each part with its own
    /// `scratch`, from `S::default()`). A safe front to [`SharedOut`]: the pieces are
    /// disjoint. A tail shorter than `chunk` is left alone.
    pub fn for_each_chunk<T: Send, S: Default>(
        &self,
        out: &mut [T],
        chunk: usize,
        f: &(dyn Fn(usize, &mut [T], &mut S) + Sync),
    ) {
        if chunk == 0 {
            return;
        }
        let tasks = out.len() / chunk;
        let ys = SharedOut::new(out);
        self.run(&|part| {
            let (lo, hi) = part_range(tasks, part, self.threads());
            let mut scratch = S::default();
            for t in lo..hi {
                // SAFETY: piece `t` is `t * chunk..(t + 1) * chunk`, in bounds, and no
                // other task of this run touches it; `out` is borrowed for the run.
                let piece = unsafe { ys.slice(t * chunk, chunk) };
                f(t, piece, &mut scratch);
            }
        });
    }
}

/// Runs `drive` with a team of up to `threads` threads (the caller and
/// helpers from rayon's pool). Falls back to a team of one when another team
/// is running, or when called from inside the pool (helpers might then wait
/// for a pool thread that never frees up).
pub fn with_team<R>(threads: usize, drive: impl FnOnce(&Team<'_>) -> R) -> R {
    let threads = threads.min(rayon::current_num_threads()).max(1);
    let guard: Option<MutexGuard<'_, ()>> =
        if threads > 1 && rayon::current_thread_index().is_none() {
            match ACTIVE.try_lock() {
                Ok(g) => Some(g),
                // A team that panicked held the lock; it holds no state.
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        } else {
            None
        };
    let barrier;
    let job = JobSlot(std::cell::UnsafeCell::new(None));
    let panicked = std::sync::atomic::AtomicBool::new(false);
    let Some(_guard) = guard else {
        barrier = SpinBarrier::new(1);
        return drive(&Team {
            threads: 1,
            barrier: &barrier,
            job: &job,
            panicked: &panicked,
            busy: std::sync::atomic::AtomicBool::new(false),
        });
    };
    barrier = SpinBarrier::new(threads);
    let team = Team {
        threads,
        barrier: &barrier,
        job: &job,
        panicked: &panicked,
        busy: std::sync::atomic::AtomicBool::new(false),
    };
    rayon::in_place_scope(|s| {
        for part in 1..threads {
            let (barrier, job, panicked) = (&barrier, &job, &panicked);
            s.spawn(move |_| {
                loop {
                    barrier.wait();
                    // SAFETY: the caller wrote the slot before this barrier
                    // and does not touch it until the next one.
                    let Some(f) = (unsafe { *job.0.get() }) else {
                        return;
                    };
                    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(part)));
                    if run.is_err() {
                        panicked.store(true, Ordering::Release);
                    }
                    barrier.wait();
                }
            });
        }
        // Release the helpers however `drive` ends (a panic included).
        struct Dismiss<'a>(&'a Team<'a>);
        impl Drop for Dismiss<'_> {
            fn drop(&mut self) {
                // SAFETY: the helpers wait at the barrier (between jobs).
                unsafe { *self.0.job.0.get() = None };
                self.0.barrier.wait();
            }
        }
        let _dismiss = Dismiss(&team);
        drive(&team)
    })
}

/// An output buffer that a team fills, each thread its own disjoint part
/// (f32 results; the AMX kernel also shares its u16 activation tiles).
pub struct SharedOut<T = f32> {
    pub(crate) ptr: *mut T,
    pub(crate) len: usize,
}

// SAFETY: threads write disjoint parts (the contract of `SharedOut::slice`
// and of its users); the values themselves move between threads.
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// Shares `ys` (borrowed mutably for as long as the result is used).
    pub fn new(ys: &mut [T]) -> SharedOut<T> {
        SharedOut {
            ptr: ys.as_mut_ptr(),
            len: ys.len(),
        }
    }

    /// `len` values from `at`, for one thread.
    ///
    /// # Safety
    /// The buffer must outlive the slice, and no other thread may touch
    /// `at..at + len` while it is in use.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, at: usize, len: usize) -> &mut [T] {
        assert!(at + len <= self.len, "slice out of bounds");
        // SAFETY: in bounds (asserted); exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }
}

/// Rows `lo..hi` of `rows` that part `part` of `parts` takes: contiguous,
/// in multiples of 4 (the kernels' row tile).
pub fn part_rows(rows: usize, part: usize, parts: usize) -> (usize, usize) {
    let chunk = rows.div_ceil(parts.max(1)).div_ceil(4) * 4;
    let lo = (part * chunk).min(rows);
    (lo, (lo + chunk).min(rows))
}

/// Tasks `lo..hi` of `tasks` that part `part` of `parts` takes: contiguous,
/// as even as can be.
pub fn part_range(tasks: usize, part: usize, parts: usize) -> (usize, usize) {
    let parts = parts.max(1);
    (tasks * part / parts, tasks * (part + 1) / parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn parts_cover_the_rows_once() {
        for rows in [1, 7, 576, 49152] {
            for parts in 1..5 {
                let mut next = 0;
                for p in 0..parts {
                    let (lo, hi) = part_rows(rows, p, parts);
                    assert_eq!(lo, next.min(rows));
                    assert!(hi >= lo && (hi == rows || (hi - lo) % 4 == 0));
                    next = hi;
                }
                assert_eq!(next, rows);
            }
        }
    }

    #[test]
    fn a_panicking_part_panics_the_caller_instead_of_hanging() {
        for bad in [0, 1] {
            let r = std::panic::catch_unwind(|| {
                with_team(2, |team| {
                    team.run(&|part| {
                        if part == bad || team.threads() == 1 {
                            panic!("part {part} fails");
                        }
                    });
                })
            });
            assert!(r.is_err(), "part {bad}");
            // Teams of 2 form again afterwards (once other tests' teams end).
            let want = 2.min(rayon::current_num_threads());
            let again = (0..2000).any(|_| {
                std::thread::sleep(std::time::Duration::from_millis(1));
                with_team(2, |t| t.threads()) == want
            });
            assert!(again, "no team of {want} after a panic");
        }
    }

    #[test]
    fn every_part_runs_once_per_job() {
        let sum = AtomicU64::new(0);
        let used = with_team(2, |team| {
            for round in 0..1000u64 {
                team.run(&|part| {
                    sum.fetch_add(round * 10 + part as u64 + 1, Ordering::Relaxed);
                });
            }
            team.threads()
        });
        let per_round: u64 = (1..=used as u64).sum();
        let want: u64 = (0..1000u64).map(|r| r * 10 * used as u64 + per_round).sum();
        assert_eq!(sum.load(Ordering::Relaxed), want);
    }

    #[test]
    fn a_run_inside_a_run_does_every_part_serially() {
        let sum = AtomicU64::new(0);
        with_team(2, |team| {
            team.run(&|outer| {
                team.run(&|inner| {
                    sum.fetch_add((outer * 10 + inner + 1) as u64, Ordering::Relaxed);
                });
            });
            let n = team.threads() as u64;
            // Every (outer, inner) pair once.
            let want: u64 = (0..n)
                .flat_map(|o| (0..n).map(move |i| o * 10 + i + 1))
                .sum();
            assert_eq!(sum.load(Ordering::Relaxed), want);
        });
    }
}
