//! A small scoped worker pool: `n` independent jobs on a bounded number of
//! threads, results in index order.
//!
//! Workers take the next unclaimed index from a shared counter, so slow jobs
//! do not hold up fast ones. With one worker (or one job) everything runs on
//! the calling thread.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Runs `f(i)` for every `i` in `0..n` on at most `workers` threads and
/// returns the results in index order.
pub fn parallel_map<T: Send>(n: usize, workers: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let stop = AtomicBool::new(false);
    let ran = run(n, workers, &stop, &|i| f(i), &|_| false);
    ran.into_iter().map(|(_, v)| v).collect()
}

/// Like [`parallel_map`] for fallible jobs: after the first error no new
/// index is handed out, and the error of the lowest failed index is returned.
pub fn try_parallel_map<T: Send, E: Send>(
    n: usize,
    workers: usize,
    f: impl Fn(usize) -> std::result::Result<T, E> + Sync,
) -> std::result::Result<Vec<T>, E> {
    let stop = AtomicBool::new(false);
    let ran = run(n, workers, &stop, &|i| f(i), &|r| r.is_err());
    // Every index ran unless some job failed, and then the error is returned.
    ran.into_iter().map(|(_, r)| r).collect()
}

/// Runs the jobs; `fails` marks a result that stops the handing out of new
/// indices. Returns `(index, result)` sorted by index.
fn run<T: Send>(
    n: usize,
    workers: usize,
    stop: &AtomicBool,
    f: &(dyn Fn(usize) -> T + Sync),
    fails: &(dyn Fn(&T) -> bool + Sync),
) -> Vec<(usize, T)> {
    let workers = workers.clamp(1, n.max(1));
    let next = AtomicUsize::new(0);
    let worker = || {
        let mut out = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= n {
                break;
            }
            let v = f(i);
            if fails(&v) {
                stop.store(true, Ordering::SeqCst);
            }
            out.push((i, v));
        }
        out
    };
    let mut all = if workers == 1 {
        worker()
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(worker)).collect();
            let mut all = Vec::with_capacity(n);
            for h in handles {
                match h.join() {
                    Ok(part) => all.extend(part),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            all
        })
    };
    all.sort_by_key(|(i, _)| *i);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn results_come_back_in_index_order_on_any_worker_count() {
        for workers in [0, 1, 2, 7, 100] {
            let out = parallel_map(50, workers, |i| {
                // Uneven work so that threads finish out of order.
                std::thread::sleep(std::time::Duration::from_micros(((50 - i) % 7) as u64 * 50));
                i * i
            });
            assert_eq!(
                out,
                (0..50).map(|i| i * i).collect::<Vec<_>>(),
                "workers {workers}"
            );
        }
        assert!(parallel_map(0, 4, |i| i).is_empty());
    }

    #[test]
    fn every_index_runs_exactly_once() {
        let seen = Mutex::new(vec![0u32; 200]);
        parallel_map(200, 4, |i| {
            seen.lock().unwrap()[i] += 1;
        });
        assert!(seen.into_inner().unwrap().iter().all(|&c| c == 1));
    }

    #[test]
    fn the_lowest_failed_index_is_reported_and_work_stops() {
        let ran = AtomicUsize::new(0);
        let r: Result<Vec<usize>, String> = try_parallel_map(10_000, 2, |i| {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 3 || i == 5 {
                Err(format!("job {i}"))
            } else {
                Ok(i)
            }
        });
        assert_eq!(r, Err("job 3".to_string()));
        // Stopped early: far fewer than all jobs ran.
        assert!(ran.load(Ordering::SeqCst) < 10_000);
        let ok: Result<Vec<usize>, String> = try_parallel_map(20, 3, Ok);
        assert_eq!(ok, Ok((0..20).collect()));
    }
}
