//! PALR (arXiv 2305.07622): an LLM user profile → retriever candidates → LLM ranking.
//!
//! For each evaluated user:
//!
//! 1. **Profile.** The LLM summarises the user's most recent training items
//!    (titles with genres or categories, at most [`PalrConfig::profile_items`]) as
//!    keywords. Generations are cached, so a rerun makes no LLM calls.
//! 2. **Candidates.** Any [`Recommender`] proposes the top
//!    [`PalrConfig::candidates`] items, history excluded (SASRec by default).
//! 3. **Ranking.** One prompt with the history, the profile and the numbered candidate
//!    list, in one of three [`RankMode`]s: free text parsed robustly ([`parse`]),
//!    generation constrained to candidate titles, or log-probability scoring.
//! 4. **Final list.** The model's choices, then the remaining candidates in the
//!    retriever's order. Any failure falls back to the retriever's order; no user is
//!    ever dropped.
//!
//! **Leakage.** The test target is each user's last item and the retriever sees the
//! usual test-stage history (training plus validation item), exactly as in SASRec's
//! own evaluation. The LLM sees *training items only*: profiles and prompts never
//! contain the user's validation or test item, and [`evaluate`] checks this for every
//! user before any call. Items are named by their titles, never by numeric ids.
//!
//! **Protocol.** The final top-K is a ranking over the full catalogue (a target
//! outside the candidates is a miss), so its metrics are comparable with full-ranking
//! results of the same users; the retriever's HR@candidates is the ceiling.

pub mod finetune;
pub mod parse;
pub mod retriever;
pub mod sft;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use llmrec_core::check;
use llmrec_core::io::{write_atomic, write_json};
use llmrec_core::metrics::ranking_metrics;
use llmrec_core::parallel::parallel_map;
use llmrec_core::{
    Dataset, Error, ItemId, Query, Recommender, Result, Rng, SequenceSplit, Stage, UserId,
};
pub use llmrec_llm::LlmContext;
use llmrec_llm::{BatchJob, Generation, Message, SamplingParams, run_batch_grouped};
use serde::{Deserialize, Serialize};

use parse::{Parsed, TitleIndex, Validity, parse_ranking};

/// Version of the PALR report format.
pub const REPORT_VERSION: u32 = 1;

/// How the LLM ranks the candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RankMode {
    /// Free text, parsed back to candidates (numbers or titles, fuzzy).
    Generate,
    /// Generation constrained to the candidates' titles (a token trie on the
    /// local backend; the best-scoring title over the OpenAI API).
    Constrained,
    /// Every candidate title scored by its log-probability as the answer.
    Logprob,
}

impl RankMode {
    /// `generate`, `constrained` or `logprob`.
    pub fn as_str(self) -> &'static str {
        match self {
            RankMode::Generate => "generate",
            RankMode::Constrained => "constrained",
            RankMode::Logprob => "logprob",
        }
    }
}

/// How [`RankMode::Logprob`] turns token log-probs into a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogprobScore {
    /// Mean over the title's tokens (does not favour short titles).
    Mean,
    /// Sum over the title's tokens.
    Total,
}

/// All PALR settings (`configs/palr.toml` documents each with its default).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PalrConfig {
    /// Users evaluated: a seeded sample of the test users (0 = all).
    pub users: usize,
    /// Seed of the user sample (and of sampled decoding, if any).
    pub seed: u64,
    /// Candidates the retriever proposes (the paper: 50).
    pub candidates: usize,
    /// Most recent training items shown in the ranking prompt.
    pub history_items: usize,
    /// Most recent training items the profile is written from.
    pub profile_items: usize,
    /// Titles longer than this many characters are cut (keeps prompts short).
    pub title_chars: usize,
    /// Token budget of a profile.
    pub profile_max_tokens: usize,
    /// Items the `generate` mode asks for.
    pub rank_count: usize,
    /// Token budget of a `generate` answer.
    pub rank_max_tokens: usize,
    /// Ranking modes to run.
    pub modes: Vec<RankMode>,
    /// Items the `constrained` mode picks one after another (each pick is one
    /// more constrained call); the rest follow in retriever order.
    pub constrained_picks: usize,
    /// Score of the `logprob` mode.
    pub logprob_score: LogprobScore,
    /// Cutoffs of HR and NDCG (each at most `candidates`).
    pub ks: Vec<usize>,
    /// Prompts decoded together by the local backend (batched decoding).
    pub group: usize,
    /// LLM calls in flight at once (raise it for a server).
    pub concurrency: usize,
    /// Users the retriever scores per batch.
    pub retrieval_batch: usize,
    /// Local backend: keep the last `group` prompts' KV caches, so that each
    /// user's candidate list is processed once for all modes (results can differ
    /// from cold calls at float-rounding level).
    pub reuse_prefix: bool,
}

