//! Zero- and few-shot LLM rating prediction (arXiv 2305.06474, §3): the prompt lists
//! the user's most recent *training* ratings (title, genres, stars) and asks for the
//! stars of the candidate movie. Few-shot prompts put `k` worked examples, each
//! from the training ratings of a user outside the sample, before the question as
//! earlier chat turns; every prompt has the same examples.
//!
//! Two readouts of one prompt:
//! - **parsed**: greedy generation, the first digit 1–5 of the answer (an answer
//!   without one falls back to the training mean, and is counted);
//! - **expected**: `Σ r · p(r)` under the model's probabilities of the answers
//!   "1" … "5", renormalised over the five ([`expected_rating`]); it never fails.
//!
//! Only training rows reach a prompt: validation and test ratings never do
//! ([`PromptParts`] holds the rows a prompt was built from, so tests can check).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use llmrec_core::{Error, Result, Rng};
use llmrec_data::loaders::ExplicitRatings;
use llmrec_llm::{BatchJob, LlmContext, Message, SamplingParams, run_batch_grouped};
use serde::{Deserialize, Serialize};

use super::protocol::RatingRow;

/// Settings of the zero- and few-shot LLM runs (`[llm]` of `configs/rating.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmRatingConfig {
    /// Test rows sampled (seeded) for the LLM methods; the baselines are
    /// recomputed on the same rows. Default 500.
    pub sample: usize,
    /// Most recent training ratings of the user in the prompt. Default 20.
    pub history: usize,
    /// Worked examples of the few-shot prompt (the same for every row, from
    /// users outside the sample). Default 3.
    pub shots: usize,
    /// Training ratings shown before each worked example's question. Default 5.
    pub shot_history: usize,
    /// Most tokens of the parsed readout's answer. Default 8.
    pub max_tokens: usize,
    /// Prompts decoded together by the local backend. Default 4.
    pub group: usize,
    /// Seed of the sample and of the worked examples. Default 42.
    pub seed: u64,
}

impl Default for LlmRatingConfig {
    fn default() -> Self {
        LlmRatingConfig {
            sample: 500,
            history: 20,
            shots: 3,
            shot_history: 5,
            max_tokens: 8,
            group: 4,
            seed: 42,
        }
    }
}

impl LlmRatingConfig {
    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, msg: &str| Err(Error::config(field, msg.to_string()));
        if self.sample == 0 {
            return bad("llm.sample", "must be at least 1");
        }
        if self.history == 0 {
            return bad("llm.history", "must be at least 1");
        }
        if self.shots > 0 && self.shot_history == 0 {
            return bad("llm.shot_history", "must be at least 1 when shots > 0");
        }
        if self.max_tokens == 0 {
            return bad("llm.max_tokens", "must be at least 1");
        }
        if self.group == 0 {
            return bad("llm.group", "must be at least 1");
        }
        Ok(())
    }
}

/// The answers scored by the expected-rating readout.
pub const STARS: [&str; 5] = ["1", "2", "3", "4", "5"];

/// Expected stars under the probabilities of the answers "1" … "5", given their
/// log-probabilities (natural log, in that order), renormalised over the five.
pub fn expected_rating(logprobs: &[f64]) -> Result<f32> {
    if logprobs.len() != STARS.len() {
        return Err(Error::Invalid(format!(
            "expected rating: {} log-probabilities for 5 answers",
            logprobs.len()
        )));
    }
    let max = logprobs
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return Err(Error::Invalid(
            "expected rating: no finite log-probability".into(),
        ));
    }
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (r, &lp) in logprobs.iter().enumerate() {
        let p = if lp.is_finite() {
            (lp - max).exp()
        } else {
            0.0
        };
        num += (r + 1) as f64 * p;
        den += p;
    }
    Ok((num / den) as f32)
}

/// The first digit 1–5 of an answer, if any.
pub fn parse_stars(answer: &str) -> Option<u8> {
    answer
        .chars()
        .find(|c| ('1'..='5').contains(c))
        .and_then(|c| c.to_digit(10))
        .map(|d| d as u8)
}

