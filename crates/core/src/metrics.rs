//! Ranking metrics (per user, from target positions) and pointwise metrics.

use serde::{Deserialize, Serialize};

use crate::topk::Standing;
use crate::{Error, Result};

/// Ranking metrics of one user at one cutoff `k`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RankingMetrics {
    /// 1 if any target is in the top k.
    pub hr: f64,
    /// Fraction of the targets in the top k.
    pub recall: f64,
    /// Hits divided by k.
    pub precision: f64,
    /// DCG of the hits over the ideal DCG.
    pub ndcg: f64,
    /// Reciprocal rank of the first hit (0 if none in the top k).
    pub mrr: f64,
    /// Average precision at k, normalised by `min(#targets, k)`.
    pub map: f64,
}

/// Computes the metrics at cutoff `k` from the 1-based ranks of a user's
/// targets (`None` for a target that cannot be ranked, e.g. it is masked).
///
/// `n_targets` must equal `ranks.len()` and be positive.
pub fn ranking_metrics(ranks: &[Option<usize>], k: usize) -> RankingMetrics {
    let n_targets = ranks.len();
    if n_targets == 0 || k == 0 {
        return RankingMetrics::default();
    }
    let mut hits: Vec<usize> = ranks
        .iter()
        .flatten()
        .copied()
        .filter(|&r| r <= k)
        .collect();
    hits.sort_unstable();
    let n_hits = hits.len();
    let dcg: f64 = hits.iter().map(|&r| 1.0 / ((r + 1) as f64).log2()).sum();
    let idcg: f64 = (1..=n_targets.min(k))
        .map(|r| 1.0 / ((r + 1) as f64).log2())
        .sum();
    let ap: f64 = hits
        .iter()
        .enumerate()
        .map(|(j, &r)| (j + 1) as f64 / r as f64)
        .sum::<f64>()
        / n_targets.min(k) as f64;
    RankingMetrics {
        hr: if n_hits > 0 { 1.0 } else { 0.0 },
        recall: n_hits as f64 / n_targets as f64,
        precision: n_hits as f64 / k as f64,
        ndcg: dcg / idcg,
        mrr: hits.first().map_or(0.0, |&r| 1.0 / r as f64),
        map: ap,
    }
}

/// What a tie in score between a target and other items is worth.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ties {
    /// Every item tied with a target ranks ahead of it (the default): a model
    /// cannot gain from ties, e.g. by giving every item the same score.
    #[default]
    Pessimistic,
    /// The exact expectation over a uniformly random order of each block of
    /// tied items (no sampling).
    Expected,
}

impl Ties {
    /// Words for result labels.
    pub fn label(&self) -> &'static str {
        match self {
            Ties::Pessimistic => "ties count against the target",
            Ties::Expected => "ties: expected rank over a random order of each tied block",
        }
    }
}

/// One block of tied items holding at least one target.
#[derive(Debug, Clone, Copy)]
struct Block {
    /// Items ranked strictly ahead of the block.
    ahead: usize,
    /// Items in the block, targets included.
    size: usize,
    /// Targets in the block.
    targets: usize,
}

/// Groups target standings into blocks of tied items, best first. Targets in
/// one block share their score, hence their standing.
fn blocks(standings: &[Option<Standing>]) -> Vec<Block> {
    let mut out: Vec<Block> = Vec::new();
    for s in standings.iter().flatten() {
        match out.iter_mut().find(|b| b.ahead == s.ahead) {
            Some(b) => b.targets += 1,
            None => out.push(Block {
                ahead: s.ahead,
                size: s.tied + 1,
                targets: 1,
            }),
        }
    }
    out.sort_unstable_by_key(|b| b.ahead);
    out
}

/// Probability that none of a block's `m` targets lands in its first `c` of
/// `s` positions under a uniformly random order: `C(s-m, c) / C(s, c)`.
fn p_none_in_first(s: usize, m: usize, c: usize) -> f64 {
    let mut p = 1.0;
    for i in 0..c {
        if s < m + i + 1 {
            return 0.0;
        }
        p *= (s - m - i) as f64 / (s - i) as f64;
    }
    p
}