impl Default for PalrConfig {
    fn default() -> Self {
        PalrConfig {
            users: 10,
            seed: 42,
            candidates: 50,
            history_items: 20,
            profile_items: 20,
            title_chars: 80,
            profile_max_tokens: 48,
            rank_count: 10,
            rank_max_tokens: 80,
            modes: vec![RankMode::Generate, RankMode::Constrained, RankMode::Logprob],
            constrained_picks: 1,
            logprob_score: LogprobScore::Mean,
            ks: vec![1, 5, 10],
            group: 8,
            concurrency: 1,
            retrieval_batch: 128,
            reuse_prefix: true,
        }
    }
}

impl PalrConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        check::all_positive([
            ("candidates", self.candidates),
            ("history_items", self.history_items),
            ("profile_items", self.profile_items),
            ("title_chars", self.title_chars),
            ("profile_max_tokens", self.profile_max_tokens),
            ("rank_count", self.rank_count),
            ("rank_max_tokens", self.rank_max_tokens),
            ("group", self.group),
            ("concurrency", self.concurrency),
            ("retrieval_batch", self.retrieval_batch),
        ])?;
        if self.modes.is_empty() {
            return Err(Error::config(
                "modes",
                "name at least one of generate, constrained, logprob",
            ));
        }
        if self.ks.is_empty() || self.ks.iter().any(|&k| k == 0 || k > self.candidates) {
            return Err(Error::config(
                "ks",
                format!(
                    "cutoffs must be between 1 and candidates ({})",
                    self.candidates
                ),
            ));
        }
        Ok(())
    }

    fn max_k(&self) -> usize {
        self.ks.iter().copied().max().unwrap_or(10)
    }
}

// ---------------------------------------------------------------------------------------
// Prompts

/// How prompts speak of a dataset's items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Domain {
    /// `movie` or `product`.
    pub noun: &'static str,
    /// `watched` or `bought`.
    pub verb: &'static str,
    /// `watch` or `buy`.
    pub verb_base: &'static str,
}

impl Domain {
    /// Movies for MovieLens datasets, products otherwise.
    pub fn of(ds: &Dataset) -> Self {
        let n = ds.name.to_ascii_lowercase();
        if n.starts_with("ml-") || n.contains("movielens") {
            Domain {
                noun: "movie",
                verb: "watched",
                verb_base: "watch",
            }
        } else {
            Domain {
                noun: "product",
                verb: "bought",
                verb_base: "buy",
            }
        }
    }
}

fn cut(s: &str, chars: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    match s.char_indices().nth(chars) {
        Some((i, _)) => s[..i].trim_end().to_string(),
        None => s,
    }
}

/// The title of `item` as prompts show it (cut to `chars`; never a numeric id).
pub fn item_title(ds: &Dataset, item: ItemId, chars: usize) -> String {
    let t = ds.item_text.get(item as usize);
    let title = t.map(|t| t.title.trim()).unwrap_or("");
    if !title.is_empty() {
        return cut(title, chars);
    }
    match t.filter(|t| !t.categories.is_empty()) {
        Some(t) => cut(&format!("untitled ({})", t.categories.join(", ")), chars),
        None => "untitled item".into(),
    }
}

/// Title with up to three genres or categories: `Heat (1995) [Action, Crime]`.
pub fn item_description(ds: &Dataset, item: ItemId, chars: usize) -> String {
    let title = item_title(ds, item, chars);
    let cats: Vec<&str> = ds
        .item_text
        .get(item as usize)
        .map(|t| {
            t.categories
                .iter()
                .map(String::as_str)
                .filter(|c| !c.is_empty())
                .rev()
                .take(3)
                .collect()
        })
        .unwrap_or_default();
    if cats.is_empty() || title.starts_with("untitled") {
        title
    } else {
        let mut cats = cats;
        cats.reverse();
        format!("{title} [{}]", cats.join(", "))
    }
}

