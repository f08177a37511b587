//! Service metrics in the Prometheus text format (`GET /metrics`): requests by
//! route and status, latency histograms by route, LLM calls, tokens and cache
//! hits, and the LLM queue's depth.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the latency histogram's buckets.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters and histograms of the running service.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    /// LLM calls made (cache misses).
    pub llm_calls: AtomicU64,
    /// LLM answers served from the cache.
    pub llm_cache_hits: AtomicU64,
    /// Prompt tokens of LLM calls made.
    pub llm_prompt_tokens: AtomicU64,
    /// Generated tokens of LLM calls made.
    pub llm_completion_tokens: AtomicU64,
    /// Requests turned away because the LLM queue was full.
    pub llm_rejected: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these maps half-updated: keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// Counts one request of `route` answered with `status` after `seconds`.
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut lat = lock(&self.latency);
        let h = lat.entry(route.to_string()).or_default();
        for (i, b) in BUCKETS.iter().enumerate() {
            if seconds <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += seconds;
    }

    /// The Prometheus text exposition, with the LLM queue's current depth and
    /// capacity.
    pub fn render(&self, queue_depth: usize, queue_capacity: usize) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP llmrec_requests_total Requests by route and status.\n# TYPE llmrec_requests_total counter"
        );
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                s,
                "llmrec_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        let _ = writeln!(
            s,
            "# HELP llmrec_request_seconds Request latency by route.\n# TYPE llmrec_request_seconds histogram"
        );
        for (route, h) in lock(&self.latency).iter() {
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    s,
                    "llmrec_request_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                s,
                "llmrec_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                s,
                "llmrec_request_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                s,
                "llmrec_request_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        let counters = [
            (
                "llmrec_llm_calls_total",
                "LLM calls made (cache misses).",
                &self.llm_calls,
            ),
            (
                "llmrec_llm_cache_hits_total",
                "LLM answers served from the cache.",
                &self.llm_cache_hits,
            ),
            (
                "llmrec_llm_prompt_tokens_total",
                "Prompt tokens of LLM calls made.",
                &self.llm_prompt_tokens,
            ),
            (
                "llmrec_llm_completion_tokens_total",
                "Generated tokens of LLM calls made.",
                &self.llm_completion_tokens,
            ),
            (
                "llmrec_llm_rejected_total",
                "Requests refused with 503 because the LLM queue was full.",
                &self.llm_rejected,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP llmrec_llm_queue_depth LLM requests admitted and not finished.\n# TYPE llmrec_llm_queue_depth gauge\nllmrec_llm_queue_depth {queue_depth}"
        );
        let _ = writeln!(
            s,
            "# HELP llmrec_llm_queue_capacity Most LLM requests admitted at once.\n# TYPE llmrec_llm_queue_capacity gauge\nllmrec_llm_queue_capacity {queue_capacity}"
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe("/v1/recommend", 200, 0.003);
        m.observe("/v1/recommend", 200, 0.2);
        m.observe("/v1/recommend", 400, 0.0005);
        let t = m.render(0, 9);
        assert!(t.contains("llmrec_requests_total{route=\"/v1/recommend\",status=\"200\"} 2"));
        assert!(t.contains("llmrec_requests_total{route=\"/v1/recommend\",status=\"400\"} 1"));
        assert!(
            t.contains("llmrec_request_seconds_bucket{route=\"/v1/recommend\",le=\"0.001\"} 1")
        );
        assert!(
            t.contains("llmrec_request_seconds_bucket{route=\"/v1/recommend\",le=\"0.005\"} 2")
        );
        assert!(t.contains("llmrec_request_seconds_bucket{route=\"/v1/recommend\",le=\"+Inf\"} 3"));
        assert!(t.contains("llmrec_llm_queue_capacity 9"));
    }
}
