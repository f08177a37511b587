//! The LLM behind a bounded queue: at most `workers` calls run at once and at
//! most `queue` more requests wait; a request beyond that is refused at once
//! (503 with `Retry-After`), so no unbounded backlog builds up. Calls run on the
//! blocking pool, through the persistent cache. A request whose every LLM answer
//! is already cached is answered from the cache without entering the queue.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use llmrec_llm::{
    BatchJob, Cache, Generation, Llm, LlmContext, Message, SamplingParams, generation_key,
    run_batch,
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

    /// Runs `work` with the LLM. First from the cache alone, outside the queue:
    /// when every call `work` makes is a cache hit, that is the answer. Otherwise
    /// `work` runs again once admitted, with the LLM: 503 at once when the queue
    /// is full.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl Fn(&Chat<'_>) -> Result<T, ApiError> + Send + Sync + 'static,
    ) -> Result<T, ApiError> {
        let work = Arc::new(work);
        let (llm, cache, metrics) = (self.llm.clone(), self.cache.clone(), self.metrics.clone());
        let w = work.clone();
        let from_cache = tokio::task::spawn_blocking(move || {
            let chat = Chat::new(llm.as_ref(), cache.as_ref(), metrics.as_ref(), true);
            let out = w(&chat);
            if chat.missed.get() {
                None
            } else {
                metrics
                    .llm_cache_hits
                    .fetch_add(chat.hits.get(), Ordering::Relaxed);
                Some(out)
            }
        })
        .await
        .map_err(|e| ApiError::internal(format!("LLM task failed: {e}")))?;
        if let Some(out) = from_cache {
            return out;
        }
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
            let chat = Chat::new(llm.as_ref(), cache.as_ref(), metrics.as_ref(), false);
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
    /// Answer from the cache only; a miss sets `missed` and fails the call.
    cache_only: bool,
    missed: Cell<bool>,
    hits: Cell<u64>,
}

impl<'a> Chat<'a> {
    fn new(llm: &'a dyn Llm, cache: &'a Cache, metrics: &'a Metrics, cache_only: bool) -> Self {
        Chat {
            ctx: LlmContext { llm, cache },
            metrics,
            cache_only,
            missed: Cell::new(false),
            hits: Cell::new(0),
        }
    }

    /// One greedy chat call through the cache; returns the generation and
    /// whether it came from the cache.
    pub fn chat(
        &self,
        messages: Vec<Message>,
        max_tokens: usize,
    ) -> Result<(Generation, bool), ApiError> {
        let params = SamplingParams::greedy(max_tokens);
        if self.cache_only {
            let llm = self.ctx.llm;
            let key = generation_key(llm.backend(), llm.model(), &messages, &params);
            let hit = self
                .ctx
                .cache
                .get_generation(&key)
                .map_err(|e| ApiError::internal(format!("LLM cache: {e}")))?;
            return match hit {
                Some(h) => {
                    self.hits.set(self.hits.get() + 1);
                    Ok((h.generation, true))
                }
                None => {
                    self.missed.set(true);
                    Err(ApiError::internal("not in the LLM cache"))
                }
            };
        }
        let job = BatchJob {
            id: "request".into(),
            messages,
            params,
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
