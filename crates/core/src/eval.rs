//! Evaluators: full ranking over all items (the default) and the sampled
//! protocol (opt-in, labelled, for comparison with older papers only).

use std::collections::{BTreeMap, HashSet};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::metrics::{RankingMetrics, Ties, standing_metrics};
use crate::recommender::{Query, Recommender};
use crate::topk::{self, MASKED, Standing};
use crate::{Error, ItemId, Result, Rng, UserId};

/// One user to evaluate: the history the model sees and the held-out targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalCase {
    /// Dense user id.
    pub user: UserId,
    /// What the model sees, oldest first.
    pub history: Vec<ItemId>,
    /// Held-out items the model should rank high.
    pub targets: Vec<ItemId>,
}

/// How negatives are drawn in the sampled protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Uniformly over items the user has not interacted with.
    Uniform,
    /// Proportionally to training popularity.
    Popularity,
}

/// The ranking protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", deny_unknown_fields)]
pub enum Protocol {
    /// Rank each target against every item (the default).
    Full,
    /// Rank each target against `negatives` sampled items (older papers only).
    Sampled {
        /// Number of negatives per user (100 in the literature).
        negatives: usize,
        /// How they are drawn.
        sampling: Sampling,
    },
}

impl Protocol {
    /// Human-readable label that goes into every result.
    pub fn label(&self, n_items: usize, exclude_history: bool, ties: Ties) -> String {
        let hist = if exclude_history {
            "history items excluded"
        } else {
            "history items kept"
        };
        let hist = format!("{hist}; {}", ties.label());
        match self {
            Protocol::Full => format!("full ranking over all {n_items} items ({hist})"),
            Protocol::Sampled {
                negatives,
                sampling,
            } => format!(
                "SAMPLED: each target vs {negatives} {} negatives ({hist}); for comparison with older papers only, not comparable with full ranking",
                match sampling {
                    Sampling::Uniform => "uniform",
                    Sampling::Popularity => "popularity-weighted",
                }
            ),
        }
    }
}

/// Evaluator settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Cutoffs for every @K metric.
    pub ks: Vec<usize>,
    /// Ranking protocol.
    pub protocol: Protocol,
    /// Leave items the user already has out of the ranking.
    pub exclude_history: bool,
    /// What a tie in score between a target and other items is worth
    /// (default: every tied item ranks ahead of the target).
    pub ties: Ties,
    /// Users scored per model call.
    pub batch_size: usize,
    /// Seed for the sampled protocol.
    pub seed: u64,
    /// Keep per-user standings (items ahead of and tied with each target) and top
    /// lists in the report.
    pub per_user: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            ks: vec![5, 10, 20],
            protocol: Protocol::Full,
            exclude_history: true,
            ties: Ties::Pessimistic,
            batch_size: 256,
            seed: 42,
            per_user: false,
        }
    }
}

impl EvalConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.ks.is_empty() || self.ks.contains(&0) {
            return Err(Error::config(
                "eval.ks",
                "expected a non-empty list of positive cutoffs",
            ));
        }
        crate::check::positive("eval.batch_size", self.batch_size)?;
        if let Protocol::Sampled { negatives, .. } = self.protocol {
            crate::check::positive("eval.protocol.negatives", negatives)?;
        }
        Ok(())
    }

    fn max_k(&self) -> usize {
        self.ks.iter().copied().max().unwrap_or(10)
    }
}

/// Result of one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserResult {
    /// Dense user id.
    pub user: UserId,
    /// The targets.
    pub targets: Vec<ItemId>,
    /// Where each target stands: items scored strictly higher and items tied
    /// with it (`None`: the target was masked as a history item).
    pub standings: Vec<Option<Standing>>,
    /// The model's top list (length max K), best first, ties by item id.
    pub top: Vec<ItemId>,
}

impl UserResult {
    /// This user's metrics at cutoff `k`, valuing ties as `ties` says.
    pub fn metrics(&self, k: usize, ties: Ties) -> RankingMetrics {
        standing_metrics(&self.standings, k, ties)
    }
}

/// Aggregated result of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Protocol label: says exactly how items were ranked.
    pub protocol: String,
    /// Number of users evaluated.
    pub users: usize,
    /// Targets that were also in the history and so could not be ranked.
    pub masked_targets: usize,
    /// Metric name (`NDCG@10`) to mean value over users.
    pub metrics: BTreeMap<String, f64>,
    /// Per-user results, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_user: Option<Vec<UserResult>>,
}

