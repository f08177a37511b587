//! A persistent cache of generations and embeddings (redb), and a resumable
//! batch runner.
//!
//! Generations are keyed by sha256 of (backend, model, messages, sampling
//! parameters); embeddings by sha256 of (model, text). Every write is its own
//! durable transaction, so a process killed at any moment leaves every result
//! that was reported as done on disk, and a rerun skips them.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use llmrec_core::parallel::try_parallel_map;
use llmrec_core::{Error, Result};
use redb::{Database, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::llm::{FinishReason, Generation, Llm, Message, SamplingParams};

const GENERATIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("generations");
const EMBEDDINGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("embeddings");

/// A 32-byte cache key.
pub type Key = [u8; 32];

/// The key of a generation: sha256 over a canonical JSON of its inputs.
pub fn generation_key(
    backend: &str,
    model: &str,
    messages: &[Message],
    params: &SamplingParams,
) -> Key {
    #[derive(Serialize)]
    struct K<'a> {
        v: u32,
        backend: &'a str,
        model: &'a str,
        messages: &'a [Message],
        params: &'a SamplingParams,
    }
    let json = serde_json::to_vec(&K {
        v: 1,
        backend,
        model,
        messages,
        params,
    })
    .unwrap_or_default();
    Sha256::digest(&json).into()
}

/// The key of a non-chat call (log-prob scoring, constrained choice): sha256
/// over `kind`, the backend, the model, the messages and `extra` (the
/// candidate strings, say), in a domain separate from [`generation_key`].
pub fn call_key(
    kind: &str,
    backend: &str,
    model: &str,
    messages: &[Message],
    extra: &serde_json::Value,
) -> Key {
    #[derive(Serialize)]
    struct K<'a> {
        v: u32,
        kind: &'a str,
        backend: &'a str,
        model: &'a str,
        messages: &'a [Message],
        extra: &'a serde_json::Value,
    }
    let json = serde_json::to_vec(&K {
        v: 1,
        kind,
        backend,
        model,
        messages,
        extra,
    })
    .unwrap_or_default();
    Sha256::digest(&json).into()
}

/// The key of an embedding: sha256 of (model, text).
pub fn embedding_key(model: &str, text: &str) -> Key {
    let mut h = Sha256::new();
    h.update(b"emb\x001\x00");
    h.update(model.as_bytes());
    h.update([0u8]);
    h.update(text.as_bytes());
    h.finalize().into()
}

/// A stored generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedGeneration {
    /// The generation as the backend returned it.
    pub generation: Generation,
    /// Unix time (seconds) it was stored.
    pub stored_at: u64,
}

/// The persistent cache: one redb file.
pub struct Cache {
    db: Database,
    path: PathBuf,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("path", &self.path).finish()
    }
}

fn dberr(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Artifact {
        path: path.to_path_buf(),
        message: format!("cache database: {e}"),
    }
}