/// Computes the metrics at cutoff `k` from where each target stands
/// (`None`: the target cannot be ranked, e.g. it is masked), valuing ties as
/// `ties` says. Without ties both rules give [`ranking_metrics`] of the ranks.
pub fn standing_metrics(standings: &[Option<Standing>], k: usize, ties: Ties) -> RankingMetrics {
    let n_targets = standings.len();
    if n_targets == 0 || k == 0 {
        return RankingMetrics::default();
    }
    let blocks = blocks(standings);
    match ties {
        Ties::Pessimistic => {
            // The block's targets take its last positions.
            let ranks: Vec<Option<usize>> = blocks
                .iter()
                .flat_map(|b| (1..=b.targets).map(move |j| Some(b.ahead + b.size - b.targets + j)))
                .chain(standings.iter().filter(|s| s.is_none()).map(|_| None))
                .collect();
            ranking_metrics(&ranks, k)
        }
        Ties::Expected => expected_metrics(&blocks, n_targets, k),
    }
}

/// Exact expectations over a random order inside each tied block: every
/// position of a block holds a target with probability `targets / size`.
fn expected_metrics(blocks: &[Block], n_targets: usize, k: usize) -> RankingMetrics {
    let gain = |rank: usize| 1.0 / ((rank + 1) as f64).log2();
    let idcg: f64 = (1..=n_targets.min(k)).map(gain).sum();
    let (mut hits, mut dcg, mut ap) = (0.0f64, 0.0f64, 0.0f64);
    let mut p_no_hit = 1.0f64;
    let mut targets_before = 0usize;
    for b in blocks {
        let c = k.saturating_sub(b.ahead).min(b.size);
        let p = b.targets as f64 / b.size as f64;
        hits += p * c as f64;
        p_no_hit *= p_none_in_first(b.size, b.targets, c);
        for j in 1..=c {
            let rank = b.ahead + j;
            dcg += p * gain(rank);
            // Expected hits at or above this position, given a target here.
            let others = if b.size > 1 {
                (j - 1) as f64 * (b.targets - 1) as f64 / (b.size - 1) as f64
            } else {
                0.0
            };
            ap += p * (targets_before as f64 + 1.0 + others) / rank as f64;
        }
        targets_before += b.targets;
    }
    // The first hit lies in the best block that holds a target.
    let mrr = blocks.first().map_or(0.0, |b| {
        let c = k.saturating_sub(b.ahead).min(b.size);
        (1..=c)
            .map(|j| {
                let p_first = p_none_in_first(b.size, b.targets, j - 1)
                    - p_none_in_first(b.size, b.targets, j);
                p_first / (b.ahead + j) as f64
            })
            .sum()
    });
    RankingMetrics {
        hr: 1.0 - p_no_hit,
        recall: hits / n_targets as f64,
        precision: hits / k as f64,
        ndcg: dcg / idcg,
        mrr,
        map: ap / n_targets.min(k) as f64,
    }
}

fn check_lengths(a: usize, b: usize, what: &str) -> Result<()> {
    if a != b {
        return Err(Error::Invalid(format!(
            "{what}: {a} labels but {b} predictions"
        )));
    }
    if a == 0 {
        return Err(Error::Invalid(format!("{what}: no examples")));
    }
    Ok(())
}

/// Area under the ROC curve, with tied scores counted as half (Mann-Whitney U).
///
/// Labels are 0/1 (anything > 0.5 is positive). It is an error when one class is absent.
pub fn auc(labels: &[f32], scores: &[f32]) -> Result<f64> {
    check_lengths(labels.len(), scores.len(), "auc")?;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Average ranks over ties.
    let mut rank_sum_pos = 0.0f64;
    let mut n_pos = 0usize;
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &t in &idx[i..=j] {
            if labels[t] > 0.5 {
                rank_sum_pos += avg_rank;
                n_pos += 1;
            }
        }
        i = j + 1;
    }
    let n_neg = labels.len() - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return Err(Error::Invalid(
            "auc: needs both positive and negative labels".into(),
        ));
    }
    let u = rank_sum_pos - (n_pos * (n_pos + 1)) as f64 / 2.0;
    Ok(u / (n_pos as f64 * n_neg as f64))
}

