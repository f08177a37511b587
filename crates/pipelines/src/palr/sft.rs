//! PALR fine-tuning data: two instruction datasets as chat-format JSONL.
//!
//! * `recommend.jsonl` (PALR v1, "Recommend"): a user's history → the items
//!   that came next.
//! * `recommend_retrieval.jsonl` (PALR v2, "Recommend_Retrieval"): history plus a
//!   shuffled candidate list (the targets and hard negatives: items co-interacted
//!   with a target in other users' training sequences, or sharing a genre or
//!   category with one) → the targets.
//!
//! Every example is cut from a user's **training** items only, and a training item
//! that repeats one of the user's validation or test items is dropped from histories
//! and targets (as in PALR's prompts: a held-out item never reaches the LLM as part of
//! the user's history). Negatives are drawn from items outside the user's training
//! items: the exporter does not read the held-out items to choose them, so held-out
//! labels never shape the negatives (a held-out item is as likely to be drawn as any
//! other item the user has not trained on). Items appear as titles. Each line is `{"messages": [...], "task": ..., "user": ..., "items":
//! {...}}`; `items` holds raw ids for audits and is not part of the prompt.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use llmrec_core::io::write_with;
use llmrec_core::{Dataset, Error, ItemId, Result, Rng, SequenceSplit};
use llmrec_llm::Message;
use serde::{Deserialize, Serialize};

use super::{Domain, item_description, item_title};

/// Settings of `llmrec palr export-sft`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SftConfig {
    /// Items after the history that are the targets of an example.
    pub future: usize,
    /// Most recent items of the history shown.
    pub history_items: usize,
    /// Candidates of a v2 example (targets plus hard negatives).
    pub candidates: usize,
    /// Examples per user, cut at successive points from the end of the training items.
    pub windows: usize,
    /// Seed of negatives and shuffling.
    pub seed: u64,
    /// Titles are cut to this many characters.
    pub title_chars: usize,
}

impl Default for SftConfig {
    fn default() -> Self {
        SftConfig {
            future: 1,
            history_items: 20,
            candidates: 20,
            windows: 1,
            seed: 42,
            title_chars: 80,
        }
    }
}

/// What [`export_sft`] wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SftReport {
    /// Users with at least one example.
    pub users: usize,
    /// Lines of `recommend.jsonl`.
    pub recommend_examples: usize,
    /// Lines of `recommend_retrieval.jsonl`.
    pub retrieval_examples: usize,
    /// The two files.
    pub files: Vec<PathBuf>,
}

/// Raw ids of one example's items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExampleItems {
    /// History shown, oldest first.
    pub history: Vec<String>,
    /// Candidates shown (v2 only).
    pub candidates: Vec<String>,
    /// Items of the answer.
    pub targets: Vec<String>,
}

/// One line of the JSONL files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// System, user and assistant messages.
    pub messages: Vec<Message>,
    /// `recommend` or `recommend_retrieval`.
    pub task: String,
    /// Raw user id.
    pub user: String,
    /// Raw item ids (for audits; not part of the prompt).
    pub items: ExampleItems,
}

struct Negatives {
    co: Vec<Vec<ItemId>>,
    by_category: HashMap<String, Vec<ItemId>>,
}

impl Negatives {
    fn new(ds: &Dataset, split: &SequenceSplit) -> Self {
        let mut co = vec![Vec::new(); split.n_items];
        for u in &split.users {
            for w in u.train.windows(2) {
                co[w[0] as usize].push(w[1]);
                co[w[1] as usize].push(w[0]);
            }
        }
        for c in &mut co {
            c.sort_unstable();
            c.dedup();
        }
        let mut by_category: HashMap<String, Vec<ItemId>> = HashMap::new();
        for (i, t) in ds.item_text.iter().enumerate().take(split.n_items) {
            for c in &t.categories {
                by_category.entry(c.clone()).or_default().push(i as ItemId);
            }
        }
        Negatives { co, by_category }
    }

    /// `n` distinct hard negatives for `targets`, none in `exclude`.
    fn draw(
        &self,
        ds: &Dataset,
        targets: &[ItemId],
        exclude: &[ItemId],
        n: usize,
        n_items: usize,
        rng: &mut Rng,
    ) -> Vec<ItemId> {
        let mut out: Vec<ItemId> = Vec::with_capacity(n);
        let ok = |i: ItemId, out: &[ItemId]| !exclude.contains(&i) && !out.contains(&i);
        let mut pools: Vec<&[ItemId]> = Vec::new();
        for &t in targets {
            pools.push(&self.co[t as usize]);
            if let Some(text) = ds.item_text.get(t as usize) {
                for c in &text.categories {
                    if let Some(p) = self.by_category.get(c) {
                        pools.push(p);
                    }
                }
            }
        }
        pools.retain(|p| !p.is_empty());
        let mut tries = 0;
        while out.len() < n && !pools.is_empty() && tries < 20 * n {
            tries += 1;
            let pool = pools[rng.index(pools.len())];
            let i = pool[rng.index(pool.len())];
            if ok(i, &out) {
                out.push(i);
            }
        }
        // Too few hard negatives: uniform items fill the rest.
        let mut tries = 0;
        while out.len() < n && tries < 100 * n + 1000 {
            tries += 1;
            let i = rng.index(n_items) as ItemId;
            if ok(i, &out) {
                out.push(i);
            }
        }
        out
    }
}