impl Cache {
    /// Opens (or creates) the cache at `path`; its parent folder is created.
    ///
    /// One process at a time may hold a cache file open.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let db = Database::create(&path).map_err(|e| dberr(&path, e))?;
        let tx = db.begin_write().map_err(|e| dberr(&path, e))?;
        tx.open_table(GENERATIONS).map_err(|e| dberr(&path, e))?;
        tx.open_table(EMBEDDINGS).map_err(|e| dberr(&path, e))?;
        tx.commit().map_err(|e| dberr(&path, e))?;
        Ok(Cache { db, path })
    }

    /// The file of this cache.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn get_raw(&self, table: TableDefinition<&[u8], &[u8]>, key: &Key) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| dberr(&self.path, e))?;
        let t = tx.open_table(table).map_err(|e| dberr(&self.path, e))?;
        let v = t
            .get(key.as_slice())
            .map_err(|e| dberr(&self.path, e))?
            .map(|g| g.value().to_vec());
        Ok(v)
    }

    fn put_raw(&self, table: TableDefinition<&[u8], &[u8]>, rows: &[(Key, Vec<u8>)]) -> Result<()> {
        let tx = self.db.begin_write().map_err(|e| dberr(&self.path, e))?;
        {
            let mut t = tx.open_table(table).map_err(|e| dberr(&self.path, e))?;
            for (k, v) in rows {
                t.insert(k.as_slice(), v.as_slice())
                    .map_err(|e| dberr(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| dberr(&self.path, e))
    }

    /// The stored generation under `key`.
    pub fn get_generation(&self, key: &Key) -> Result<Option<CachedGeneration>> {
        match self.get_raw(GENERATIONS, key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| dberr(&self.path, format!("corrupt generation record: {e}"))),
        }
    }

    /// Stores a generation under `key` (one durable transaction).
    pub fn put_generation(&self, key: &Key, generation: &Generation) -> Result<()> {
        let stored_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let rec = CachedGeneration {
            generation: generation.clone(),
            stored_at,
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| dberr(&self.path, e))?;
        self.put_raw(GENERATIONS, &[(*key, bytes)])
    }

    /// Number of stored generations.
    pub fn generation_count(&self) -> Result<u64> {
        let tx = self.db.begin_read().map_err(|e| dberr(&self.path, e))?;
        let t = tx
            .open_table(GENERATIONS)
            .map_err(|e| dberr(&self.path, e))?;
        t.len().map_err(|e| dberr(&self.path, e))
    }

    /// The stored embedding of `text` under `model`.
    pub fn get_embedding(&self, model: &str, text: &str) -> Result<Option<Vec<f32>>> {
        Ok(self
            .get_raw(EMBEDDINGS, &embedding_key(model, text))?
            .map(|b| {
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            }))
    }

    /// Stores embeddings of `(text, vector)` pairs under `model`, in one transaction.
    pub fn put_embeddings(&self, model: &str, rows: &[(&str, &[f32])]) -> Result<()> {
        let rows: Vec<(Key, Vec<u8>)> = rows
            .iter()
            .map(|(t, v)| {
                (
                    embedding_key(model, t),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        self.put_raw(EMBEDDINGS, &rows)
    }
}

/// An LLM backend and the cache its calls go through.
#[derive(Clone, Copy)]
pub struct LlmContext<'a> {
    /// Backend.
    pub llm: &'a dyn Llm,
    /// Cache of every call.
    pub cache: &'a Cache,
}

impl LlmContext<'_> {
    /// A cached non-chat call (log-prob scoring, a constrained choice): the
    /// result is stored as JSON in a generation's text under
    /// [`call_key`]`(kind, backend, model, messages, extra)`. Returns the value,
    /// the stored generation (prompt tokens, latency) and whether it was a hit.
    pub fn cached_call<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        messages: &[Message],
        extra: serde_json::Value,
        compute: impl FnOnce() -> Result<T>,
    ) -> Result<(T, Generation, bool)> {
        let key = call_key(kind, self.llm.backend(), self.llm.model(), messages, &extra);
        if let Some(hit) = self.cache.get_generation(&key)?
            && let Ok(v) = serde_json::from_str(&hit.generation.text)
        {
            return Ok((v, hit.generation, true));
        }
        let t0 = Instant::now();
        let v = compute()?;
        let g = Generation {
            text: serde_json::to_string(&v).map_err(|e| Error::Invalid(format!("json: {e}")))?,
            prompt_tokens: self.llm.count_prompt_tokens(messages).unwrap_or(0),
            completion_tokens: 0,
            latency_ms: t0.elapsed().as_secs_f64() * 1e3,
            finish: FinishReason::Stop,
        };
        self.cache.put_generation(&key, &g)?;
        Ok((v, g, false))
    }
}

/// One prompt of a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchJob {
    /// Caller's id of the prompt (echoed in outputs).
    pub id: String,
    /// The chat messages.
    pub messages: Vec<Message>,
    /// Sampling settings.
    #[serde(default)]
    pub params: SamplingParams,
}

