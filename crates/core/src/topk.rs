//! Top-k selection, and where a target stands among the scores.
//!
//! Lists: higher score first; `NaN` counts as `-inf`; equal scores are broken
//! by ascending item id, so that every printed top-k list is deterministic.
//!
//! Evaluation never uses that id order: [`standing_of`] counts the items that
//! score strictly higher than a target and those that tie with it, and the
//! metrics decide what a tie is worth ([`crate::metrics::Ties`]: by default
//! every tied item ranks ahead of the target).

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

use crate::ItemId;

/// Score used for masked items (history, padding). Never ranked.
pub const MASKED: f32 = f32::NEG_INFINITY;

#[inline]
fn key(s: f32) -> f32 {
    if s.is_nan() { f32::NEG_INFINITY } else { s }
}

/// Compares `(score, item)` pairs: better first.
#[inline]
pub fn better(a: (f32, ItemId), b: (f32, ItemId)) -> Ordering {
    key(b.0)
        .partial_cmp(&key(a.0))
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// Sets the scores of `items` to [`MASKED`].
pub fn mask(scores: &mut [f32], items: &[ItemId]) {
    for &i in items {
        if let Some(s) = scores.get_mut(i as usize) {
            *s = MASKED;
        }
    }
}

/// The best `k` item ids, best first. Masked (`-inf`) items are never returned.
pub fn top_k(scores: &[f32], k: usize) -> Vec<ItemId> {
    let mut buf = Vec::new();
    top_k_into(scores, k, &mut buf);
    buf.into_iter().map(|(_, i)| i).collect()
}

/// Like [`top_k`], reusing `buf`; on return `buf` holds the top `k` as
/// `(score, item)`, best first.
///
/// One pass with a sorted buffer of `k` entries: an item costs one comparison
/// unless it beats the current k-th best, so this is O(n) for small `k`.
pub fn top_k_into(scores: &[f32], k: usize, buf: &mut Vec<(f32, ItemId)>) {
    buf.clear();
    if k == 0 {
        return;
    }
    let mut sorted = false;
    for (i, &s) in scores.iter().enumerate() {
        let s = key(s);
        if s == f32::NEG_INFINITY {
            continue;
        }
        let cand = (s, i as ItemId);
        if buf.len() < k {
            buf.push(cand);
            continue;
        }
        if !sorted {
            buf.sort_unstable_by(|a, b| better(*a, *b));
            sorted = true;
        }
        if better(cand, buf[k - 1]) == Ordering::Less {
            let pos = buf.partition_point(|&x| better(x, cand) == Ordering::Less);
            buf.pop();
            buf.insert(pos, cand);
        }
    }
    if !sorted {
        buf.sort_unstable_by(|a, b| better(*a, *b));
    }
}

/// Where a target stands among one user's unmasked scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Standing {
    /// Items that score strictly higher.
    pub ahead: usize,
    /// Other items with exactly the same score (targets included).
    pub tied: usize,
}

impl Standing {
    /// 1-based rank with every tied item ahead of the target (the pessimistic rank).
    pub fn worst_rank(&self) -> usize {
        self.ahead + self.tied + 1
    }

    /// 1-based rank with every tied item behind the target (the optimistic rank).
    pub fn best_rank(&self) -> usize {
        self.ahead + 1
    }
}

/// Where `item` stands among the unmasked scores, or `None` if it is masked
/// (or out of range). `NaN` scores count as `-inf` (masked).
pub fn standing_of(scores: &[f32], item: ItemId) -> Option<Standing> {
    let t = key(*scores.get(item as usize)?);
    if t == f32::NEG_INFINITY {
        return None;
    }
    let (mut ahead, mut tied) = (0usize, 0usize);
    for &s in scores {
        let s = key(s);
        ahead += (s > t) as usize;
        tied += (s == t) as usize;
    }
    Some(Standing {
        ahead,
        tied: tied - 1,
    })
}

/// 1-based position of `item` in the top-k order (ties by ascending id), or
/// `None` if it is masked. This is the order of printed lists, not an
/// evaluation rank: evaluation uses [`standing_of`].
pub fn rank_of(scores: &[f32], item: ItemId) -> Option<usize> {
    let t = key(*scores.get(item as usize)?);
    if t == f32::NEG_INFINITY {
        return None;
    }
    let mut ahead = 0usize;
    for (i, &s) in scores.iter().enumerate() {
        let s = key(s);
        if s > t || (s == t && (i as ItemId) < item) {
            ahead += 1;
        }
    }
    Some(ahead + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_by_id_and_nan_last() {
        let s = [0.5, f32::NAN, 0.9, 0.5, MASKED, 0.1];
        assert_eq!(top_k(&s, 10), vec![2, 0, 3, 5]);
        assert_eq!(top_k(&s, 2), vec![2, 0]);
        assert_eq!(rank_of(&s, 3), Some(3));
        assert_eq!(rank_of(&s, 4), None);
        assert_eq!(rank_of(&s, 1), None);
    }

    #[test]
    fn small_k_matches_full_sort() {
        let mut r = crate::Rng::new(11);
        for n in [1usize, 5, 50, 300] {
            let s: Vec<f32> = (0..n).map(|_| (r.index(7) as f32) - 2.0).collect();
            let mut all: Vec<ItemId> = (0..n as ItemId).collect();
            all.sort_by(|&a, &b| better((s[a as usize], a), (s[b as usize], b)));
            for k in [1usize, 3, 10, 400] {
                assert_eq!(top_k(&s, k), all[..k.min(n)].to_vec());
            }
        }
    }

    #[test]
    fn standing_counts_ahead_and_tied() {
        let s = [0.5, f32::NAN, 0.9, 0.5, MASKED, 0.1, 0.5];
        assert_eq!(standing_of(&s, 3), Some(Standing { ahead: 1, tied: 2 }));
        assert_eq!(standing_of(&s, 2), Some(Standing { ahead: 0, tied: 0 }));
        assert_eq!(standing_of(&s, 5), Some(Standing { ahead: 4, tied: 0 }));
        assert_eq!(standing_of(&s, 3).unwrap().worst_rank(), 4);
        assert_eq!(standing_of(&s, 3).unwrap().best_rank(), 2);
        assert_eq!(standing_of(&s, 1), None);
        assert_eq!(standing_of(&s, 4), None);
        assert_eq!(standing_of(&s, 9), None);
    }

    #[test]
    fn rank_agrees_with_topk() {
        let mut r = crate::Rng::new(9);
        let s: Vec<f32> = (0..500).map(|_| (r.index(20) as f32) / 7.0).collect();
        let top = top_k(&s, 500);
        for (pos, &i) in top.iter().enumerate() {
            assert_eq!(rank_of(&s, i), Some(pos + 1));
        }
    }
}