fn history_block(ds: &Dataset, history: &[ItemId], chars: usize) -> String {
    history
        .iter()
        .map(|&i| format!("- {}\n", item_description(ds, i, chars)))
        .collect()
}

/// Builds every example; the order is by user, then window (last window first).
pub fn examples(ds: &Dataset, split: &SequenceSplit, cfg: &SftConfig) -> Result<Vec<Example>> {
    llmrec_core::check::all_positive([
        ("sft.future", cfg.future),
        ("sft.history_items", cfg.history_items),
        ("sft.windows", cfg.windows),
        ("sft.title_chars", cfg.title_chars),
    ])?;
    if cfg.candidates <= cfg.future {
        return Err(Error::config(
            "candidates",
            format!(
                "must exceed future ({}) so that there are negatives",
                cfg.future
            ),
        ));
    }
    let d = Domain::of(ds);
    let neg = Negatives::new(ds, split);
    let raw = |v: &[ItemId]| -> Vec<String> { v.iter().map(|&i| ds.items.raw(i).into()).collect() };
    let mut out = Vec::new();
    for (u, s) in split.users.iter().enumerate() {
        let mut rng = Rng::stream(cfg.seed, u as u64);
        // The user's training items, less repeats of held-out items.
        let train: Vec<ItemId> = s
            .train
            .iter()
            .copied()
            .filter(|i| !s.valid.contains(i) && !s.test.contains(i))
            .collect();
        for w in 0..cfg.windows {
            let Some(end) = train.len().checked_sub(w * cfg.future) else {
                break;
            };
            if end < cfg.future + 1 {
                break;
            }
            let targets = &train[end - cfg.future..end];
            let before = &train[..end - cfg.future];
            let history = &before[before.len().saturating_sub(cfg.history_items)..];
            let user_raw = ds.users.raw(u as u32).to_string();
            let hist_text = history_block(ds, history, cfg.title_chars);
            let answer: String = targets
                .iter()
                .map(|&t| item_title(ds, t, cfg.title_chars))
                .collect::<Vec<_>>()
                .join("\n");
            let system = Message::system(format!(
                "You are a {} recommender. You recommend what a user will {} next.",
                d.noun, d.verb_base
            ));
            out.push(Example {
                messages: vec![
                    system.clone(),
                    Message::user(format!(
                        "The user {} these {}s, oldest first:\n{hist_text}\nRecommend the next {} {}(s) the user will {}. Answer with one title per line.",
                        d.verb, d.noun, cfg.future, d.noun, d.verb_base
                    )),
                    Message::assistant(answer.clone()),
                ],
                task: "recommend".into(),
                user: user_raw.clone(),
                items: ExampleItems {
                    history: raw(history),
                    candidates: Vec::new(),
                    targets: raw(targets),
                },
            });
            // Negatives exclude the training items only: choosing them never reads
            // the held-out items.
            let negatives = neg.draw(
                ds,
                targets,
                &s.train,
                cfg.candidates - cfg.future,
                split.n_items,
                &mut rng,
            );
            let mut cands: Vec<ItemId> = targets.iter().copied().chain(negatives).collect();
            rng.shuffle(&mut cands);
            let cand_text: String = cands
                .iter()
                .map(|&i| format!("- {}\n", item_title(ds, i, cfg.title_chars)))
                .collect();
            out.push(Example {
                messages: vec![
                    system,
                    Message::user(format!(
                        "The user {} these {}s, oldest first:\n{hist_text}\nCandidates:\n{cand_text}\nWhich {} of the candidates will the user {} next? Answer with one title per line, only from the candidates.",
                        d.verb, d.noun, cfg.future, d.verb_base
                    )),
                    Message::assistant(answer),
                ],
                task: "recommend_retrieval".into(),
                user: user_raw,
                items: ExampleItems {
                    history: raw(history),
                    candidates: raw(&cands),
                    targets: raw(targets),
                },
            });
        }
    }
    Ok(out)
}

/// Writes `recommend.jsonl` and `recommend_retrieval.jsonl` into `dir`.
pub fn export_sft(
    ds: &Dataset,
    split: &SequenceSplit,
    cfg: &SftConfig,
    dir: &Path,
) -> Result<SftReport> {
    let all = examples(ds, split, cfg)?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    let mut counts = [0usize; 2];
    for (slot, (task, file)) in [
        ("recommend", "recommend.jsonl"),
        ("recommend_retrieval", "recommend_retrieval.jsonl"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.join(file);
        write_with(&path, |tmp| {
            let f = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
            let mut w = std::io::BufWriter::new(f);
            for e in all.iter().filter(|e| e.task == task) {
                serde_json::to_writer(&mut w, e)
                    .map_err(|e| Error::Invalid(format!("json: {e}")))?;
                w.write_all(b"\n").map_err(|e| Error::io(tmp, e))?;
                counts[slot] += 1;
            }
            w.flush().map_err(|e| Error::io(tmp, e))
        })?;
        files.push(path);
    }
    let mut users: Vec<&str> = all.iter().map(|e| e.user.as_str()).collect();
    users.dedup();
    Ok(SftReport {
        users: users.len(),
        recommend_examples: counts[0],
        retrieval_examples: counts[1],
        files,
    })
}