/// Group AUC: the AUC of each group (a user's samples), averaged with weights equal
/// to the group's sample count, over the groups that hold both classes (KAR's and
/// DIN's GAUC). Returns the mean and how many groups it counted; an error when no
/// group holds both classes.
pub fn gauc(groups: &[u32], labels: &[f32], scores: &[f32]) -> Result<(f64, usize)> {
    check_lengths(labels.len(), scores.len(), "gauc")?;
    check_lengths(groups.len(), labels.len(), "gauc groups")?;
    let mut by_group: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, &g) in groups.iter().enumerate() {
        by_group.entry(g).or_default().push(i);
    }
    let (mut sum, mut weight, mut counted) = (0.0f64, 0.0f64, 0usize);
    for rows in by_group.values() {
        let l: Vec<f32> = rows.iter().map(|&i| labels[i]).collect();
        let pos = l.iter().filter(|&&y| y > 0.5).count();
        if pos == 0 || pos == l.len() {
            continue;
        }
        let s: Vec<f32> = rows.iter().map(|&i| scores[i]).collect();
        sum += auc(&l, &s)? * rows.len() as f64;
        weight += rows.len() as f64;
        counted += 1;
    }
    if counted == 0 {
        return Err(Error::Invalid(
            "gauc: no group holds both positive and negative labels".into(),
        ));
    }
    Ok((sum / weight, counted))
}

/// Mean binary cross-entropy of probabilities, clipped to `[1e-7, 1 - 1e-7]`.
pub fn log_loss(labels: &[f32], probs: &[f32]) -> Result<f64> {
    check_lengths(labels.len(), probs.len(), "logloss")?;
    let eps = 1e-7f64;
    let s: f64 = labels
        .iter()
        .zip(probs)
        .map(|(&y, &p)| {
            let p = (p as f64).clamp(eps, 1.0 - eps);
            let y = y as f64;
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        })
        .sum();
    Ok(s / labels.len() as f64)
}

/// Root mean squared error.
pub fn rmse(truth: &[f32], pred: &[f32]) -> Result<f64> {
    check_lengths(truth.len(), pred.len(), "rmse")?;
    let s: f64 = truth
        .iter()
        .zip(pred)
        .map(|(&a, &b)| ((a - b) as f64).powi(2))
        .sum();
    Ok((s / truth.len() as f64).sqrt())
}

/// Mean absolute error.
pub fn mae(truth: &[f32], pred: &[f32]) -> Result<f64> {
    check_lengths(truth.len(), pred.len(), "mae")?;
    let s: f64 = truth
        .iter()
        .zip(pred)
        .map(|(&a, &b)| ((a - b) as f64).abs())
        .sum();
    Ok(s / truth.len() as f64)
}