/// A seeded sample of `n` rows of `rows` (all of them when `n` is larger), in
/// their original order.
pub fn sample_rows(rows: &[RatingRow], n: usize, seed: u64) -> Vec<RatingRow> {
    let mut idx: Vec<usize> = (0..rows.len()).collect();
    Rng::stream(seed, 0x5a4d_504c).shuffle(&mut idx);
    idx.truncate(n);
    idx.sort_unstable();
    idx.into_iter().map(|i| rows[i]).collect()
}

/// Every user's training rows in time order, and the users that can lend a worked
/// example (more than `shot_history` training rows).
#[derive(Debug, Clone)]
pub struct TrainHistories {
    by_user: HashMap<u32, Vec<RatingRow>>,
    lenders: Vec<u32>,
    shot_history: usize,
}

impl TrainHistories {
    /// Groups the training rows `train` by user.
    pub fn new(train: &[RatingRow], shot_history: usize) -> TrainHistories {
        let mut by_user: HashMap<u32, Vec<RatingRow>> = HashMap::new();
        for r in train {
            by_user.entry(r.user).or_default().push(*r);
        }
        for rows in by_user.values_mut() {
            rows.sort_by_key(|r| r.position);
        }
        let mut lenders: Vec<u32> = by_user
            .iter()
            .filter(|(_, rows)| rows.len() > shot_history)
            .map(|(&u, _)| u)
            .collect();
        lenders.sort_unstable();
        TrainHistories {
            by_user,
            lenders,
            shot_history,
        }
    }

    /// `user`'s training rows, oldest first (empty for an unknown user).
    pub fn of(&self, user: u32) -> &[RatingRow] {
        self.by_user.get(&user).map_or(&[], Vec::as_slice)
    }
}

/// One worked example: another user's ratings and the rating that followed them.
#[derive(Debug, Clone, PartialEq)]
pub struct Shot {
    /// Training ratings shown, oldest first.
    pub history: Vec<RatingRow>,
    /// The training rating asked about; its stars are the example's answer.
    pub target: RatingRow,
}

/// The rows a prompt is built from (all of them training rows).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptParts {
    /// The user's most recent training ratings, oldest first.
    pub history: Vec<RatingRow>,
    /// Worked examples (empty for zero-shot).
    pub shots: Vec<Shot>,
    /// The row whose stars are asked for (its stars are never shown).
    pub question: RatingRow,
}

/// `k` worked examples, one from each of `k` distinct users drawn (seeded) among
/// those with more than `shot_history` training rows and not in `exclude` (the
/// users of the sampled rows, so every prompt's examples come from other users).
/// Each example is `shot_history` consecutive training ratings and the training
/// rating that followed them. The same examples open every few-shot prompt, so
/// the local backend computes their shared prefix once.
pub fn draw_shots(h: &TrainHistories, k: usize, exclude: &HashSet<u32>, seed: u64) -> Vec<Shot> {
    let mut lenders: Vec<u32> = h
        .lenders
        .iter()
        .copied()
        .filter(|u| !exclude.contains(u))
        .collect();
    let mut rng = Rng::stream(seed, 0x5a4d_5348);
    rng.shuffle(&mut lenders);
    lenders
        .into_iter()
        .take(k)
        .map(|u| {
            let rows = h.of(u);
            let at = h.shot_history + rng.index(rows.len() - h.shot_history);
            Shot {
                history: rows[at - h.shot_history..at].to_vec(),
                target: rows[at],
            }
        })
        .collect()
}

/// The parts of the prompt for `row`: its user's last `history` training ratings
/// and the worked examples `shots` (from [`draw_shots`]; empty for zero-shot).
pub fn prompt_parts(
    h: &TrainHistories,
    row: &RatingRow,
    history: usize,
    shots: &[Shot],
) -> PromptParts {
    let own = h.of(row.user);
    PromptParts {
        history: own[own.len().saturating_sub(history)..].to_vec(),
        shots: shots.to_vec(),
        question: *row,
    }
}