/// The profile prompt for a user's (training-only) `history`, oldest first.
pub fn profile_messages(ds: &Dataset, history: &[ItemId], cfg: &PalrConfig) -> Vec<Message> {
    let d = Domain::of(ds);
    let recent = &history[history.len().saturating_sub(cfg.profile_items)..];
    let mut list = String::new();
    for (i, &it) in recent.iter().enumerate() {
        list.push_str(&format!(
            "{}. {}\n",
            i + 1,
            item_description(ds, it, cfg.title_chars)
        ));
    }
    vec![
        Message::system(format!(
            "You are an expert in {}s who describes people's tastes concisely.",
            d.noun
        )),
        Message::user(format!(
            "A user {} these {}s, oldest first:\n{list}\nSummarise this user's preferences in at most 10 comma-separated keywords (genres, themes, styles). Answer with the keywords only.",
            d.verb, d.noun
        )),
    ]
}

/// Cleans a generated profile for use inside a prompt: one line, at most 300 characters.
pub fn clean_profile(text: &str) -> String {
    let one = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let c = cut(&one, 300);
    if c.is_empty() { "unknown".into() } else { c }
}

/// The ranking prompt: history (training only), profile, numbered candidates and
/// the instruction of `mode`.
pub fn ranking_messages(
    ds: &Dataset,
    history: &[ItemId],
    profile: &str,
    candidate_titles: &[String],
    mode: RankMode,
    cfg: &PalrConfig,
) -> Vec<Message> {
    let d = Domain::of(ds);
    let recent = &history[history.len().saturating_sub(cfg.history_items)..];
    let mut text = format!("The user {} these {}s, oldest first:\n", d.verb, d.noun);
    for &it in recent {
        text.push_str(&format!(
            "- {}\n",
            item_description(ds, it, cfg.title_chars)
        ));
    }
    text.push_str(&format!("\nTheir preferences: {profile}\n\nCandidates:\n"));
    for (i, t) in candidate_titles.iter().enumerate() {
        text.push_str(&format!("[{}] {t}\n", i + 1));
    }
    text.push('\n');
    match mode {
        RankMode::Generate => text.push_str(&format!(
            "Choose the {} candidates the user is most likely to {} next, best first. Use only the candidates above. Answer with one candidate per line as its number in brackets and its title, like:\n[3] Title",
            cfg.rank_count.min(candidate_titles.len()),
            d.verb_base
        )),
        RankMode::Constrained | RankMode::Logprob => text.push_str(&format!(
            "Which candidate is the user most likely to {} next? Answer with its title only.",
            d.verb_base
        )),
    }
    vec![
        Message::system(format!(
            "You are a {} recommender. You rank only the given candidates.",
            d.noun
        )),
        Message::user(text),
    ]
}

// ---------------------------------------------------------------------------------------
// Evaluation

/// The users, histories and candidates of one evaluation, before any LLM call.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Evaluated users, in sample order (see [`sample_users`]).
    pub users: Vec<UserId>,
    /// Per user: the items the LLM may see (training items, oldest first, with the
    /// user's validation and test items removed).
    pub llm_history: Vec<Vec<ItemId>>,
    /// Per user: the retriever's query history (training plus validation item).
    pub retriever_history: Vec<Vec<ItemId>>,
    /// Per user: the held-out test item(s).
    pub targets: Vec<Vec<ItemId>>,
    /// Per user: the retriever's candidates, best first.
    pub candidates: Vec<Vec<ItemId>>,
}

/// A seeded sample of `n` test users (0 = all, ascending), in sample order: the
/// sample of `m < n` users with the same seed is the first `m` of it.
pub fn sample_users(split: &SequenceSplit, n: usize, seed: u64) -> Vec<UserId> {
    let mut users: Vec<UserId> = split
        .users
        .iter()
        .enumerate()
        .filter(|(_, u)| !u.test.is_empty() && !u.train.is_empty())
        .map(|(i, _)| i as UserId)
        .collect();
    if n > 0 && n < users.len() {
        Rng::stream(seed, 0x9a17).shuffle(&mut users);
        users.truncate(n);
    }
    users
}

/// Errors if any item the LLM may see is one of the user's validation or test items.
pub fn check_no_leak(split: &SequenceSplit, user: UserId, llm_items: &[ItemId]) -> Result<()> {
    let u = &split.users[user as usize];
    if let Some(&i) = llm_items
        .iter()
        .find(|i| u.valid.contains(i) || u.test.contains(i))
    {
        return Err(Error::Invalid(format!(
            "leakage: item {i} of user {user} is a validation or test item but would reach the LLM"
        )));
    }
    Ok(())
}