/// Mean and sample standard deviation (`n − 1` in the denominator; 0 for one
/// value) of `xs`, as tables over seeds report them. NaN for no values.
pub fn mean_std(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn single_target_by_hand() {
        // Target at rank 3.
        let m = ranking_metrics(&[Some(3)], 5);
        assert!(close(m.hr, 1.0));
        assert!(close(m.recall, 1.0));
        assert!(close(m.ndcg, 1.0 / 4f64.log2())); // 0.5
        assert!(close(m.ndcg, 0.5));
        assert!(close(m.mrr, 1.0 / 3.0));
        assert!(close(m.precision, 0.2));
        assert!(close(m.map, 1.0 / 3.0));
        let miss = ranking_metrics(&[Some(6)], 5);
        assert_eq!(miss, RankingMetrics::default());
        let masked = ranking_metrics(&[None], 5);
        assert_eq!(masked, RankingMetrics::default());
        let first = ranking_metrics(&[Some(1)], 10);
        assert!(close(first.ndcg, 1.0) && close(first.mrr, 1.0));
    }

    #[test]
    fn multi_target_by_hand() {
        // Targets at ranks 1, 3 and 7; cutoff 5.
        let m = ranking_metrics(&[Some(3), Some(1), Some(7)], 5);
        assert!(close(m.hr, 1.0));
        assert!(close(m.recall, 2.0 / 3.0));
        assert!(close(m.precision, 2.0 / 5.0));
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!(close(m.ndcg, dcg / idcg));
        assert!(close(m.mrr, 1.0));
        // AP@5 = (1/1 + 2/3) / min(3, 5)
        assert!(close(m.map, (1.0 + 2.0 / 3.0) / 3.0));
    }

    fn st(ahead: usize, tied: usize) -> Option<Standing> {
        Some(Standing { ahead, tied })
    }

    /// Mean of `ranking_metrics` over every order of the tied blocks
    /// (brute force over all permutations of the items that tie with a target).
    fn brute_force(scores: &[i32], targets: &[usize], k: usize) -> RankingMetrics {
        fn perms(n: usize) -> Vec<Vec<usize>> {
            if n == 0 {
                return vec![vec![]];
            }
            let mut out = Vec::new();
            for p in perms(n - 1) {
                for i in 0..=p.len() {
                    let mut q = p.clone();
                    q.insert(i, n - 1);
                    out.push(q);
                }
            }
            out
        }
        let n = scores.len();
        let all = perms(n);
        let mut sum = RankingMetrics::default();
        let mut count = 0.0;
        for order in &all {
            // Keep only orders consistent with the scores (a random tie-break).
            if order.windows(2).any(|w| scores[w[0]] < scores[w[1]]) {
                continue;
            }
            let ranks: Vec<Option<usize>> = targets
                .iter()
                .map(|t| order.iter().position(|x| x == t).map(|p| p + 1))
                .collect();
            let m = ranking_metrics(&ranks, k);
            sum.hr += m.hr;
            sum.recall += m.recall;
            sum.precision += m.precision;
            sum.ndcg += m.ndcg;
            sum.mrr += m.mrr;
            sum.map += m.map;
            count += 1.0;
        }
        RankingMetrics {
            hr: sum.hr / count,
            recall: sum.recall / count,
            precision: sum.precision / count,
            ndcg: sum.ndcg / count,
            mrr: sum.mrr / count,
            map: sum.map / count,
        }
    }

    fn standings(scores: &[i32], targets: &[usize]) -> Vec<Option<Standing>> {
        let f: Vec<f32> = scores.iter().map(|&x| x as f32).collect();
        targets
            .iter()
            .map(|&t| crate::topk::standing_of(&f, t as crate::ItemId))
            .collect()
    }

    fn assert_metrics_close(a: RankingMetrics, b: RankingMetrics, what: &str) {
        for (x, y, name) in [
            (a.hr, b.hr, "hr"),
            (a.recall, b.recall, "recall"),
            (a.precision, b.precision, "precision"),
            (a.ndcg, b.ndcg, "ndcg"),
            (a.mrr, b.mrr, "mrr"),
            (a.map, b.map, "map"),
        ] {
            assert!((x - y).abs() < 1e-12, "{what} {name}: {x} vs {y}");
        }
    }

    #[test]
    fn expected_ties_match_every_order() {
        // Several tied blocks, targets alone and together in blocks.
        let cases: [(&[i32], &[usize]); 6] = [
            (&[3, 1, 1, 1, 2, 1, 0], &[2]),
            (&[1, 1, 1, 1, 1, 1, 1], &[0]),
            (&[1, 1, 1, 1, 1, 1, 1], &[0, 5]),
            (&[2, 1, 1, 2, 1, 0, 1], &[1, 4, 5]),
            (&[5, 4, 4, 4, 3, 3, 2], &[2, 4, 6]),
            (&[0, 0, 1, 1, 1, 0, 0], &[0, 3]),
        ];
        for (scores, targets) in cases {
            for k in 1..=8 {
                let got = standing_metrics(&standings(scores, targets), k, Ties::Expected);
                let want = brute_force(scores, targets, k);
                assert_metrics_close(got, want, &format!("{scores:?} {targets:?} @{k}"));
            }
        }
    }

    #[test]
    fn pessimistic_ties_put_targets_last_in_their_block() {
        // Target tied with 3 others, 1 item ahead: pessimistic rank 5.
        let m = standing_metrics(&[st(1, 3)], 4, Ties::Pessimistic);
        assert_eq!(m, RankingMetrics::default());
        let m = standing_metrics(&[st(1, 3)], 5, Ties::Pessimistic);
        assert_eq!(m, ranking_metrics(&[Some(5)], 5));
        // Two targets in one block of 4 behind 1 item: ranks 4 and 5.
        let two = standing_metrics(&[st(1, 3), st(1, 3), None], 10, Ties::Pessimistic);
        assert_eq!(two, ranking_metrics(&[Some(4), Some(5), None], 10));
        // Expected: target uniformly at ranks 2..=5; HR@3 = 2/4.
        let e = standing_metrics(&[st(1, 3)], 3, Ties::Expected);
        assert!(close(e.hr, 0.5) && close(e.recall, 0.5));
        assert!(close(e.mrr, (0.5 + 1.0 / 3.0) / 4.0));
    }

    #[test]
    fn without_ties_both_rules_are_the_plain_metrics() {
        let s = [st(0, 0), st(2, 0), st(6, 0), None];
        let ranks = [Some(1), Some(3), Some(7), None];
        for k in [1, 2, 3, 5, 10] {
            let plain = ranking_metrics(&ranks, k);
            assert_eq!(standing_metrics(&s, k, Ties::Pessimistic), plain);
            assert_metrics_close(standing_metrics(&s, k, Ties::Expected), plain, "no ties");
        }
    }

    #[test]
    fn pointwise_by_hand() {
        let y = [1.0, 0.0, 1.0, 0.0];
        let s = [0.9, 0.1, 0.4, 0.4];
        // Pairs (pos, neg): (0.9,0.1)=1, (0.9,0.4)=1, (0.4,0.1)=1, (0.4,0.4)=0.5 -> 3.5/4
        assert!(close(auc(&y, &s).unwrap(), 0.875));
        assert!(auc(&[1.0, 1.0], &[0.1, 0.2]).is_err());
        let ll = log_loss(&[1.0, 0.0], &[0.8, 0.4]).unwrap();
        assert!((ll + (0.8f64.ln() + 0.6f64.ln()) / 2.0).abs() < 1e-6);
        assert!(close(
            rmse(&[1.0, 3.0], &[2.0, 5.0]).unwrap(),
            (2.5f64).sqrt()
        ));
        assert!(close(mae(&[1.0, 3.0], &[2.0, 5.0]).unwrap(), 1.5));
        assert!(rmse(&[1.0], &[]).is_err());
    }

    #[test]
    fn gauc_by_hand() {
        // User 1: scores rank its one positive above one of two negatives: AUC 0.5.
        // User 2: perfect order, AUC 1. User 3: only positives, not counted.
        let groups = [1, 1, 1, 2, 2, 3];
        let labels = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0];
        let scores = [0.5, 0.9, 0.1, 0.2, 0.3, 0.7];
        let (g, counted) = gauc(&groups, &labels, &scores).unwrap();
        assert_eq!(counted, 2);
        assert!(close(g, (0.5 * 3.0 + 1.0 * 2.0) / 5.0));
        assert!(gauc(&[1, 1], &[1.0, 1.0], &[0.1, 0.2]).is_err());
        assert!(gauc(&[1], &[1.0, 0.0], &[0.1, 0.2]).is_err());
    }
}