/// A movie as prompts name it: "Title (Genre, Genre)".
pub(crate) fn describe(data: &ExplicitRatings, movie: u32) -> String {
    match data.movies.get(&movie) {
        Some(m) if m.genres.is_empty() => m.title.clone(),
        Some(m) => format!("{} ({})", m.title, m.genres.join(", ")),
        None => format!("movie {movie}"),
    }
}

fn stars_word(s: f32) -> String {
    let s = s.round() as u8;
    if s == 1 {
        "1 star".into()
    } else {
        format!("{s} stars")
    }
}

fn question(data: &ExplicitRatings, history: &[RatingRow], movie: u32) -> String {
    let mut s = String::from("A user rated these movies from 1 to 5 stars, oldest first:\n");
    for r in history {
        s.push_str(&format!(
            "- {}: {}\n",
            describe(data, r.movie),
            stars_word(r.stars)
        ));
    }
    s.push_str(&format!(
        "How many stars will this user give {}? Answer with one digit from 1 to 5.",
        describe(data, movie)
    ));
    s
}

/// The system message of every rating prompt.
pub const SYSTEM: &str = "You predict how many stars (1 to 5) a user gives a movie, \
from the movies the user rated before. Answer with one digit.";

/// The chat of a prompt: the system message, each worked example as a user turn
/// answered by its stars, then the question.
pub fn messages(data: &ExplicitRatings, parts: &PromptParts) -> Vec<Message> {
    let mut m = vec![Message::system(SYSTEM)];
    for shot in &parts.shots {
        m.push(Message::user(question(
            data,
            &shot.history,
            shot.target.movie,
        )));
        m.push(Message::assistant(format!(
            "{}",
            shot.target.stars.round() as u8
        )));
    }
    m.push(Message::user(question(
        data,
        &parts.history,
        parts.question.movie,
    )));
    m
}

/// What the LLM calls of one run cost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CallStats {
    /// Calls made or answered from the cache.
    pub calls: usize,
    /// Of `calls`, answered from the cache.
    pub cached: usize,
    /// Prompt tokens over all calls.
    pub prompt_tokens: usize,
    /// Generated tokens over all calls.
    pub completion_tokens: usize,
    /// Wall time in seconds (cache hits included).
    pub seconds: f64,
}

/// Both readouts' predictions for a list of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmPredictions {
    /// Parsed answers (the fallback where none parsed).
    pub parsed: Vec<f32>,
    /// Answers without a digit 1–5.
    pub parse_failures: usize,
    /// Expected ratings.
    pub expected: Vec<f32>,
    /// Cost of the generations (parsed readout).
    pub generate: CallStats,
    /// Cost of the log-probability calls (expected readout).
    pub score: CallStats,
}