impl EvalReport {
    /// A metric by name, e.g. `"NDCG@10"`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.metrics.get(name).copied()
    }
}

/// Alias sampler over a discrete distribution (Vose), for popularity negatives.
#[derive(Debug, Clone)]
struct Alias {
    prob: Vec<f64>,
    alias: Vec<u32>,
}

impl Alias {
    fn new(weights: &[f64]) -> Result<Self> {
        let n = weights.len();
        let total: f64 = weights.iter().sum();
        if n == 0
            || total.is_nan()
            || total <= 0.0
            || weights.iter().any(|w| !w.is_finite() || *w < 0.0)
        {
            return Err(Error::Invalid(
                "popularity sampling needs non-negative, finite, not all-zero weights".into(),
            ));
        }
        let mut prob: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut alias = vec![0u32; n];
        let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| prob[i] < 1.0);
        while let (Some(s), Some(&l)) = (small.pop(), large.last()) {
            alias[s] = l as u32;
            prob[l] -= 1.0 - prob[s];
            if prob[l] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        for i in small.into_iter().chain(large) {
            prob[i] = 1.0;
        }
        Ok(Alias { prob, alias })
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let i = rng.index(self.prob.len());
        if rng.next_f64() < self.prob[i] {
            i
        } else {
            self.alias[i] as usize
        }
    }
}

/// A seeded sample of at most `n` cases (all when `n` is 0 or covers them), in user
/// order.
pub fn sample_cases(mut cases: Vec<EvalCase>, n: usize, seed: u64) -> Vec<EvalCase> {
    if n > 0 && cases.len() > n {
        let mut rng = Rng::stream(seed, 0xCA5E);
        rng.shuffle(&mut cases);
        cases.truncate(n);
        cases.sort_by_key(|c| c.user);
    }
    cases
}

/// Evaluates `model` on `cases`.
///
/// `popularity` (training counts per item) is needed only for popularity-weighted
/// sampling. `progress` is called with the number of users finished in each batch.
/// The result does not depend on the number of threads.
pub fn evaluate(
    model: &dyn Recommender,
    cases: &[EvalCase],
    cfg: &EvalConfig,
    popularity: Option<&[f64]>,
    progress: &(dyn Fn(usize) + Sync),
) -> Result<EvalReport> {
    cfg.validate()?;
    let n_items = model.n_items();
    if n_items == 0 {
        return Err(Error::Invalid("model scores no items".into()));
    }
    for c in cases {
        if let Some(&i) = c
            .targets
            .iter()
            .chain(&c.history)
            .find(|&&i| i as usize >= n_items)
        {
            return Err(Error::Invalid(format!(
                "user {}: item {i} out of range for a model of {n_items} items",
                c.user
            )));
        }
    }
    let alias = match (cfg.protocol, popularity) {
        (
            Protocol::Sampled {
                sampling: Sampling::Popularity,
                ..
            },
            Some(p),
        ) => Some(Alias::new(p)?),
        (
            Protocol::Sampled {
                sampling: Sampling::Popularity,
                ..
            },
            None,
        ) => {
            return Err(Error::Invalid(
                "popularity-weighted sampling needs item popularity".into(),
            ));
        }
        _ => None,
    };
    let max_k = cfg.max_k();
    let evaluated: Vec<&EvalCase> = cases.iter().filter(|c| !c.targets.is_empty()).collect();

    let results: Vec<UserResult> = evaluated
        .par_chunks(cfg.batch_size)
        .map(|batch| -> Result<Vec<UserResult>> {
            let queries: Vec<Query<'_>> = batch
                .iter()
                .map(|c| Query::new(c.user, &c.history))
                .collect();
            let mut scores = vec![0f32; batch.len() * n_items];
            model.score_batch(&queries, &mut scores)?;
            let mut buf = Vec::with_capacity(n_items);
            let out = batch
                .iter()
                .zip(scores.chunks_mut(n_items))
                .map(|(case, row)| rank_case(case, row, cfg, alias.as_ref(), max_k, &mut buf))
                .collect();
            progress(batch.len());
            Ok(out)
        })
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();

    Ok(aggregate(results, cfg, n_items))
}

