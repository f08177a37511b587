//! The LLM behind a bounded queue: at most `workers` calls run at once and at
//! most `queue` more requests wait; a request beyond that is refused at once
//! (503 with `Retry-After`), so no unbounded backlog builds up. Calls run on the
//! blocking pool, through the persistent cache.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use llmrec_llm::{
    BatchJob, Cache, Generation, Llm, LlmContext, Message, SamplingParams, run_batch,
};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The LLM, its cache and the queue in front of them.
pub struct LlmGate {
    llm: Arc<dyn Llm>,
    cache: Arc<Cache>,
    admit: Arc<Semaphore>,
    run: Arc<Semaphore>,
    capacity: usize,
    metrics: Arc<Metrics>,
}

impl LlmGate {
    /// A gate of `workers` running and `queue` waiting requests.
    pub fn new(
        llm: Arc<dyn Llm>,
        cache: Arc<Cache>,
        workers: usize,
        queue: usize,
        metrics: Arc<Metrics>,
    ) -> LlmGate {
        let capacity = workers.max(1) + queue;
        LlmGate {
            llm,
            cache,
            admit: Arc::new(Semaphore::new(capacity)),
            run: Arc::new(Semaphore::new(workers.max(1))),
            capacity,
            metrics,
        }
    }

    /// Requests admitted and not finished.
    pub fn depth(&self) -> usize {
        self.capacity - self.admit.available_permits()
    }

    /// Most requests admitted at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The backend's model name.
    pub fn model(&self) -> String {
        self.llm.model().to_string()
    }

    /// Runs `work` with the LLM once admitted: 503 at once when the queue is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Chat<'_>) -> Result<T, ApiError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let Ok(admitted) = self.admit.clone().try_acquire_owned() else {
            self.metrics.llm_rejected.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::overloaded(format!(
                "the LLM queue is full ({} requests); retry later",
                self.capacity
            )));
        };
        let running = self
            .run
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the LLM queue is closed"))?;
        let (llm, cache, metrics) = (self.llm.clone(), self.cache.clone(), self.metrics.clone());
        let out = tokio::task::spawn_blocking(move || {
            let chat = Chat {
                ctx: LlmContext {
                    llm: llm.as_ref(),
                    cache: cache.as_ref(),
                },
                metrics: metrics.as_ref(),
            };
            work(&chat)
        })
        .await
        .map_err(|e| ApiError::internal(format!("LLM task failed: {e}")))?;
        drop(running);
        drop(admitted);
        out
    }
}

/// Cached chat calls inside [`LlmGate::run`].
pub struct Chat<'a> {
    ctx: LlmContext<'a>,
    metrics: &'a Metrics,
}

impl Chat<'_> {
    /// One greedy chat call through the cache; returns the generation and
    /// whether it came from the cache.
    pub fn chat(
        &self,
        messages: Vec<Message>,
        max_tokens: usize,
    ) -> Result<(Generation, bool), ApiError> {
        let job = BatchJob {
            id: "request".into(),
            messages,
            params: SamplingParams::greedy(max_tokens),
        };
        let mut out = run_batch(self.ctx.llm, self.ctx.cache, &[job], 1, &|_| {})
            .map_err(|e| ApiError::internal(format!("LLM cache: {e}")))?;
        let r = out
            .pop()
            .ok_or_else(|| ApiError::internal("the LLM returned nothing"))?;
        let g = r
            .result
            .map_err(|e| ApiError::upstream(format!("the LLM failed: {e}")))?;
        if r.cached {
            self.metrics.llm_cache_hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.metrics.llm_calls.fetch_add(1, Ordering::Relaxed);
            self.metrics
                .llm_prompt_tokens
                .fetch_add(g.prompt_tokens as u64, Ordering::Relaxed);
            self.metrics
                .llm_completion_tokens
                .fetch_add(g.completion_tokens as u64, Ordering::Relaxed);
        }
        Ok((g, r.cached))
    }
}