/// Samples users, builds leak-free histories and retrieves candidates.
pub fn prepare(
    split: &SequenceSplit,
    retriever: &dyn Recommender,
    cfg: &PalrConfig,
) -> Result<Prepared> {
    cfg.validate()?;
    if retriever.n_items() != split.n_items {
        return Err(Error::Invalid(format!(
            "the retriever scores {} items but the dataset has {}",
            retriever.n_items(),
            split.n_items
        )));
    }
    let users = sample_users(split, cfg.users, cfg.seed);
    let mut p = Prepared {
        users: users.clone(),
        llm_history: Vec::new(),
        retriever_history: Vec::new(),
        targets: Vec::new(),
        candidates: Vec::new(),
    };
    for &u in &users {
        let s = &split.users[u as usize];
        let llm: Vec<ItemId> = s
            .train
            .iter()
            .copied()
            .filter(|i| !s.valid.contains(i) && !s.test.contains(i))
            .collect();
        check_no_leak(split, u, &llm)?;
        p.llm_history.push(llm);
        p.retriever_history.push(split.history(u, Stage::Test));
        p.targets.push(s.test.clone());
    }
    let n = split.n_items;
    let mut scores = Vec::new();
    for chunk in (0..users.len())
        .collect::<Vec<_>>()
        .chunks(cfg.retrieval_batch)
    {
        let queries: Vec<Query<'_>> = chunk
            .iter()
            .map(|&j| Query::new(users[j], &p.retriever_history[j]))
            .collect();
        scores.resize(queries.len() * n, 0.0);
        retriever.score_batch(&queries, &mut scores)?;
        for (row, q) in scores.chunks_mut(n).zip(&queries) {
            llmrec_core::topk::mask(row, q.history);
            p.candidates
                .push(llmrec_core::topk::top_k(row, cfg.candidates));
        }
    }
    Ok(p)
}

/// Counters of the LLM calls of one stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallStats {
    /// Calls made or answered from the cache.
    pub calls: usize,
    /// Of `calls`, answered from the cache.
    pub cached: usize,
    /// Of `calls`, failed (the user fell back to the retriever's order).
    pub failed: usize,
    /// Prompt tokens of the calls (as the backend counts them; cached calls
    /// count what they cost when first made).
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Wall time of the stage in seconds.
    pub seconds: f64,
}

impl CallStats {
    /// Fraction of calls answered from the cache.
    pub fn hit_rate(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.cached as f64 / self.calls as f64
        }
    }

    fn record(&mut self, g: Option<&Generation>, cached: bool) {
        self.calls += 1;
        self.cached += cached as usize;
        match g {
            Some(g) => {
                self.prompt_tokens += g.prompt_tokens;
                self.completion_tokens += g.completion_tokens;
            }
            None => self.failed += 1,
        }
    }
}

/// One mode's outcome for one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeOutcome {
    /// Final list (raw item ids), best first.
    pub list: Vec<String>,
    /// 1-based rank of the target in the final list.
    pub target_rank: Option<usize>,
    /// Output-item classes (generate mode; constrained/logprob are valid by construction).
    pub validity: Validity,
    /// Whether the retriever's order was used because the LLM call failed.
    pub fallback: bool,
    /// The LLM's raw answer (generate and constrained modes).
    pub answer: Option<String>,
    /// The error of a failed call.
    pub error: Option<String>,
}

/// Everything recorded about one evaluated user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserOutcome {
    /// Raw user id.
    pub user: String,
    /// Raw ids of the test target(s).
    pub targets: Vec<String>,
    /// 1-based rank of the target among the candidates.
    pub candidate_rank: Option<usize>,
    /// The profile used in the prompts.
    pub profile: String,
    /// Per mode.
    pub modes: BTreeMap<String, ModeOutcome>,
}

/// One row of the comparison table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `sasrec (retriever)`, `palr-generate`, ...
    pub method: String,
    /// `HR@k` and `NDCG@k` for every cutoff.
    pub metrics: BTreeMap<String, f64>,
}

/// The result of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PalrReport {
    /// Format version ([`REPORT_VERSION`]).
    pub version: u32,
    /// Dataset name.
    pub dataset: String,
    /// Dataset fingerprint.
    pub fingerprint: String,
    /// Split name.
    pub split: String,
    /// Protocol, in words.
    pub protocol: String,
    /// Retriever name.
    pub retriever: String,
    /// LLM backend and model.
    pub llm: String,
    /// Settings.
    pub config: PalrConfig,
    /// Users evaluated.
    pub users: usize,
    /// Retriever HR@candidates: the best any reranker can reach.
    pub ceiling: f64,
    /// The table: retriever, then each mode.
    pub rows: Vec<Row>,
    /// LLM call statistics: `profile` and each mode.
    pub calls: BTreeMap<String, CallStats>,
    /// Validity totals per mode.
    pub validity: BTreeMap<String, Validity>,
    /// Per-user records.
    pub per_user: Vec<UserOutcome>,
    /// Wall time of the whole evaluation in seconds.
    pub seconds: f64,
}

