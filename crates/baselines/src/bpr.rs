//! BPR-MF (Rendle et al., 2009): matrix factorisation trained with the
//! Bayesian personalised ranking loss by stochastic gradient descent.

use llmrec_core::{Error, ItemId, Query, Recommender, Result, Rng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util;

/// BPR-MF settings (`[models.bpr]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BprConfig {
    /// Number of latent factors per user and item (positive). Default 64.
    pub dim: usize,
    /// SGD learning rate (finite, positive). Default 0.05.
    pub lr: f64,
    /// L2 regularisation applied to every updated parameter at each step
    /// (finite, non-negative). Default 1e-4.
    pub reg: f64,
    /// Passes over all distinct training (user, item) pairs; each pair is
    /// drawn once per epoch with one fresh negative. Default 60 (best
    /// validation NDCG@10 on ML-1M among 10-100 epochs).
    pub epochs: usize,
    /// Standard deviation of the normal initialisation of the factors
    /// (finite, non-negative). Default 0.1.
    pub init_std: f64,
    /// Learn a per-item bias added to every score. Default `true`.
    pub item_bias: bool,
}

impl Default for BprConfig {
    fn default() -> Self {
        BprConfig {
            dim: 64,
            lr: 0.05,
            reg: 1e-4,
            epochs: 60,
            init_std: 0.1,
            item_bias: true,
        }
    }
}

impl BprConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        util::check_count("models.bpr.dim", self.dim)?;
        util::check_number("models.bpr.lr", self.lr, true)?;
        util::check_number("models.bpr.reg", self.reg, false)?;
        util::check_number("models.bpr.init_std", self.init_std, false)
    }
}

/// BPR matrix factorisation: `score(u, j) = p_u · q_j + b_j`.
///
/// Trained by single-threaded SGD on `(u, i⁺, j⁻)` triples: every epoch visits
/// the distinct training pairs `(u, i⁺)` in a seeded random order and draws `j⁻`
/// uniformly among the items `u` never had in training. The fit is therefore
/// bit-for-bit reproducible from its seed.
///
/// A query for a user outside the trained range, or with `user == None`, is
/// folded in: its vector is the mean of its distinct history items' factors.
#[derive(Debug, Clone)]
pub struct Bpr {
    n_items: usize,
    n_users: usize,
    dim: usize,
    /// Row-major `n_users x dim`.
    users: Vec<f32>,
    /// Row-major `n_items x dim`.
    items: Vec<f32>,
    bias: Vec<f32>,
}

impl Bpr {
    /// Fits BPR-MF on `train` with the given seed.
    pub fn fit(cfg: &BprConfig, train: &[Vec<ItemId>], n_items: usize, seed: u64) -> Result<Self> {
        Self::fit_with_log(cfg, train, n_items, seed, &|_| {})
    }