fn rank_case(
    case: &EvalCase,
    row: &mut [f32],
    cfg: &EvalConfig,
    alias: Option<&Alias>,
    max_k: usize,
    buf: &mut Vec<(f32, ItemId)>,
) -> UserResult {
    if cfg.exclude_history {
        topk::mask(row, &case.history);
    }
    match cfg.protocol {
        Protocol::Full => {
            let standings = case
                .targets
                .iter()
                .map(|&t| topk::standing_of(row, t))
                .collect();
            topk::top_k_into(row, max_k, buf);
            UserResult {
                user: case.user,
                targets: case.targets.clone(),
                standings,
                top: buf.iter().map(|&(_, i)| i).collect(),
            }
        }
        Protocol::Sampled { negatives, .. } => {
            // Candidates: the targets plus `negatives` distinct items the user never had.
            let mut rng = Rng::stream(cfg.seed, case.user as u64);
            let exclude: HashSet<ItemId> =
                case.history.iter().chain(&case.targets).copied().collect();
            let available = row.len().saturating_sub(exclude.len());
            let want = negatives.min(available);
            let mut negs: Vec<ItemId> = Vec::with_capacity(want);
            let mut seen = HashSet::with_capacity(want);
            let mut tries = 0usize;
            while negs.len() < want {
                let i = match alias {
                    Some(a) if tries < 100 * want + 1000 => a.sample(&mut rng),
                    _ => rng.index(row.len()),
                } as ItemId;
                tries += 1;
                if !exclude.contains(&i) && seen.insert(i) {
                    negs.push(i);
                }
            }
            let mut sub = vec![MASKED; row.len()];
            for &i in case.targets.iter().chain(&negs) {
                sub[i as usize] = row[i as usize];
            }
            if cfg.exclude_history {
                topk::mask(&mut sub, &case.history);
            }
            let standings = case
                .targets
                .iter()
                .map(|&t| topk::standing_of(&sub, t))
                .collect();
            topk::top_k_into(&sub, max_k, buf);
            UserResult {
                user: case.user,
                targets: case.targets.clone(),
                standings,
                top: buf.iter().map(|&(_, i)| i).collect(),
            }
        }
    }
}

