//! Item graphs built from interactions, and personalized PageRank on them.
//!
//! [`ItemGraph`] is an undirected, weighted graph over dense item ids, stored as
//! compressed sparse rows with no self-loops. [`ItemGraph::co_engagement`] weighs
//! the edge between two items by the number of users who engaged with both;
//! callers pass training sequences only, so validation and test interactions never
//! make an edge. [`personalized_pagerank`] runs power iteration from one item with
//! a tolerance and an iteration cap; [`top_neighbors`] keeps the highest-scoring
//! other items.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::{Error, ItemId, Result};

/// An undirected weighted item graph (compressed sparse rows, both directions of
/// every edge stored, no self-loops, each row sorted by item id).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemGraph {
    offsets: Vec<usize>,
    targets: Vec<ItemId>,
    weights: Vec<f64>,
    /// Each item's summed edge weights, computed once (every PageRank reads them).
    degrees: Vec<f64>,
}

impl ItemGraph {
    /// A graph of `n` items from undirected `edges` `(a, b, weight)`. Weights of
    /// repeated edges add up; self-loops and non-positive weights are errors.
    pub fn from_edges(n: usize, edges: &[(ItemId, ItemId, f64)]) -> Result<ItemGraph> {
        let mut both = Vec::with_capacity(edges.len() * 2);
        for (k, &(a, b, w)) in edges.iter().enumerate() {
            if a as usize >= n || b as usize >= n {
                return Err(Error::Invalid(format!(
                    "edge {k} ({a}, {b}) names an item outside 0..{n}"
                )));
            }
            if a == b {
                return Err(Error::Invalid(format!("edge {k} is a self-loop on {a}")));
            }
            if !(w.is_finite() && w > 0.0) {
                return Err(Error::Invalid(format!(
                    "edge {k} ({a}, {b}) has weight {w}; expected a positive number"
                )));
            }
            both.push((a, b, w));
            both.push((b, a, w));
        }
        both.sort_by_key(|x| (x.0, x.1));
        let mut offsets = vec![0usize; n + 1];
        let mut targets = Vec::with_capacity(both.len());
        let mut weights: Vec<f64> = Vec::with_capacity(both.len());
        let mut last: Option<(ItemId, ItemId)> = None;
        for (a, b, w) in both {
            if last == Some((a, b)) {
                if let Some(x) = weights.last_mut() {
                    *x += w;
                }
                continue;
            }
            last = Some((a, b));
            offsets[a as usize + 1] += 1;
            targets.push(b);
            weights.push(w);
        }
        for i in 0..n {
            offsets[i + 1] += offsets[i];
        }
        let degrees = (0..n)
            .map(|i| weights[offsets[i]..offsets[i + 1]].iter().sum())
            .collect();
        Ok(ItemGraph {
            offsets,
            targets,
            weights,
            degrees,
        })
    }

    /// The co-engagement graph of `n` items: the weight of `(a, b)` is the number
    /// of sequences holding both `a` and `b` (each sequence counted once per pair,
    /// repeats inside a sequence ignored). Pass training sequences only.
    ///
    /// With `max_neighbors > 0`, each item keeps only its `max_neighbors` heaviest
    /// edges (equal weights: the smaller item id first), and an edge kept by either
    /// end stays in the graph. This bounds the cost of PageRank on dense data such
    /// as MovieLens, where nearly every pair of movies shares a user.
    pub fn co_engagement(
        sequences: &[&[ItemId]],
        n: usize,
        max_neighbors: usize,
    ) -> Result<ItemGraph> {
        let mut users_of: Vec<Vec<u32>> = vec![Vec::new(); n];
        let mut distinct: Vec<Vec<ItemId>> = Vec::with_capacity(sequences.len());
        for (u, seq) in sequences.iter().enumerate() {
            let mut items: Vec<ItemId> = seq.to_vec();
            items.sort_unstable();
            items.dedup();
            if let Some(&bad) = items.iter().find(|&&i| i as usize >= n) {
                return Err(Error::Invalid(format!(
                    "sequence {u} holds item {bad}, outside 0..{n}"
                )));
            }
            for &i in &items {
                users_of[i as usize].push(u as u32);
            }
            distinct.push(items);
        }
        // Row `a`: every `b > a` with its count (each undirected edge once), or with
        // a cap, the row's heaviest `b` in either direction.
        let rows: Vec<Vec<(ItemId, f64)>> = (0..n)
            .into_par_iter()
            .map_init(
                || vec![0u32; n],
                |count, a| {
                    let mut touched = Vec::new();
                    for &u in &users_of[a] {
                        for &b in &distinct[u as usize] {
                            if b as usize != a {
                                if count[b as usize] == 0 {
                                    touched.push(b);
                                }
                                count[b as usize] += 1;
                            }
                        }
                    }
                    let mut row: Vec<(ItemId, f64)> = touched
                        .into_iter()
                        .map(|b| {
                            let c = std::mem::take(&mut count[b as usize]);
                            (b, c as f64)
                        })
                        .collect();
                    if max_neighbors > 0 && row.len() > max_neighbors {
                        row.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
                        row.truncate(max_neighbors);
                    }
                    row
                },
            )
            .collect();
        let mut edges: Vec<(ItemId, ItemId, f64)> = Vec::new();
        for (a, row) in rows.iter().enumerate() {
            for &(b, w) in row {
                let (lo, hi) = if (a as ItemId) < b {
                    (a as ItemId, b)
                } else {
                    (b, a as ItemId)
                };
                edges.push((lo, hi, w));
            }
        }
        // An edge kept by both ends appears twice: keep one copy.
        edges.sort_by_key(|x| (x.0, x.1));
        edges.dedup_by(|x, y| x.0 == y.0 && x.1 == y.1);
        ItemGraph::from_edges(n, &edges)
    }