/// Asks the LLM for every row of `rows` (after the worked examples `shots`; none
/// is zero-shot) with both readouts. Rows go `cfg.group` at a time: their answers
/// are decoded together, then their answer log-probabilities are read (with the
/// local backend's prefix reuse on, from the prompts' caches). Calls go through
/// `ctx`'s cache, so a rerun after a crash recomputes only what was not stored.
/// `fallback` is the prediction of an answer that does not parse;
/// `progress(done, total)` follows the calls.
#[allow(clippy::too_many_arguments)]
pub fn predict(
    ctx: &LlmContext<'_>,
    data: &ExplicitRatings,
    h: &TrainHistories,
    rows: &[RatingRow],
    cfg: &LlmRatingConfig,
    shots: &[Shot],
    fallback: f32,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<LlmPredictions> {
    cfg.validate()?;
    let prompts: Vec<Vec<Message>> = rows
        .iter()
        .map(|r| messages(data, &prompt_parts(h, r, cfg.history, shots)))
        .collect();
    let total = 2 * rows.len();
    let answers: Vec<String> = STARS.iter().map(|s| s.to_string()).collect();
    let mut out = LlmPredictions::default();
    let mut done = 0;
    for chunk in prompts.chunks(cfg.group) {
        let t0 = Instant::now();
        let jobs: Vec<BatchJob> = chunk
            .iter()
            .map(|m| BatchJob {
                id: String::new(),
                messages: m.clone(),
                params: SamplingParams::greedy(cfg.max_tokens),
            })
            .collect();
        let results = run_batch_grouped(ctx.llm, ctx.cache, &jobs, 1, cfg.group, &|p| {
            progress(done + p.done, total)
        })?;
        done += chunk.len();
        for r in results {
            let g = r.result?;
            out.generate.calls += 1;
            out.generate.cached += r.cached as usize;
            out.generate.prompt_tokens += g.prompt_tokens;
            out.generate.completion_tokens += g.completion_tokens;
            match parse_stars(&g.text) {
                Some(s) => out.parsed.push(s as f32),
                None => {
                    out.parse_failures += 1;
                    out.parsed.push(fallback);
                }
            }
        }
        out.generate.seconds += t0.elapsed().as_secs_f64();

        let t0 = Instant::now();
        for m in chunk {
            let (lps, g, cached): (Vec<f64>, _, _) =
                ctx.cached_call("rating-expected", m, serde_json::json!(answers), || {
                    Ok(ctx
                        .llm
                        .score_continuations(m, &answers)?
                        .into_iter()
                        .map(|l| l.total)
                        .collect())
                })?;
            out.score.calls += 1;
            out.score.cached += cached as usize;
            out.score.prompt_tokens += g.prompt_tokens;
            out.expected.push(expected_rating(&lps)?);
            done += 1;
            progress(done, total);
        }
        out.score.seconds += t0.elapsed().as_secs_f64();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_rating_is_the_probability_weighted_mean() {
        // p = (0.1, 0.2, 0.3, 0.25, 0.15): 0.1 + 0.4 + 0.9 + 1.0 + 0.75 = 3.15.
        let p = [0.1f64, 0.2, 0.3, 0.25, 0.15];
        let lp: Vec<f64> = p.iter().map(|x| x.ln()).collect();
        assert!((expected_rating(&lp).unwrap() - 3.15).abs() < 1e-6);
        // Renormalised over the five: halving every probability changes nothing.
        let half: Vec<f64> = p.iter().map(|x| (x / 2.0).ln()).collect();
        assert!((expected_rating(&half).unwrap() - 3.15).abs() < 1e-6);
        // An impossible answer weighs nothing; a certain one is the answer.
        let lp = [f64::NEG_INFINITY, 0.0, f64::NEG_INFINITY, -50.0, -60.0];
        assert!((expected_rating(&lp).unwrap() - 2.0).abs() < 1e-6);
        assert!(expected_rating(&[0.0; 4]).is_err());
        assert!(expected_rating(&[f64::NEG_INFINITY; 5]).is_err());
    }

    #[test]
    fn parse_takes_the_first_star_digit() {
        assert_eq!(parse_stars("4"), Some(4));
        assert_eq!(parse_stars(" I'd say 3 stars."), Some(3));
        assert_eq!(parse_stars("0 or 9, then 5"), Some(5));
        assert_eq!(parse_stars("four"), None);
    }

    #[test]
    fn sample_is_seeded_and_in_order() {
        let rows: Vec<RatingRow> = (0..100)
            .map(|i| RatingRow {
                user: i,
                movie: i,
                stars: 3.0,
                position: 0,
            })
            .collect();
        let a = sample_rows(&rows, 10, 7);
        assert_eq!(a, sample_rows(&rows, 10, 7));
        assert_ne!(a, sample_rows(&rows, 10, 8));
        assert_eq!(a.len(), 10);
        assert!(a.windows(2).all(|w| w[0].user < w[1].user));
        assert_eq!(sample_rows(&rows, 500, 7).len(), 100);
    }
}
