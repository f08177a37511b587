//! ItemKNN: item-to-item cosine similarity over user co-occurrence, pruned to
//! the top neighbours of every item.

use llmrec_core::{ItemId, Query, Recommender, Result, topk};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util;

/// ItemKNN settings (`[models.itemknn]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ItemKnnConfig {
    /// Number of most similar items kept per item (positive). Default 100.
    pub neighbours: usize,
    /// Shrinkage added to the cosine denominator, damping similarities backed
    /// by few users (finite, non-negative). Default 0 (plain cosine).
    pub shrink: f64,
}

impl Default for ItemKnnConfig {
    fn default() -> Self {
        ItemKnnConfig {
            neighbours: 100,
            shrink: 0.0,
        }
    }
}

impl ItemKnnConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        util::check_count("models.itemknn.neighbours", self.neighbours)?;
        util::check_number("models.itemknn.shrink", self.shrink, false)
    }
}

/// Item-based nearest neighbours with a sparse similarity matrix.
///
/// `sim(i, j) = c_ij / (sqrt(c_i) * sqrt(c_j) + shrink)` where `c_ij` counts the
/// users with both `i` and `j` in training and `c_i` the users with `i`. Row `i`
/// keeps its `neighbours` largest positive similarities (ties: lower item id),
/// never `i` itself. A history scores `score(j) = sum_i sim(i, j)` over its
/// distinct items `i`.
#[derive(Debug, Clone)]
pub struct ItemKnn {
    n_items: usize,
    offsets: Vec<usize>,
    neighbours: Vec<ItemId>,
    sims: Vec<f32>,
}

impl ItemKnn {
    /// Builds the pruned similarity matrix from `train`. `seed` is unused.
    ///
    /// Rows are computed in parallel from an inverted index; memory is one
    /// `n_items` counter per thread plus the pruned matrix.
    pub fn fit(
        cfg: &ItemKnnConfig,
        train: &[Vec<ItemId>],
        n_items: usize,
        _seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        util::check_train("itemknn", train, n_items)?;
        let sets = util::distinct_sets(train);
        let (inv_off, inv_users) = util::inverted_index(&sets, n_items);
        let count = |i: usize| (inv_off[i + 1] - inv_off[i]) as f64;
        let k = cfg.neighbours;
        let shrink = cfg.shrink;

        let rows: Vec<Vec<(f32, ItemId)>> = (0..n_items)
            .into_par_iter()
            .map_init(
                || (vec![0u32; n_items], Vec::<ItemId>::new()),
                |(co, touched), i| {
                    for &u in &inv_users[inv_off[i]..inv_off[i + 1]] {
                        for &j in &sets[u as usize] {
                            let c = &mut co[j as usize];
                            if *c == 0 {
                                touched.push(j);
                            }
                            *c += 1;
                        }
                    }
                    let ci = count(i).sqrt();
                    let mut row: Vec<(f32, ItemId)> = Vec::with_capacity(touched.len());
                    for &j in touched.iter() {
                        let cij = std::mem::take(&mut co[j as usize]);
                        if j as usize == i {
                            continue;
                        }
                        let s = cij as f64 / (ci * count(j as usize).sqrt() + shrink);
                        if s > 0.0 {
                            row.push((s as f32, j));
                        }
                    }
                    touched.clear();
                    let order = |a: &(f32, ItemId), b: &(f32, ItemId)| topk::better(*a, *b);
                    if row.len() > k {
                        row.select_nth_unstable_by(k - 1, order);
                        row.truncate(k);
                    }
                    row.sort_unstable_by(order);
                    row
                },
            )
            .collect();

        let mut offsets = Vec::with_capacity(n_items + 1);
        offsets.push(0);
        let total: usize = rows.iter().map(Vec::len).sum();
        let mut neighbours = Vec::with_capacity(total);
        let mut sims = Vec::with_capacity(total);
        for row in rows {
            for (s, j) in row {
                neighbours.push(j);
                sims.push(s);
            }
            offsets.push(neighbours.len());
        }
        Ok(ItemKnn {
            n_items,
            offsets,
            neighbours,
            sims,
        })
    }

    /// The kept neighbours of `item` and their similarities, most similar first
    /// (empty for an id out of range).
    pub fn neighbours(&self, item: ItemId) -> (&[ItemId], &[f32]) {
        let i = item as usize;
        if i >= self.n_items {
            return (&[], &[]);
        }
        let r = self.offsets[i]..self.offsets[i + 1];
        (&self.neighbours[r.clone()], &self.sims[r])
    }

    /// The kept similarity `sim(i, j)`, 0 when pruned or absent.
    pub fn similarity(&self, i: ItemId, j: ItemId) -> f32 {
        let (nb, s) = self.neighbours(i);
        nb.iter().position(|&x| x == j).map_or(0.0, |p| s[p])
    }
}

impl Recommender for ItemKnn {
    fn name(&self) -> String {
        "itemknn".into()
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_into(&self, query: &Query<'_>, out: &mut [f32]) -> Result<()> {
        util::check_out("itemknn", self.n_items, out.len())?;
        let items = util::distinct_items("itemknn", query.history, self.n_items)?;
        out.fill(0.0);
        for i in items {
            let (nb, s) = self.neighbours(i);
            for (&j, &w) in nb.iter().zip(s) {
                out[j as usize] += w;
            }
        }
        Ok(())
    }
}