    /// Number of items (nodes).
    pub fn n_nodes(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Number of undirected edges.
    pub fn n_edges(&self) -> usize {
        self.targets.len() / 2
    }

    /// The neighbours of `item` with their edge weights, by ascending id.
    pub fn neighbors(&self, item: ItemId) -> impl Iterator<Item = (ItemId, f64)> + '_ {
        let (s, e) = (self.offsets[item as usize], self.offsets[item as usize + 1]);
        self.targets[s..e]
            .iter()
            .copied()
            .zip(self.weights[s..e].iter().copied())
    }

    /// Sum of `item`'s edge weights.
    pub fn weighted_degree(&self, item: ItemId) -> f64 {
        self.degrees[item as usize]
    }
}

/// Settings of [`personalized_pagerank`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PageRankConfig {
    /// Probability of following an edge at each step (1 − the restart
    /// probability). Default 0.85.
    pub damping: f64,
    /// Stop when the L1 change of the scores in one iteration is below this.
    /// Default 1e-6.
    pub tolerance: f64,
    /// Stop after this many iterations at most. Default 100.
    pub max_iterations: usize,
}

impl Default for PageRankConfig {
    fn default() -> Self {
        PageRankConfig {
            damping: 0.85,
            tolerance: 1e-6,
            max_iterations: 100,
        }
    }
}

impl PageRankConfig {
    /// Checks the settings; `prefix` names the config table.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        if !(self.damping > 0.0 && self.damping < 1.0) {
            return Err(Error::config(
                format!("{prefix}.damping"),
                format!("{} is not strictly between 0 and 1", self.damping),
            ));
        }
        crate::check::positive_real(format!("{prefix}.tolerance"), self.tolerance)?;
        crate::check::positive(format!("{prefix}.max_iterations"), self.max_iterations)
    }
}

/// Personalized PageRank from `source`: the stationary distribution of a walk that
/// at each step follows an edge (chosen in proportion to its weight) with
/// probability `damping`, and jumps back to `source` otherwise, or when it stands on
/// an item without edges. Computed by power iteration from the source's indicator,
/// until the L1 change falls below the tolerance or the iteration cap is reached.
/// The scores sum to 1. Returns the scores and the iterations run.
pub fn personalized_pagerank(
    graph: &ItemGraph,
    source: ItemId,
    cfg: &PageRankConfig,
) -> Result<(Vec<f64>, usize)> {
    cfg.validate("pagerank")?;
    let n = graph.n_nodes();
    if source as usize >= n {
        return Err(Error::Invalid(format!(
            "pagerank source {source} outside 0..{n}"
        )));
    }
    let mut p = vec![0f64; n];
    p[source as usize] = 1.0;
    let mut next = vec![0f64; n];
    let mut active: Vec<ItemId> = vec![source];
    let mut seen = vec![false; n];
    seen[source as usize] = true;
    let mut iterations = 0;
    while iterations < cfg.max_iterations {
        iterations += 1;
        next.iter_mut().for_each(|x| *x = 0.0);
        let mut back = 1.0 - cfg.damping;
        let mut grown = Vec::new();
        for &u in &active {
            let mass = p[u as usize];
            if mass == 0.0 {
                continue;
            }
            let d = graph.weighted_degree(u);
            if d == 0.0 {
                back += cfg.damping * mass;
                continue;
            }
            let share = cfg.damping * mass / d;
            for (v, w) in graph.neighbors(u) {
                next[v as usize] += share * w;
                if !seen[v as usize] {
                    seen[v as usize] = true;
                    grown.push(v);
                }
            }
        }
        next[source as usize] += back;
        // `seen` marks the items already active: `grown` holds only new ones.
        active.extend(grown);
        let change: f64 = active
            .iter()
            .map(|&v| (next[v as usize] - p[v as usize]).abs())
            .sum();
        std::mem::swap(&mut p, &mut next);
        if change < cfg.tolerance {
            break;
        }
    }
    Ok((p, iterations))
}