/// Progress of [`evaluate`]: the stage (`profile`, a mode) and users done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<'a> {
    /// `profile`, `generate`, `constrained` or `logprob`.
    pub stage: &'a str,
    /// Users done in this stage.
    pub done: usize,
    /// Users in this stage.
    pub total: usize,
}

/// The final list: `order` (candidate positions), then the rest in retriever order.
fn fill(order: &[usize], candidates: &[ItemId], k: usize) -> Vec<ItemId> {
    let mut used = vec![false; candidates.len()];
    let mut out = Vec::with_capacity(k);
    for &i in order {
        if i < candidates.len() && !used[i] && out.len() < k {
            used[i] = true;
            out.push(candidates[i]);
        }
    }
    for (i, &c) in candidates.iter().enumerate() {
        if out.len() >= k {
            break;
        }
        if !used[i] {
            out.push(c);
        }
    }
    out
}

fn rank_in(list: &[ItemId], targets: &[ItemId]) -> Vec<Option<usize>> {
    targets
        .iter()
        .map(|t| list.iter().position(|x| x == t).map(|p| p + 1))
        .collect()
}

fn row(method: &str, lists: &[Vec<ItemId>], targets: &[Vec<ItemId>], ks: &[usize]) -> Row {
    let mut metrics = BTreeMap::new();
    let n = lists.len().max(1) as f64;
    for &k in ks {
        let (mut hr, mut ndcg) = (0.0, 0.0);
        for (l, t) in lists.iter().zip(targets) {
            let m = ranking_metrics(&rank_in(l, t), k);
            hr += m.hr;
            ndcg += m.ndcg;
        }
        metrics.insert(format!("HR@{k}"), hr / n);
        metrics.insert(format!("NDCG@{k}"), ndcg / n);
    }
    Row {
        method: method.into(),
        metrics,
    }
}

