//! Text augmentation (`llmrec llmrec augment`): every prompt of the chosen
//! strategies for every item, run through the LLM runtime's batch runner (batched,
//! cached, resumable: a rerun after a cut-off recomputes only what the cache does
//! not hold), stored as a versioned artifact keyed by dataset, model and prompt
//! version:
//!
//! `ROOT/<dataset>/<model>/prompt-v<N>/{texts.jsonl, neighbors.jsonl, manifest.json}`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use llmrec_core::io::{read_jsonl, slug, write_json, write_jsonl};
use llmrec_core::{Dataset, Error, ItemId, Result, SequenceSplit};
use llmrec_llm::{BatchJob, LlmContext, Message, Progress, SamplingParams, run_batch_grouped};
use serde::{Deserialize, Serialize};

use super::engagement::{EngagementConfig, neighbors, training_graph};
use super::prompts::{PROMPT_VERSION, PromptKind, Strategy, describe, prompt};

/// Version of the artifact's layout.
pub const FORMAT_VERSION: u32 = 1;

/// Settings of the augmentation (documented in `configs/llm_rec.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Strategies whose prompts run. Default all four.
    pub strategies: Vec<Strategy>,
    /// Most tokens generated per answer. Default 64.
    pub max_tokens: usize,
    /// Prompts the local backend decodes together. Default 16.
    pub group: usize,
    /// Concurrent calls (server backends). Default 1.
    pub concurrency: usize,
    /// Only the first this many items by dense id (0: all). Default 0.
    pub items: usize,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            strategies: Strategy::ALL.to_vec(),
            max_tokens: 64,
            group: 16,
            concurrency: 1,
            items: 0,
        }
    }
}

/// One generated text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentRecord {
    /// Raw item id, as the dataset names it.
    pub item: String,
    /// Which prompt.
    pub kind: PromptKind,
    /// The whole prompt.
    pub prompt: String,
    /// The answer.
    pub text: String,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
}

/// One item's engagement neighbours (`neighbors.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NeighborRecord {
    /// Raw item id.
    pub item: String,
    /// Raw ids of its neighbours, best first.
    pub neighbors: Vec<String>,
    /// Their personalized PageRank scores.
    pub scores: Vec<f64>,
}

/// `manifest.json` of an artifact, and the report of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AugmentManifest {
    /// Layout version.
    pub format_version: u32,
    /// Dataset name.
    pub dataset: String,
    /// Dataset fingerprint (ids and interactions).
    pub fingerprint: String,
    /// Split the neighbours were built on.
    pub split: String,
    /// The backend (`local`, `openai`).
    pub backend: String,
    /// The model.
    pub model: String,
    /// Prompt wording version.
    pub prompt_version: u32,
    /// The settings used.
    pub config: AugmentConfig,
    /// Engagement settings used.
    pub engagement: EngagementConfig,
    /// Items covered.
    pub items: usize,
    /// Records written.
    pub records: usize,
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
    /// Generated tokens per strategy (the cost of each table row).
    pub completion_tokens_by_strategy: BTreeMap<String, usize>,
    /// How varied the engagement neighbours are.
    #[serde(default)]
    pub neighbor_stats: NeighborStats,
}

/// How varied the engagement neighbours are: on dense data, co-engagement counts
/// favour popular items, and every item may get much the same neighbours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NeighborStats {
    /// Items with at least one neighbour.
    pub items_with_neighbors: usize,
    /// Distinct items among all neighbour lists.
    pub distinct_neighbors: usize,
    /// Share of all neighbour slots taken by the 5 most frequent neighbours.
    pub top5_share: f64,
}

impl NeighborStats {
    /// The statistics of `nb`.
    pub fn of(nb: &Neighbors) -> NeighborStats {
        let mut count: BTreeMap<ItemId, usize> = BTreeMap::new();
        for list in nb {
            for &(j, _) in list {
                *count.entry(j).or_default() += 1;
            }
        }
        let slots: usize = count.values().sum();
        let mut c: Vec<usize> = count.values().copied().collect();
        c.sort_unstable_by(|a, b| b.cmp(a));
        NeighborStats {
            items_with_neighbors: nb.iter().filter(|l| !l.is_empty()).count(),
            distinct_neighbors: count.len(),
            top5_share: c.iter().take(5).sum::<usize>() as f64 / slots.max(1) as f64,
        }
    }
}

