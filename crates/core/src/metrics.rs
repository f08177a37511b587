//! Ranking metrics (per user, from target positions) and pointwise metrics.

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
}