/// Runs PALR on the prepared users and compares it with the retriever.
pub fn evaluate(
    ds: &Dataset,
    split: &SequenceSplit,
    retriever_name: &str,
    prep: &Prepared,
    ctx: &LlmContext<'_>,
    cfg: &PalrConfig,
    progress: &(dyn Fn(Progress<'_>) + Sync),
) -> Result<PalrReport> {
    cfg.validate()?;
    let t_all = Instant::now();
    let n = prep.users.len();
    let k = cfg.max_k();
    let mut calls = BTreeMap::new();
    let mut validity_total = BTreeMap::new();

    let titles: Vec<Vec<String>> = prep
        .candidates
        .iter()
        .map(|c| {
            c.iter()
                .map(|&i| item_title(ds, i, cfg.title_chars))
                .collect()
        })
        .collect();
    let retriever_lists: Vec<Vec<ItemId>> = prep
        .candidates
        .iter()
        .map(|c| c[..k.min(c.len())].to_vec())
        .collect();
    let mut rows = vec![row(
        &format!("{retriever_name} (retriever)"),
        &retriever_lists,
        &prep.targets,
        &cfg.ks,
    )];

    // Users go in chunks of `group`, in sample order: a chunk's profiles, then
    // every mode on the chunk, then the next chunk. So a backend that keeps
    // recent prompts' KV caches (the local one with `reuse_prefix`) processes each
    // user's candidate list once, and an interrupted run has cached whole users:
    // a smaller sample with the same seed is a prefix of the order and is then
    // answered from the cache.
    let mut modes = cfg.modes.clone();
    modes.sort();
    modes.dedup();
    let steps = n * (modes.len() + 1);
    let done = AtomicUsize::new(0);
    let tick = || {
        let d = done.fetch_add(1, Ordering::SeqCst) + 1;
        progress(Progress {
            stage: "rank",
            done: d,
            total: steps,
        });
    };
    progress(Progress {
        stage: "rank",
        done: 0,
        total: steps,
    });
    let mut profiles: Vec<String> = Vec::with_capacity(n);
    let mut profile_stats = CallStats::default();
    let mut outcomes: BTreeMap<RankMode, Vec<Outcome>> = BTreeMap::new();
    let mut mode_stats: BTreeMap<RankMode, CallStats> = BTreeMap::new();
    for start in (0..n).step_by(cfg.group) {
        let users: Vec<usize> = (start..(start + cfg.group).min(n)).collect();
        let t0 = Instant::now();
        let prompts: Vec<Vec<Message>> = users
            .iter()
            .map(|&j| profile_messages(ds, &prep.llm_history[j], cfg))
            .collect();
        let results = generate_for(
            ds,
            prep,
            ctx,
            cfg,
            &users,
            prompts,
            cfg.profile_max_tokens,
            &tick,
        )?;
        for r in &results {
            profile_stats.record(r.result.as_ref().ok(), r.cached);
            profiles.push(clean_profile(
                r.result.as_ref().map(|g| g.text.as_str()).unwrap_or(""),
            ));
        }
        profile_stats.seconds += t0.elapsed().as_secs_f64();
        for &mode in &modes {
            let t0 = Instant::now();
            let stats = mode_stats.entry(mode).or_default();
            let out = rank_users(
                ds, prep, ctx, cfg, mode, &users, &profiles, &titles, stats, &tick,
            )?;
            stats.seconds += t0.elapsed().as_secs_f64();
            outcomes.entry(mode).or_default().extend(out);
        }
    }
    calls.insert("profile".to_string(), profile_stats);

    let mut per_user: Vec<UserOutcome> = (0..n)
        .map(|j| UserOutcome {
            user: ds.users.raw(prep.users[j]).to_string(),
            targets: prep.targets[j]
                .iter()
                .map(|&t| ds.items.raw(t).to_string())
                .collect(),
            candidate_rank: prep.targets[j]
                .first()
                .and_then(|t| prep.candidates[j].iter().position(|c| c == t))
                .map(|p| p + 1),
            profile: profiles[j].clone(),
            modes: BTreeMap::new(),
        })
        .collect();

    for (mode, outs) in outcomes {
        let name = mode.as_str();
        let mut total = Validity::default();
        let mut lists = Vec::with_capacity(n);
        for (j, (parsed, answer, error)) in outs.into_iter().enumerate() {
            total.add(&parsed.validity);
            let list = fill(&parsed.order, &prep.candidates[j], k);
            per_user[j].modes.insert(
                name.to_string(),
                ModeOutcome {
                    list: list.iter().map(|&i| ds.items.raw(i).to_string()).collect(),
                    target_rank: rank_in(&list, &prep.targets[j]).into_iter().flatten().min(),
                    validity: parsed.validity,
                    fallback: error.is_some(),
                    answer,
                    error,
                },
            );
            lists.push(list);
        }
        rows.push(row(&format!("palr-{name}"), &lists, &prep.targets, &cfg.ks));
        calls.insert(
            name.to_string(),
            mode_stats.remove(&mode).unwrap_or_default(),
        );
        validity_total.insert(name.to_string(), total);
    }

    let ceiling = if n == 0 {
        0.0
    } else {
        per_user
            .iter()
            .filter(|u| u.candidate_rank.is_some())
            .count() as f64
            / n as f64
    };
    Ok(PalrReport {
        version: REPORT_VERSION,
        dataset: ds.name.clone(),
        fingerprint: ds.fingerprint(),
        split: split.name.clone(),
        protocol: format!(
            "leave-one-out test item; {retriever_name} top-{} candidates (history excluded) reranked by the LLM, then the rest in retriever order; metrics over the full catalogue of {} items (a target outside the candidates is a miss)",
            cfg.candidates, split.n_items
        ),
        retriever: retriever_name.into(),
        llm: format!("{}:{}", ctx.llm.backend(), ctx.llm.model()),
        config: cfg.clone(),
        users: n,
        ceiling,
        rows,
        calls,
        validity: validity_total,
        per_user,
        seconds: t_all.elapsed().as_secs_f64(),
    })
}

/// Greedy generations for `users` (indices into `prep`), one prompt each,
/// through the cache and the batch runner.
#[allow(clippy::too_many_arguments)]
fn generate_for(
    ds: &Dataset,
    prep: &Prepared,
    ctx: &LlmContext<'_>,
    cfg: &PalrConfig,
    users: &[usize],
    prompts: Vec<Vec<Message>>,
    max_tokens: usize,
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<llmrec_llm::BatchResult>> {
    let jobs: Vec<BatchJob> = users
        .iter()
        .zip(prompts)
        .map(|(&j, messages)| BatchJob {
            id: ds.users.raw(prep.users[j]).to_string(),
            messages,
            params: SamplingParams {
                seed: cfg.seed,
                ..SamplingParams::greedy(max_tokens)
            },
        })
        .collect();
    run_batch_grouped(
        ctx.llm,
        ctx.cache,
        &jobs,
        cfg.concurrency,
        cfg.group,
        &|_| tick(),
    )
}

/// One user's ranking outcome: the parsed order, the raw answer, the error.
type Outcome = (Parsed, Option<String>, Option<String>);

/// Ranks `users` (indices into `prep`) in one mode.
#[allow(clippy::too_many_arguments)]
fn rank_users(
    ds: &Dataset,
    prep: &Prepared,
    ctx: &LlmContext<'_>,
    cfg: &PalrConfig,
    mode: RankMode,
    users: &[usize],
    profiles: &[String],
    titles: &[Vec<String>],
    stats: &mut CallStats,
    tick: &(dyn Fn() + Sync),
) -> Result<Vec<Outcome>> {
    let prompts: Vec<Vec<Message>> = users
        .iter()
        .map(|&j| {
            ranking_messages(
                ds,
                &prep.llm_history[j],
                &profiles[j],
                &titles[j],
                mode,
                cfg,
            )
        })
        .collect();
    if mode == RankMode::Generate {
        let results = generate_for(
            ds,
            prep,
            ctx,
            cfg,
            users,
            prompts,
            cfg.rank_max_tokens,
            tick,
        )?;
        return Ok(results
            .iter()
            .zip(users)
            .map(|(r, &j)| {
                stats.record(r.result.as_ref().ok(), r.cached);
                match &r.result {
                    Ok(g) => {
                        let idx = TitleIndex::new(&titles[j]);
                        (
                            parse_ranking(&g.text, &titles[j], &idx),
                            Some(g.text.clone()),
                            None,
                        )
                    }
                    Err(e) => (Parsed::default(), None, Some(e.to_string())),
                }
            })
            .collect());
    }
    let stats_m = Mutex::new(std::mem::take(stats));
    let out = parallel_map(users.len(), cfg.concurrency, |u| {
        let j = users[u];
        let r = if mode == RankMode::Constrained {
            constrained_pick(ctx, &prompts[u], &titles[j], cfg.constrained_picks)
        } else {
            logprob_order(ctx, &prompts[u], &titles[j], cfg.logprob_score)
        };
        tick();
        let mut st = stats_m.lock().unwrap_or_else(|p| p.into_inner());
        match r {
            Ok((order, answer, gens)) => {
                for (g, cached) in &gens {
                    st.record(Some(g), *cached);
                }
                let validity = Validity {
                    valid: order.len(),
                    ..Default::default()
                };
                (Parsed { order, validity }, answer, None)
            }
            Err(e) => {
                st.record(None, false);
                (Parsed::default(), None, Some(e.to_string()))
            }
        }
    });
    *stats = stats_m.into_inner().unwrap_or_else(|p| p.into_inner());
    Ok(out)
}

type Picked = (Vec<usize>, Option<String>, Vec<(Generation, bool)>);

/// Constrained picks, one call each: later calls see the earlier picks as the
/// assistant's turns and may not repeat them.
fn constrained_pick(
    ctx: &LlmContext<'_>,
    prompt: &[Message],
    titles: &[String],
    picks: usize,
) -> Result<Picked> {
    let mut messages = prompt.to_vec();
    let mut order: Vec<usize> = Vec::new();
    let mut gens = Vec::new();
    let mut answers = Vec::new();
    for _ in 0..picks.min(titles.len()) {
        let allowed: Vec<String> = titles
            .iter()
            .enumerate()
            .filter(|(i, _)| !order.contains(i))
            .map(|(_, t)| t.clone())
            .collect();
        let (answer, g, cached) = ctx.cached_call(
            "palr-constrained",
            &messages,
            serde_json::json!(allowed),
            || ctx.llm.generate_constrained(&messages, &allowed),
        )?;
        let Some(i) = (0..titles.len()).find(|i| !order.contains(i) && titles[*i] == answer) else {
            return Err(Error::Invalid(format!(
                "constrained answer `{answer}` is not a candidate"
            )));
        };
        order.push(i);
        gens.push((g, cached));
        answers.push(answer.clone());
        messages.push(Message::assistant(answer));
        messages.push(Message::user(
            "Another candidate the user is likely to choose, not one already named? Answer with its title only.",
        ));
    }
    Ok((order, Some(answers.join("\n")), gens))
}

/// All candidates sorted by the log-probability of their title as the answer
/// (ties keep the retriever's order).
fn logprob_order(
    ctx: &LlmContext<'_>,
    prompt: &[Message],
    titles: &[String],
    score: LogprobScore,
) -> Result<Picked> {
    let (scores, g, cached): (Vec<(f64, f64)>, _, _) =
        ctx.cached_call("palr-logprob", prompt, serde_json::json!(titles), || {
            Ok(ctx
                .llm
                .score_continuations(prompt, titles)?
                .into_iter()
                .map(|l| (l.total, l.mean))
                .collect())
        })?;
    if scores.len() != titles.len() {
        return Err(Error::Invalid(format!(
            "{} log-probs for {} candidates",
            scores.len(),
            titles.len()
        )));
    }
    let value = |i: usize| match score {
        LogprobScore::Mean => scores[i].1,
        LogprobScore::Total => scores[i].0,
    };
    let mut order: Vec<usize> = (0..titles.len()).collect();
    order.sort_by(|&a, &b| {
        let (va, vb) = (value(a), value(b));
        let va = if va.is_nan() { f64::NEG_INFINITY } else { va };
        let vb = if vb.is_nan() { f64::NEG_INFINITY } else { vb };
        vb.total_cmp(&va).then(a.cmp(&b))
    });
    Ok((order, None, vec![(g, cached)]))
}

/// The comparison table as Markdown.
pub fn table(report: &PalrReport) -> String {
    let mut cols: Vec<String> = Vec::new();
    for k in &report.config.ks {
        cols.push(format!("HR@{k}"));
    }
    for k in &report.config.ks {
        cols.push(format!("NDCG@{k}"));
    }
    let mut s = format!("| method | {} |\n|---|", cols.join(" | "));
    s.push_str(&"---|".repeat(cols.len()));
    s.push('\n');
    for r in &report.rows {
        s.push_str(&format!("| {} |", r.method));
        for c in &cols {
            s.push_str(&format!(
                " {:.4} |",
                r.metrics.get(c).copied().unwrap_or(0.0)
            ));
        }
        s.push('\n');
    }
    s.push_str(&format!(
        "\nCandidate ceiling (retriever HR@{}): {:.4} over {} users.\n\n",
        report.config.candidates, report.ceiling, report.users
    ));
    s.push_str("| stage | calls | cached | failed | prompt tok | generated tok | seconds | valid | hallucinated | duplicated | unparsable |\n|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (stage, c) in &report.calls {
        let v = report.validity.get(stage).copied().unwrap_or_default();
        let vcols = if stage == "profile" {
            "— | — | — | —".to_string()
        } else {
            format!(
                "{} | {} | {} | {}",
                v.valid, v.hallucinated, v.duplicated, v.unparsable
            )
        };
        s.push_str(&format!(
            "| {stage} | {} | {} | {} | {} | {} | {:.1} | {vcols} |\n",
            c.calls, c.cached, c.failed, c.prompt_tokens, c.completion_tokens, c.seconds
        ));
    }
    s
}

/// Writes `report.json` (without per-user records), `per_user.jsonl` and
/// `table.md` into `dir` (each through a temp file and a rename).
pub fn write_report(dir: &Path, report: &PalrReport) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut summary = report.clone();
    summary.per_user.clear();
    write_json(&dir.join("report.json"), &summary)?;
    write_json(&dir.join("metrics.json"), &metrics_record(&summary)?)?;
    let mut lines = Vec::new();
    for u in &report.per_user {
        lines.extend(serde_json::to_vec(u).map_err(|e| Error::Invalid(format!("json: {e}")))?);
        lines.push(b'\n');
    }
    write_atomic(&dir.join("per_user.jsonl"), &lines)?;
    write_atomic(&dir.join("table.md"), table(report).as_bytes())
}

/// The report without wall times and per-user records: what a seeded rerun on the
/// same machine reproduces byte for byte (`metrics.json` of the run folder).
fn metrics_record(summary: &PalrReport) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(summary).map_err(|e| Error::Invalid(format!("json: {e}")))?;
    if let Some(o) = v.as_object_mut() {
        o.remove("seconds");
        o.remove("per_user");
        if let Some(calls) = o.get_mut("calls").and_then(|c| c.as_object_mut()) {
            for stage in calls.values_mut() {
                if let Some(s) = stage.as_object_mut() {
                    s.remove("seconds");
                }
            }
        }
    }
    Ok(v)
}

/// The set of all items the LLM saw for one prepared user (for audits and tests).
pub fn llm_visible_items(prep: &Prepared, j: usize) -> HashSet<ItemId> {
    prep.llm_history[j].iter().copied().collect()
}