/// The artifact folder of `dataset` and `model` under `root`.
pub fn artifact_dir(root: &Path, dataset: &str, model: &str) -> PathBuf {
    root.join(slug(dataset))
        .join(slug(model))
        .join(format!("prompt-v{PROMPT_VERSION}"))
}

/// Each item's engagement neighbours, best first, as `(item, PageRank score)`.
pub type Neighbors = Vec<Vec<(ItemId, f64)>>;

/// Augmented texts by prompt, each indexed by dense item id (`None`: not generated).
pub type Texts = BTreeMap<PromptKind, Vec<Option<String>>>;

/// One prompt to run: the item, the prompt kind and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedPrompt {
    /// Dense item id.
    pub item: ItemId,
    /// Which prompt.
    pub kind: PromptKind,
    /// Its text.
    pub prompt: String,
}

/// The engagement neighbours of the first `items` items (0: all) and every prompt
/// of `cfg.strategies` for them, strategy by strategy, items by ascending id
/// (so that the first strategies finish first in a long run).
pub fn plan(
    ds: &Dataset,
    split: &SequenceSplit,
    cfg: &AugmentConfig,
    eng: &EngagementConfig,
) -> Result<(Neighbors, Vec<PlannedPrompt>)> {
    let n = match cfg.items {
        0 => ds.n_items(),
        k => k.min(ds.n_items()),
    };
    let items: Vec<ItemId> = (0..n as ItemId).collect();
    let needs = cfg.strategies.iter().any(|s| s.needs_neighbors());
    let nb = if needs {
        let g = training_graph(split, eng)?;
        neighbors(&g, &items, eng)?
    } else {
        vec![Vec::new(); n]
    };
    let descriptions: Vec<String> = ds.item_text.iter().map(describe).collect();
    let mut out = Vec::new();
    for s in &cfg.strategies {
        for &kind in s.prompts() {
            for &i in &items {
                let quoted: Vec<String> = nb[i as usize]
                    .iter()
                    .map(|&(j, _)| descriptions[j as usize].clone())
                    .collect();
                out.push(PlannedPrompt {
                    item: i,
                    kind,
                    prompt: prompt(kind, &descriptions[i as usize], &quoted),
                });
            }
        }
    }
    Ok((nb, out))
}