/// The `t` items with the highest personalized PageRank from `source`, best first
/// (equal scores: the smaller id first), never `source` itself and never an item
/// the walk cannot reach. Returns `(item, score)`.
pub fn top_neighbors(
    graph: &ItemGraph,
    source: ItemId,
    t: usize,
    cfg: &PageRankConfig,
) -> Result<Vec<(ItemId, f64)>> {
    let (p, _) = personalized_pagerank(graph, source, cfg)?;
    let mut scored: Vec<(ItemId, f64)> = p
        .into_iter()
        .enumerate()
        .filter(|&(i, s)| i != source as usize && s > 0.0)
        .map(|(i, s)| (i as ItemId, s))
        .collect();
    scored.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(&y.0)));
    scored.truncate(t);
    Ok(scored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_degree_sums_merged_edges() {
        let g = ItemGraph::from_edges(4, &[(0, 1, 2.0), (1, 0, 0.5), (1, 2, 1.0)]).unwrap();
        let deg: Vec<f64> = (0..4).map(|i| g.weighted_degree(i)).collect();
        assert_eq!(deg, vec![2.5, 3.5, 1.0, 0.0]);
        assert_eq!(g.neighbors(1).collect::<Vec<_>>(), vec![(0, 2.5), (2, 1.0)]);
    }

    /// Dense power iteration of the same walk, written from the definition.
    fn dense_reference(n: usize, edges: &[(u32, u32, f64)], s: usize, d: f64) -> Vec<f64> {
        let mut w = vec![vec![0f64; n]; n];
        for &(a, b, x) in edges {
            w[a as usize][b as usize] += x;
            w[b as usize][a as usize] += x;
        }
        let mut p = vec![0f64; n];
        p[s] = 1.0;
        for _ in 0..2000 {
            let mut q = vec![0f64; n];
            q[s] = 1.0 - d;
            for u in 0..n {
                let deg: f64 = w[u].iter().sum();
                if deg == 0.0 {
                    q[s] += d * p[u];
                } else {
                    for v in 0..n {
                        q[v] += d * p[u] * w[u][v] / deg;
                    }
                }
            }
            p = q;
        }
        p
    }

    #[test]
    fn pagerank_matches_a_dense_power_iteration_and_sums_to_one() {
        // Two triangles joined by one light edge, and an isolated item 6.
        let edges = [
            (0, 1, 3.0),
            (1, 2, 1.0),
            (0, 2, 2.0),
            (2, 3, 0.5),
            (3, 4, 2.0),
            (4, 5, 1.0),
            (3, 5, 4.0),
        ];
        let g = ItemGraph::from_edges(7, &edges).unwrap();
        assert_eq!(g.n_edges(), 7);
        let cfg = PageRankConfig {
            tolerance: 1e-13,
            max_iterations: 1000,
            ..Default::default()
        };
        for s in [0u32, 3, 5, 6] {
            let (p, it) = personalized_pagerank(&g, s, &cfg).unwrap();
            assert!(it < 1000);
            let want = dense_reference(7, &edges, s as usize, 0.85);
            for (a, b) in p.iter().zip(&want) {
                assert!((a - b).abs() < 1e-10, "source {s}: {p:?} vs {want:?}");
            }
            assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        // The isolated item keeps all its mass; nothing else is reachable.
        let (p, _) = personalized_pagerank(&g, 6, &cfg).unwrap();
        assert_eq!(p[6], 1.0);
        assert!(top_neighbors(&g, 6, 5, &cfg).unwrap().is_empty());
        // From 0, its own triangle comes first, the heavier edge first.
        let top: Vec<u32> = top_neighbors(&g, 0, 3, &cfg)
            .unwrap()
            .iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(top, vec![1, 2, 3]);
    }

    #[test]
    fn co_engagement_counts_users_once_and_caps_rows() {
        let a: Vec<u32> = vec![0, 1, 2, 1];
        let b: Vec<u32> = vec![1, 2];
        let c: Vec<u32> = vec![3];
        let g = ItemGraph::co_engagement(&[&a, &b, &c], 5, 0).unwrap();
        let row = |g: &ItemGraph, i| g.neighbors(i).collect::<Vec<_>>();
        assert_eq!(row(&g, 0), vec![(1, 1.0), (2, 1.0)]);
        assert_eq!(row(&g, 1), vec![(0, 1.0), (2, 2.0)]);
        assert!(row(&g, 3).is_empty() && row(&g, 4).is_empty());
        // Capped at one neighbour: 0 keeps (0,1) (tie, smaller id), 1 and 2 keep
        // (1,2); the union holds both.
        let g1 = ItemGraph::co_engagement(&[&a, &b, &c], 5, 1).unwrap();
        assert_eq!(row(&g1, 1), vec![(0, 1.0), (2, 2.0)]);
        assert_eq!(row(&g1, 0), vec![(1, 1.0)]);
        assert_eq!(g1.n_edges(), 2);
        assert!(ItemGraph::co_engagement(&[&[7u32][..]], 5, 0).is_err());
        assert!(ItemGraph::from_edges(3, &[(1, 1, 1.0)]).is_err());
        assert!(ItemGraph::from_edges(3, &[(0, 1, 0.0)]).is_err());
    }
}
