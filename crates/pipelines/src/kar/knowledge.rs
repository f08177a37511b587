//! Knowledge generation (`llmrec kar knowledge`): one factorized prompt per user
//! and per rated movie, run through the LLM runtime's batch runner (batched,
//! cached, resumable: a rerun after `kill -9` recomputes only what the cache does
//! not hold), stored as a versioned artifact keyed by model and prompt version:
//!
//! `ROOT/<model>/prompt-v<N>/{users.jsonl, items.jsonl, manifest.json}`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llmrec_core::io::{read_jsonl, slug, write_json, write_jsonl};
use llmrec_core::{Error, Result};
use llmrec_data::loaders::ExplicitRatings;
use llmrec_llm::{BatchJob, LlmContext, Progress, SamplingParams, run_batch_grouped};
use serde::{Deserialize, Serialize};

use super::prompts::{PROMPT_VERSION, item_prompt, messages, normalise_title, user_prompt};
use super::protocol::KarData;

/// Version of the artifact's layout.
pub const FORMAT_VERSION: u32 = 1;

/// Settings of knowledge generation (documented in `configs/kar.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeConfig {
    /// Most tokens generated per answer. Default 128.
    pub max_tokens: usize,
    /// Prompts decoded together by the local backend. Default 16.
    pub group: usize,
    /// Concurrent calls (server backends). Default 1.
    pub concurrency: usize,
    /// Only the first this many users by id (0: all). Default 0.
    pub users: usize,
    /// Only the first this many rated movies by id (0: all). Default 0.
    pub items: usize,
    /// Which prompts to run. Default both, users first.
    pub kinds: Vec<Kind>,
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        KnowledgeConfig {
            max_tokens: 128,
            group: 16,
            concurrency: 1,
            users: 0,
            items: 0,
            kinds: vec![Kind::User, Kind::Item],
        }
    }
}

/// Which prompt a record answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Reasoning about a user's preferences.
    User,
    /// Facts about an item.
    Item,
}

/// One generated piece of knowledge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnowledgeRecord {
    /// User or item.
    pub kind: Kind,
    /// MovieLens user or movie id.
    pub id: u32,
    /// What the encoder reads before the answer (a user's profile and ratings;
    /// empty for items).
    pub context: String,
    /// The whole prompt.
    pub prompt: String,
    /// The answer.
    pub text: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// `manifest.json` of an artifact, and the report of a generation run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Layout version.
    pub format_version: u32,
    /// The backend (`local`, `openai`).
    pub backend: String,
    /// The model.
    pub model: String,
    /// Prompt wording version.
    pub prompt_version: u32,
    /// The settings used.
    pub config: KnowledgeConfig,
    /// User records written.
    pub users: usize,
    /// Item records written.
    pub items: usize,
    /// Prompts that failed (not written; a rerun retries them).
    pub failed: usize,
    /// Answers taken from the cache in this run.
    pub cached: usize,
    /// Prompt tokens over all records.
    pub prompt_tokens: usize,
    /// Generated tokens over all records.
    pub completion_tokens: usize,
    /// Wall seconds of this run.
    pub seconds: f64,
    /// Generated tokens per second of this run (uncached answers only).
    pub tokens_per_second: f64,
}

/// The artifact folder of `model` under `root`.
pub fn artifact_dir(root: &Path, model: &str) -> PathBuf {
    root.join(slug(model))
        .join(format!("prompt-v{PROMPT_VERSION}"))
}

/// The prompts of every user (prompt-only ratings) and every rated movie, as
/// `(kind, id, context, prompt)`, users first, each by ascending id.
pub fn prompts(
    data: &ExplicitRatings,
    kar: &KarData,
    cfg: &KnowledgeConfig,
) -> Vec<(Kind, u32, String, String)> {
    let title = |m: u32| data.movies.get(&m).map(|x| normalise_title(&x.title));
    let mut out = Vec::new();
    let take = |kind: Kind, n: usize| match cfg.kinds.contains(&kind) {
        false => 0,
        true if n == 0 => usize::MAX,
        true => n,
    };
    let users = kar.prompt.iter().take(take(Kind::User, cfg.users));
    for (&u, hist) in users {
        let (context, question) = user_prompt(data.users.get(&u), hist, &title);
        let prompt = format!("{context}\n\n{question}");
        out.push((Kind::User, u, context, prompt));
    }
    let rated: BTreeSet<u32> = data
        .histories
        .values()
        .flat_map(|h| h.iter().map(|r| r.movie))
        .collect();
    let items = rated.into_iter().take(take(Kind::Item, cfg.items));
    for m in items {
        if let Some(movie) = data.movies.get(&m) {
            out.push((Kind::Item, m, String::new(), item_prompt(movie)));
        }
    }
    out
}