fn aggregate(results: Vec<UserResult>, cfg: &EvalConfig, n_items: usize) -> EvalReport {
    let n = results.len();
    let mut metrics = BTreeMap::new();
    let masked_targets = results
        .iter()
        .map(|r| r.standings.iter().filter(|x| x.is_none()).count())
        .sum();
    for &k in &cfg.ks {
        let mut sum = RankingMetrics::default();
        for r in &results {
            let m = r.metrics(k, cfg.ties);
            sum.hr += m.hr;
            sum.recall += m.recall;
            sum.precision += m.precision;
            sum.ndcg += m.ndcg;
            sum.mrr += m.mrr;
            sum.map += m.map;
        }
        let d = n.max(1) as f64;
        metrics.insert(format!("HR@{k}"), sum.hr / d);
        metrics.insert(format!("Recall@{k}"), sum.recall / d);
        metrics.insert(format!("Precision@{k}"), sum.precision / d);
        metrics.insert(format!("NDCG@{k}"), sum.ndcg / d);
        metrics.insert(format!("MRR@{k}"), sum.mrr / d);
        metrics.insert(format!("MAP@{k}"), sum.map / d);
        if cfg.protocol == Protocol::Full {
            let mut seen = vec![false; n_items];
            for r in &results {
                for &i in r.top.iter().take(k) {
                    seen[i as usize] = true;
                }
            }
            let covered = seen.iter().filter(|&&b| b).count();
            metrics.insert(format!("Coverage@{k}"), covered as f64 / n_items as f64);
        }
    }
    EvalReport {
        protocol: cfg.protocol.label(n_items, cfg.exclude_history, cfg.ties),
        users: n,
        masked_targets,
        metrics,
        per_user: cfg.per_user.then_some(results),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scores item i as `weights[i]`, whatever the history.
    struct Fixed(Vec<f32>);
    impl Recommender for Fixed {
        fn name(&self) -> String {
            "fixed".into()
        }
        fn n_items(&self) -> usize {
            self.0.len()
        }
        fn score_into(&self, _q: &Query<'_>, out: &mut [f32]) -> Result<()> {
            out.copy_from_slice(&self.0);
            Ok(())
        }
    }

    fn no_progress(_: usize) {}

    #[test]
    fn full_ranking_by_hand() {
        // Scores favour high ids: ranking is 5, 4, 3, 2, 1, 0.
        let m = Fixed(vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        let cases = vec![
            // history {5} excluded -> ranking 4,3,2,...; target 3 at rank 2
            EvalCase {
                user: 0,
                history: vec![5],
                targets: vec![3],
            },
            // target 0 at rank 6
            EvalCase {
                user: 1,
                history: vec![],
                targets: vec![0],
            },
        ];
        let cfg = EvalConfig {
            ks: vec![1, 2, 10],
            ..Default::default()
        };
        let r = evaluate(&m, &cases, &cfg, None, &no_progress).unwrap();
        assert_eq!(r.users, 2);
        assert!((r.get("HR@1").unwrap() - 0.0).abs() < 1e-12);
        assert!((r.get("HR@2").unwrap() - 0.5).abs() < 1e-12);
        assert!((r.get("HR@10").unwrap() - 1.0).abs() < 1e-12);
        let ndcg10 = (1.0 / 3f64.log2() + 1.0 / 7f64.log2()) / 2.0;
        assert!((r.get("NDCG@10").unwrap() - ndcg10).abs() < 1e-12);
        assert!((r.get("MRR@10").unwrap() - (0.5 + 1.0 / 6.0) / 2.0).abs() < 1e-12);
        // Top-1 lists: user0 -> 4, user1 -> 5: 2 of 6 items covered.
        assert!((r.get("Coverage@1").unwrap() - 2.0 / 6.0).abs() < 1e-12);
        assert!(r.protocol.starts_with("full ranking over all 6 items"));

        // Keeping history: user0's target drops to rank 3.
        let keep = EvalConfig {
            exclude_history: false,
            per_user: true,
            ..cfg
        };
        let r = evaluate(&m, &cases, &keep, None, &no_progress).unwrap();
        let pu = r.per_user.unwrap();
        assert_eq!(pu[0].standings, vec![Some(Standing { ahead: 2, tied: 0 })]);
        assert_eq!(pu[0].top[..3], [5, 4, 3]);
    }

    #[test]
    fn constant_scores_earn_nothing_pessimistic_and_chance_expected() {
        // Every item scores the same. Under the old rule (ties by id) the
        // low-id targets would win; now: HR@K = 0 (pessimistic) and exactly
        // K / (items - history) in expectation.
        let n = 100;
        let m = Fixed(vec![0.5; n]);
        let cases: Vec<EvalCase> = (0..20)
            .map(|u| EvalCase {
                user: u,
                history: (0..(u as ItemId % 5)).map(|i| 50 + i).collect(),
                targets: vec![u as ItemId],
            })
            .collect();
        let cfg = EvalConfig {
            ks: vec![1, 10],
            ..Default::default()
        };
        let r = evaluate(&m, &cases, &cfg, None, &no_progress).unwrap();
        assert_eq!(r.get("HR@10"), Some(0.0));
        assert_eq!(r.get("NDCG@10"), Some(0.0));
        assert!(
            r.protocol.contains("ties count against the target"),
            "{}",
            r.protocol
        );
        let e = evaluate(
            &m,
            &cases,
            &EvalConfig {
                ties: Ties::Expected,
                ..cfg
            },
            None,
            &no_progress,
        )
        .unwrap();
        for k in [1usize, 10] {
            let want: f64 = cases
                .iter()
                .map(|c| k as f64 / (n - c.history.len()) as f64)
                .sum::<f64>()
                / cases.len() as f64;
            let got = e.get(&format!("HR@{k}")).unwrap();
            assert!((got - want).abs() < 1e-12, "HR@{k}: {got} vs {want}");
        }
        assert!(e.protocol.contains("expected rank"), "{}", e.protocol);
    }

    #[test]
    fn a_tie_with_a_lower_id_no_longer_wins() {
        // Target 1 ties with item 3 and beats the rest: rank 2 pessimistic,
        // 1.5 on average; before, the lower id put it first.
        let m = Fixed(vec![0.0, 1.0, 0.5, 1.0]);
        let cases = vec![EvalCase {
            user: 0,
            history: vec![],
            targets: vec![1],
        }];
        let cfg = EvalConfig {
            ks: vec![1, 2],
            per_user: true,
            ..Default::default()
        };
        let r = evaluate(&m, &cases, &cfg, None, &no_progress).unwrap();
        assert_eq!(r.get("HR@1"), Some(0.0));
        assert_eq!(r.get("HR@2"), Some(1.0));
        // The printed list still breaks the tie by id.
        assert_eq!(r.per_user.unwrap()[0].top[..2], [1, 3]);
        let e = evaluate(
            &m,
            &cases,
            &EvalConfig {
                ties: Ties::Expected,
                ..cfg
            },
            None,
            &no_progress,
        )
        .unwrap();
        assert_eq!(e.get("HR@1"), Some(0.5));
        assert_eq!(e.get("MRR@2"), Some(0.75));
    }

    #[test]
    fn target_in_history_counts_as_miss() {
        let m = Fixed(vec![1.0, 0.0]);
        let cases = vec![EvalCase {
            user: 0,
            history: vec![0],
            targets: vec![0],
        }];
        let r = evaluate(&m, &cases, &EvalConfig::default(), None, &no_progress).unwrap();
        assert_eq!(r.masked_targets, 1);
        assert_eq!(r.get("HR@20"), Some(0.0));
    }

    #[test]
    fn sampled_is_labelled_and_deterministic() {
        let n = 1000;
        let m = Fixed((0..n).map(|i| i as f32).collect());
        let cases: Vec<EvalCase> = (0..50)
            .map(|u| EvalCase {
                user: u,
                history: vec![],
                targets: vec![900 + u],
            })
            .collect();
        let cfg = EvalConfig {
            protocol: Protocol::Sampled {
                negatives: 100,
                sampling: Sampling::Uniform,
            },
            ks: vec![10],
            ..Default::default()
        };
        let a = evaluate(&m, &cases, &cfg, None, &no_progress).unwrap();
        let b = evaluate(
            &m,
            &cases,
            &EvalConfig {
                batch_size: 7,
                ..cfg.clone()
            },
            None,
            &no_progress,
        )
        .unwrap();
        assert_eq!(a, b);
        assert!(a.protocol.starts_with("SAMPLED"));
        assert!(!a.metrics.contains_key("Coverage@10"));
        // Targets at 900+ beat ~90% of uniform negatives: HR@10 should be high but < 1.
        let hr = a.get("HR@10").unwrap();
        assert!(hr > 0.5 && hr <= 1.0, "{hr}");
        let pop: Vec<f64> = (0..n).map(|i| if i < 10 { 1.0 } else { 0.0 }).collect();
        let cfg_pop = EvalConfig {
            protocol: Protocol::Sampled {
                negatives: 5,
                sampling: Sampling::Popularity,
            },
            ..cfg
        };
        let p = evaluate(&m, &cases, &cfg_pop, Some(&pop), &no_progress).unwrap();
        // Popular negatives (ids < 10) score low: every target is first.
        assert_eq!(p.get("HR@1"), None);
        assert_eq!(p.get("HR@10"), Some(1.0));
    }

    #[test]
    fn bad_config_is_rejected() {
        let m = Fixed(vec![1.0]);
        let cfg = EvalConfig {
            ks: vec![0],
            ..Default::default()
        };
        assert!(matches!(
            evaluate(&m, &[], &cfg, None, &no_progress),
            Err(Error::Config { .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn metric_invariants(scores in proptest::collection::vec(-5.0f32..5.0, 20..60), t in 0usize..20) {
            let n = scores.len();
            let m = Fixed(scores);
            let cases = vec![EvalCase { user: 0, history: vec![], targets: vec![(t % n) as u32] }];
            let cfg = EvalConfig { ks: vec![1, 5, 10, 20], ..Default::default() };
            let r = evaluate(&m, &cases, &cfg, None, &no_progress).unwrap();
            let mut prev = 0.0;
            for k in [1, 5, 10, 20] {
                let hr = r.get(&format!("HR@{k}")).unwrap();
                let nd = r.get(&format!("NDCG@{k}")).unwrap();
                let mrr = r.get(&format!("MRR@{k}")).unwrap();
                proptest::prop_assert!(hr >= prev);
                proptest::prop_assert!((0.0..=1.0).contains(&nd) && nd <= hr);
                proptest::prop_assert!(mrr <= nd + 1e-12);
                prev = hr;
            }
        }
    }
}