/// Generates (or reads from the cache) every planned prompt's answer and writes
/// the artifact under `root`. `log` gets a line on what runs; `progress` sees each
/// finished prompt.
pub fn generate(
    ctx: LlmContext<'_>,
    ds: &Dataset,
    split: &SequenceSplit,
    (cfg, eng): (&AugmentConfig, &EngagementConfig),
    root: &Path,
    log: &mut dyn FnMut(&str),
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(PathBuf, AugmentManifest)> {
    if cfg.max_tokens == 0 || cfg.group == 0 || cfg.concurrency == 0 || cfg.strategies.is_empty() {
        return Err(Error::config(
            "augment.max_tokens/group/concurrency/strategies",
            "must be positive (strategies: at least one of \"basic\", \"rec\", \"eng\", \"rec-eng\")",
        ));
    }
    let t0 = Instant::now();
    let (nb, planned) = plan(ds, split, cfg, eng)?;
    log(&format!(
        "{} prompts for {} items ({}); at most {} tokens each",
        planned.len(),
        nb.len(),
        cfg.strategies
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        cfg.max_tokens
    ));
    let params = SamplingParams::greedy(cfg.max_tokens);
    let jobs: Vec<BatchJob> = planned
        .iter()
        .map(|p| BatchJob {
            id: format!("{}-{}", p.kind.name(), p.item),
            messages: vec![Message::user(&p.prompt)],
            params: params.clone(),
        })
        .collect();
    let results = run_batch_grouped(
        ctx.llm,
        ctx.cache,
        &jobs,
        cfg.concurrency,
        cfg.group,
        progress,
    )?;
    let seconds = t0.elapsed().as_secs_f64();
    let mut records = Vec::new();
    let (mut failed, mut cached, mut fresh_tokens) = (0, 0, 0usize);
    let mut by_strategy: BTreeMap<String, usize> = BTreeMap::new();
    for (p, r) in planned.into_iter().zip(results) {
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
        if let Some(s) = Strategy::ALL.iter().find(|s| s.prompts().contains(&p.kind)) {
            *by_strategy.entry(s.name().to_string()).or_default() += g.completion_tokens;
        }
        records.push(AugmentRecord {
            item: ds.items.raw(p.item).to_string(),
            kind: p.kind,
            prompt: p.prompt,
            text: g.text.trim().to_string(),
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
        });
    }
    let dir = artifact_dir(root, &ds.name, ctx.llm.model());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    write_jsonl(&dir.join("texts.jsonl"), &records)?;
    let nb_records: Vec<NeighborRecord> = nb
        .iter()
        .enumerate()
        .map(|(i, list)| NeighborRecord {
            item: ds.items.raw(i as ItemId).to_string(),
            neighbors: list
                .iter()
                .map(|&(j, _)| ds.items.raw(j).to_string())
                .collect(),
            scores: list.iter().map(|&(_, s)| s).collect(),
        })
        .collect();
    write_jsonl(&dir.join("neighbors.jsonl"), &nb_records)?;
    let manifest = AugmentManifest {
        format_version: FORMAT_VERSION,
        dataset: ds.name.clone(),
        fingerprint: ds.fingerprint(),
        split: split.name.clone(),
        backend: ctx.llm.backend().to_string(),
        model: ctx.llm.model().to_string(),
        prompt_version: PROMPT_VERSION,
        config: cfg.clone(),
        engagement: eng.clone(),
        items: nb.len(),
        records: records.len(),
        failed,
        cached,
        prompt_tokens: records.iter().map(|r| r.prompt_tokens).sum(),
        completion_tokens: records.iter().map(|r| r.completion_tokens).sum(),
        seconds,
        tokens_per_second: fresh_tokens as f64 / seconds.max(1e-9),
        completion_tokens_by_strategy: by_strategy,
        neighbor_stats: NeighborStats::of(&nb),
    };
    write_json(&dir.join("manifest.json"), &manifest)?;
    Ok((dir, manifest))
}

/// Reads an artifact: its manifest (layout version and dataset checked against
/// `ds`) and texts, as `texts[kind][dense item] = text`.
pub fn read_artifact(dir: &Path, ds: &Dataset) -> Result<(AugmentManifest, Texts)> {
    let path = dir.join("manifest.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let m: AugmentManifest = serde_json::from_str(&text).map_err(|e| Error::Parse {
        path: path.clone(),
        line: e.line(),
        message: format!("expected an LLM-Rec augmentation manifest: {e}"),
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
    if m.dataset != ds.name || m.fingerprint != ds.fingerprint() {
        return Err(Error::Artifact {
            path,
            message: format!(
                "made for dataset {} ({}), not {} ({})",
                m.dataset,
                m.fingerprint,
                ds.name,
                ds.fingerprint()
            ),
        });
    }
    let recs: Vec<AugmentRecord> = read_jsonl(&dir.join("texts.jsonl"), "an augmented text")?;
    let mut texts: BTreeMap<PromptKind, Vec<Option<String>>> = BTreeMap::new();
    for r in recs {
        let i = ds.items.get(&r.item).ok_or_else(|| Error::Artifact {
            path: dir.join("texts.jsonl"),
            message: format!("item `{}` is not in {}", r.item, ds.name),
        })?;
        texts
            .entry(r.kind)
            .or_insert_with(|| vec![None; ds.n_items()])[i as usize] = Some(r.text);
    }
    Ok((m, texts))
}