    /// [`Bpr::fit`], calling `log` with a line after every epoch (mean loss).
    pub fn fit_with_log(
        cfg: &BprConfig,
        train: &[Vec<ItemId>],
        n_items: usize,
        seed: u64,
        log: &dyn Fn(&str),
    ) -> Result<Self> {
        cfg.validate()?;
        util::check_train("bpr", train, n_items)?;
        let n_users = train.len();
        let d = cfg.dim;
        let sizes = n_users
            .checked_mul(d)
            .zip(n_items.checked_mul(d))
            .ok_or_else(|| Error::Invalid("bpr: factor matrices too large".into()))?;

        let mut init = Rng::stream(seed, 0);
        let std = cfg.init_std;
        let mut users: Vec<f32> = (0..sizes.0).map(|_| (init.normal() * std) as f32).collect();
        let mut items: Vec<f32> = (0..sizes.1).map(|_| (init.normal() * std) as f32).collect();
        let mut bias = vec![0f32; n_items];

        let sets = util::distinct_sets(train);
        // Users who have every item have no negative: they cannot be trained.
        let mut pairs: Vec<(u32, ItemId)> = sets
            .iter()
            .enumerate()
            .filter(|(_, s)| s.len() < n_items)
            .flat_map(|(u, s)| s.iter().map(move |&i| (u as u32, i)))
            .collect();

        let lr = cfg.lr as f32;
        let reg = cfg.reg as f32;
        let mut rng = Rng::stream(seed, 1);
        let mut diff = vec![0f32; d];
        for epoch in 0..cfg.epochs {
            rng.shuffle(&mut pairs);
            let mut loss = 0f64;
            for &(u, i) in &pairs {
                let set = &sets[u as usize];
                let j = loop {
                    let j = rng.index(n_items) as ItemId;
                    if set.binary_search(&j).is_err() {
                        break j;
                    }
                };
                let (u, i, j) = (u as usize, i as usize, j as usize);
                let pu = &mut users[u * d..(u + 1) * d];
                let (qi, qj) = two_rows_mut(&mut items, i, j, d);
                let mut x = 0f32;
                for (((df, &a), &b), &p) in diff.iter_mut().zip(&*qi).zip(&*qj).zip(&*pu) {
                    *df = a - b;
                    x += p * *df;
                }
                if cfg.item_bias {
                    x += bias[i] - bias[j];
                }
                // d/dx ln σ(x) = σ(-x); the loss -ln σ(x) is computed stably.
                let g = 1.0 / (1.0 + x.exp());
                loss += f64::from((-x).max(0.0) + (-x.abs()).exp().ln_1p());
                for (((p, a), b), &df) in pu.iter_mut().zip(qi).zip(qj).zip(&diff) {
                    let p0 = *p;
                    *p += lr * (g * df - reg * p0);
                    *a += lr * (g * p0 - reg * *a);
                    *b += lr * (-g * p0 - reg * *b);
                }
                if cfg.item_bias {
                    bias[i] += lr * (g - reg * bias[i]);
                    bias[j] += lr * (-g - reg * bias[j]);
                }
            }
            let mean = if pairs.is_empty() {
                0.0
            } else {
                loss / pairs.len() as f64
            };
            log(&format!(
                "bpr epoch {}/{}: loss {mean:.4}",
                epoch + 1,
                cfg.epochs
            ));
        }
        if users
            .iter()
            .chain(&items)
            .chain(&bias)
            .any(|x| !x.is_finite())
        {
            return Err(Error::model(
                "bpr",
                "training diverged (non-finite factors); lower models.bpr.lr",
            ));
        }
        Ok(Bpr {
            n_items,
            n_users,
            dim: d,
            users,
            items,
            bias,
        })
    }

    /// The vector used for a query: the trained user factors, or the folded-in
    /// mean of the history items' factors.
    fn user_vector(&self, query: &Query<'_>) -> Result<Vec<f32>> {
        let d = self.dim;
        if let Some(u) = query.user
            && (u as usize) < self.n_users
        {
            let u = u as usize;
            return Ok(self.users[u * d..(u + 1) * d].to_vec());
        }
        let hist = util::distinct_items("bpr", query.history, self.n_items)?;
        let mut v = vec![0f32; d];
        for &i in &hist {
            for (a, &q) in v
                .iter_mut()
                .zip(&self.items[i as usize * d..(i as usize + 1) * d])
            {
                *a += q;
            }
        }
        if !hist.is_empty() {
            let inv = 1.0 / hist.len() as f32;
            v.iter_mut().for_each(|a| *a *= inv);
        }
        Ok(v)
    }

    /// Number of users with trained factors.
    pub fn n_users(&self) -> usize {
        self.n_users
    }
}

/// Rows `i` and `j` (`i != j`) of a row-major matrix with `d` columns, both mutable.
fn two_rows_mut(m: &mut [f32], i: usize, j: usize, d: usize) -> (&mut [f32], &mut [f32]) {
    debug_assert_ne!(i, j);
    if i < j {
        let (a, b) = m.split_at_mut(j * d);
        (&mut a[i * d..(i + 1) * d], &mut b[..d])
    } else {
        let (a, b) = m.split_at_mut(i * d);
        (&mut b[..d], &mut a[j * d..(j + 1) * d])
    }
}

impl Recommender for Bpr {
    fn name(&self) -> String {
        "bpr".into()
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_into(&self, query: &Query<'_>, out: &mut [f32]) -> Result<()> {
        util::check_out("bpr", self.n_items, out.len())?;
        let p = self.user_vector(query)?;
        for ((o, q), &b) in out
            .iter_mut()
            .zip(self.items.chunks_exact(self.dim))
            .zip(&self.bias)
        {
            *o = p.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() + b;
        }
        Ok(())
    }

    fn score_batch(&self, queries: &[Query<'_>], out: &mut [f32]) -> Result<()> {
        util::check_batch_out("bpr", self.n_items, queries.len(), out.len())?;
        out.par_chunks_mut(self.n_items)
            .zip(queries.par_iter())
            .try_for_each(|(row, q)| self.score_into(q, row))
    }
}