/// Generates (or reads from the cache) every prompt's answer and writes the
/// artifact under `root`. `log` gets a line on what runs; `progress` sees each
/// finished prompt.
pub fn generate(
    ctx: LlmContext<'_>,
    data: &ExplicitRatings,
    kar: &KarData,
    cfg: &KnowledgeConfig,
    root: &Path,
    log: &mut dyn FnMut(&str),
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(PathBuf, Manifest)> {
    if cfg.max_tokens == 0 || cfg.group == 0 || cfg.concurrency == 0 || cfg.kinds.is_empty() {
        return Err(Error::config(
            "knowledge.max_tokens/group/concurrency/kinds",
            "must be positive (kinds: at least one of \"user\", \"item\")",
        ));
    }
    let all = prompts(data, kar, cfg);
    let n_users = all.iter().filter(|p| p.0 == Kind::User).count();
    log(&format!(
        "{} prompts: {n_users} users, {} movies; at most {} tokens each",
        all.len(),
        all.len() - n_users,
        cfg.max_tokens
    ));
    let params = SamplingParams::greedy(cfg.max_tokens);
    let jobs: Vec<BatchJob> = all
        .iter()
        .map(|(kind, id, _, prompt)| BatchJob {
            id: format!("{kind:?}-{id}"),
            messages: messages(prompt),
            params: params.clone(),
        })
        .collect();
    let t0 = Instant::now();
    let results = run_batch_grouped(
        ctx.llm,
        ctx.cache,
        &jobs,
        cfg.concurrency,
        cfg.group,
        progress,
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let (mut users, mut items) = (Vec::new(), Vec::new());
    let (mut failed, mut cached, mut fresh_tokens) = (0, 0, 0usize);
    for ((kind, id, context, prompt), r) in all.into_iter().zip(results) {
        let g = match r.result {
            Ok(g) => g,
            Err(_) => {
                failed += 1;
                continue;
            }
        };
        if r.cached {
            cached += 1;
        } else {
            fresh_tokens += g.completion_tokens;
        }
        let rec = KnowledgeRecord {
            kind,
            id,
            context,
            prompt,
            text: g.text.trim().to_string(),
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
        };
        match kind {
            Kind::User => users.push(rec),
            Kind::Item => items.push(rec),
        }
    }
    let dir = artifact_dir(root, ctx.llm.model());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    write_jsonl(&dir.join("users.jsonl"), &users)?;
    write_jsonl(&dir.join("items.jsonl"), &items)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        backend: ctx.llm.backend().to_string(),
        model: ctx.llm.model().to_string(),
        prompt_version: PROMPT_VERSION,
        config: cfg.clone(),
        users: users.len(),
        items: items.len(),
        failed,
        cached,
        prompt_tokens: users.iter().chain(&items).map(|r| r.prompt_tokens).sum(),
        completion_tokens: users
            .iter()
            .chain(&items)
            .map(|r| r.completion_tokens)
            .sum(),
        seconds,
        tokens_per_second: fresh_tokens as f64 / seconds.max(1e-9),
    };
    write_json(&dir.join("manifest.json"), &manifest)?;
    Ok((dir, manifest))
}

/// Reads a `users.jsonl` or `items.jsonl`, naming the line of any bad record.
pub fn read_records(path: &Path) -> Result<Vec<KnowledgeRecord>> {
    read_jsonl(path, "a knowledge record")
}

/// Reads an artifact's manifest, checking its layout version.
pub fn read_manifest(dir: &Path) -> Result<Manifest> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let m: Manifest = serde_json::from_str(&text).map_err(|e| Error::Parse {
        path: path.clone(),
        line: e.line(),
        message: format!("expected a knowledge manifest: {e}"),
    })?;
    if m.format_version != FORMAT_VERSION {
        return Err(Error::Artifact {
            path,
            message: format!(
                "format version {} (this build reads {FORMAT_VERSION})",
                m.format_version
            ),
        });
    }
    Ok(m)
}