/// Progress of a batch, passed to the progress callback after each prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Prompts finished (from cache, computed or failed).
    pub done: usize,
    /// Prompts in the batch.
    pub total: usize,
    /// Of `done`, found in the cache.
    pub cached: usize,
    /// Of `done`, failed.
    pub failed: usize,
}

/// The outcome of one prompt of a batch.
#[derive(Debug)]
pub struct BatchResult {
    /// The job's id.
    pub id: String,
    /// Whether it came from the cache.
    pub cached: bool,
    /// The generation, or the backend's error.
    pub result: Result<Generation>,
}

/// Runs `jobs` through `llm` with at most `concurrency` calls in flight.
///
/// Each prompt whose key is in `cache` is answered from it; every other
/// result is stored (one durable transaction each) as soon as it finishes, so
/// a rerun after a crash recomputes only what was not stored. `progress` is
/// called after each prompt. Results come back in job order. Backend errors
/// are reported per job and not stored; cache errors abort the batch.
pub fn run_batch(
    llm: &dyn Llm,
    cache: &Cache,
    jobs: &[BatchJob],
    concurrency: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<BatchResult>> {
    run_batch_grouped(llm, cache, jobs, concurrency, 1, progress)
}

/// [`run_batch`], where each worker takes `group` consecutive jobs at a time
/// and sends the uncached ones to [`Llm::chat_batch`] together (the local
/// backend then decodes them as one batch). Results of a group are stored
/// when the group finishes.
pub fn run_batch_grouped(
    llm: &dyn Llm,
    cache: &Cache,
    jobs: &[BatchJob],
    concurrency: usize,
    group: usize,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Vec<BatchResult>> {
    let total = jobs.len();
    let group = group.max(1);
    let state = Mutex::new((0usize, 0usize, 0usize)); // done, cached, failed
    let finish = |r: &BatchResult| {
        let p = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.0 += 1;
            st.1 += r.cached as usize;
            st.2 += r.result.is_err() as usize;
            Progress {
                done: st.0,
                total,
                cached: st.1,
                failed: st.2,
            }
        };
        progress(p);
    };
    // One group: cache hits first, then the misses in one batched call.
    let run_group = |g: usize| -> Result<Vec<BatchResult>> {
        let start = g * group;
        let end = (start + group).min(total);
        let mut out: Vec<Option<BatchResult>> = (start..end).map(|_| None).collect();
        let mut misses = Vec::new();
        for (i, job) in jobs.iter().enumerate().take(end).skip(start) {
            let key = generation_key(llm.backend(), llm.model(), &job.messages, &job.params);
            match cache.get_generation(&key)? {
                Some(hit) => {
                    let r = BatchResult {
                        id: job.id.clone(),
                        cached: true,
                        result: Ok(hit.generation),
                    };
                    finish(&r);
                    out[i - start] = Some(r);
                }
                None => misses.push((i, key)),
            }
        }
        let results = match misses.as_slice() {
            [] => Vec::new(),
            [(i, _)] => vec![llm.chat(&jobs[*i].messages, &jobs[*i].params)],
            _ => {
                let batch: Vec<(&[Message], &SamplingParams)> = misses
                    .iter()
                    .map(|(i, _)| (jobs[*i].messages.as_slice(), &jobs[*i].params))
                    .collect();
                llm.chat_batch(&batch)
            }
        };
        if results.len() != misses.len() {
            return Err(Error::Invalid(format!(
                "backend answered {} of {} prompts",
                results.len(),
                misses.len()
            )));
        }
        for ((i, key), result) in misses.into_iter().zip(results) {
            if let Ok(g) = &result {
                cache.put_generation(&key, g)?;
            }
            let r = BatchResult {
                id: jobs[i].id.clone(),
                cached: false,
                result,
            };
            finish(&r);
            out[i - start] = Some(r);
        }
        Ok(out.into_iter().flatten().collect())
    };
    let groups = try_parallel_map(total.div_ceil(group), concurrency, run_group)?;
    Ok(groups.into_iter().flatten().collect())
}
