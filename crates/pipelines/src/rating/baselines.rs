//! Collaborative-filtering baselines of rating prediction, fitted on the training
//! rows only: the global mean, user and item biases, and biased matrix
//! factorisation trained by SGD. Predictions are clipped to 1..5 stars. A user or
//! movie absent from training gets no bias and no factors.

use std::collections::HashMap;

use llmrec_core::{Result, Rng};
use serde::{Deserialize, Serialize};

use super::protocol::{RatingRow, metrics};

/// A fitted rating model.
pub trait RatingModel {
    /// Predicted stars of `user` for `movie`, in 1..5.
    fn predict(&self, user: u32, movie: u32) -> f32;

    /// Predictions for `rows`, in order.
    fn predict_rows(&self, rows: &[RatingRow]) -> Vec<f32> {
        rows.iter().map(|r| self.predict(r.user, r.movie)).collect()
    }
}

fn clip(x: f32) -> f32 {
    x.clamp(1.0, 5.0)
}

/// Dense indices of the users and movies seen in training.
#[derive(Debug, Clone, Default)]
struct Index {
    users: HashMap<u32, usize>,
    movies: HashMap<u32, usize>,
}

impl Index {
    fn of(rows: &[RatingRow]) -> Index {
        let mut ix = Index::default();
        for r in rows {
            let n = ix.users.len();
            ix.users.entry(r.user).or_insert(n);
            let n = ix.movies.len();
            ix.movies.entry(r.movie).or_insert(n);
        }
        ix
    }
}

fn mean(rows: &[RatingRow]) -> f32 {
    let s: f64 = rows.iter().map(|r| r.stars as f64).sum();
    (s / rows.len().max(1) as f64) as f32
}

/// Every prediction is the training mean.
#[derive(Debug, Clone, Copy)]
pub struct GlobalMean(pub f32);

impl GlobalMean {
    /// The mean of the training stars.
    pub fn fit(train: &[RatingRow]) -> GlobalMean {
        GlobalMean(mean(train))
    }
}

impl RatingModel for GlobalMean {
    fn predict(&self, _: u32, _: u32) -> f32 {
        clip(self.0)
    }
}

/// `mean + b_user + b_movie`, the biases fitted by alternating regularised least
/// squares (`b = Σ residual / (reg + count)`).
#[derive(Debug, Clone)]
pub struct Biases {
    mu: f32,
    ix: Index,
    bu: Vec<f32>,
    bi: Vec<f32>,
}

impl Biases {
    /// Fits the biases with regularisation `reg` over `sweeps` alternations.
    pub fn fit(train: &[RatingRow], reg: f32, sweeps: usize) -> Biases {
        let ix = Index::of(train);
        let mu = mean(train);
        let mut bu = vec![0f32; ix.users.len()];
        let mut bi = vec![0f32; ix.movies.len()];
        for _ in 0..sweeps {
            let mut sum = vec![0f64; bi.len()];
            let mut cnt = vec![0f64; bi.len()];
            for r in train {
                let (u, i) = (ix.users[&r.user], ix.movies[&r.movie]);
                sum[i] += (r.stars - mu - bu[u]) as f64;
                cnt[i] += 1.0;
            }
            for i in 0..bi.len() {
                bi[i] = (sum[i] / (reg as f64 + cnt[i])) as f32;
            }
            let mut sum = vec![0f64; bu.len()];
            let mut cnt = vec![0f64; bu.len()];
            for r in train {
                let (u, i) = (ix.users[&r.user], ix.movies[&r.movie]);
                sum[u] += (r.stars - mu - bi[i]) as f64;
                cnt[u] += 1.0;
            }
            for u in 0..bu.len() {
                bu[u] = (sum[u] / (reg as f64 + cnt[u])) as f32;
            }
        }
        Biases { mu, ix, bu, bi }
    }

    fn raw(&self, user: u32, movie: u32) -> f32 {
        self.mu
            + self.ix.users.get(&user).map_or(0.0, |&u| self.bu[u])
            + self.ix.movies.get(&movie).map_or(0.0, |&i| self.bi[i])
    }
}

impl RatingModel for Biases {
    fn predict(&self, user: u32, movie: u32) -> f32 {
        clip(self.raw(user, movie))
    }
}

/// Settings of [`BiasedMf`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MfParams {
    /// Latent factors per user and movie.
    pub factors: usize,
    /// L2 regularisation of biases and factors.
    pub reg: f32,
    /// SGD learning rate.
    pub lr: f32,
    /// At most this many passes over the training rows.
    pub epochs: usize,
    /// Stop after this many passes without a lower validation RMSE; the best pass's
    /// parameters are kept.
    pub patience: usize,
    /// Seed of the initial factors and the row order.
    pub seed: u64,
}

/// Biased matrix factorisation, `mean + b_u + b_i + p_u · q_i`, trained by SGD on
/// the squared error (Koren's "SVD" of the Netflix prize), with early stopping on
/// the validation RMSE.
#[derive(Debug, Clone)]
pub struct BiasedMf {
    mu: f32,
    ix: Index,
    k: usize,
    bu: Vec<f32>,
    bi: Vec<f32>,
    p: Vec<f32>,
    q: Vec<f32>,
    /// The pass whose parameters were kept (1-based) and its validation RMSE.
    pub best: (usize, f64),
}

impl BiasedMf {
    /// Trains on `train`, choosing the pass on `valid`.
    pub fn fit(train: &[RatingRow], valid: &[RatingRow], prm: &MfParams) -> Result<BiasedMf> {
        let ix = Index::of(train);
        let k = prm.factors;
        let mut rng = Rng::new(prm.seed);
        let init = |n: usize, rng: &mut Rng| -> Vec<f32> {
            (0..n * k).map(|_| (rng.normal() * 0.1) as f32).collect()
        };
        let mut m = BiasedMf {
            mu: mean(train),
            k,
            bu: vec![0.0; ix.users.len()],
            bi: vec![0.0; ix.movies.len()],
            p: init(ix.users.len(), &mut rng),
            q: init(ix.movies.len(), &mut rng),
            ix,
            best: (0, f64::INFINITY),
        };
        let dense: Vec<(usize, usize, f32)> = train
            .iter()
            .map(|r| (m.ix.users[&r.user], m.ix.movies[&r.movie], r.stars))
            .collect();
        let mut order: Vec<usize> = (0..dense.len()).collect();
        let mut kept = m.clone();
        let mut since_best = 0;
        for epoch in 1..=prm.epochs {
            rng.shuffle(&mut order);
            for &j in &order {
                let (u, i, r) = dense[j];
                let (pu, qi) = (u * k, i * k);
                let dot: f32 = (0..k).map(|f| m.p[pu + f] * m.q[qi + f]).sum();
                let e = r - (m.mu + m.bu[u] + m.bi[i] + dot);
                m.bu[u] += prm.lr * (e - prm.reg * m.bu[u]);
                m.bi[i] += prm.lr * (e - prm.reg * m.bi[i]);
                for f in 0..k {
                    let (a, b) = (m.p[pu + f], m.q[qi + f]);
                    m.p[pu + f] += prm.lr * (e * b - prm.reg * a);
                    m.q[qi + f] += prm.lr * (e * a - prm.reg * b);
                }
            }
            let v = metrics(valid, &m.predict_rows(valid))?.rmse;
            if v < kept.best.1 {
                m.best = (epoch, v);
                kept = m.clone();
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= prm.patience {
                    break;
                }
            }
        }
        Ok(kept)
    }
}

impl RatingModel for BiasedMf {
    fn predict(&self, user: u32, movie: u32) -> f32 {
        let u = self.ix.users.get(&user).copied();
        let i = self.ix.movies.get(&movie).copied();
        let mut x = self.mu;
        if let Some(u) = u {
            x += self.bu[u];
        }
        if let Some(i) = i {
            x += self.bi[i];
        }
        if let (Some(u), Some(i)) = (u, i) {
            let (pu, qi) = (u * self.k, i * self.k);
            x += (0..self.k)
                .map(|f| self.p[pu + f] * self.q[qi + f])
                .sum::<f32>();
        }
        clip(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ratings from a rank-2 matrix plus user and movie offsets, every 5th held out.
    fn low_rank() -> (Vec<RatingRow>, Vec<RatingRow>, Vec<RatingRow>) {
        let mut rng = Rng::new(5);
        let users: Vec<[f32; 2]> = (0..60)
            .map(|_| [rng.normal() as f32, rng.normal() as f32])
            .collect();
        let movies: Vec<[f32; 2]> = (0..40)
            .map(|_| [rng.normal() as f32, rng.normal() as f32])
            .collect();
        let (mut train, mut valid, mut test) = (vec![], vec![], vec![]);
        for (u, a) in users.iter().enumerate() {
            for (i, b) in movies.iter().enumerate() {
                if (u + 2 * i) % 3 == 0 {
                    continue;
                }
                let s = 3.0 + 0.8 * (a[0] * b[0] + a[1] * b[1]) + 0.3 * ((u % 3) as f32 - 1.0);
                let row = RatingRow {
                    user: u as u32,
                    movie: i as u32,
                    stars: s.clamp(1.0, 5.0),
                    position: i,
                };
                match (u * 7 + i) % 10 {
                    0 => test.push(row),
                    1 => valid.push(row),
                    _ => train.push(row),
                }
            }
        }
        (train, valid, test)
    }

    #[test]
    fn factorisation_beats_biases_beats_the_mean_on_a_low_rank_matrix() {
        let (train, valid, test) = low_rank();
        let score = |m: &dyn RatingModel| metrics(&test, &m.predict_rows(&test)).unwrap().rmse;
        let mean = score(&GlobalMean::fit(&train));
        let biases = score(&Biases::fit(&train, 5.0, 4));
        let prm = MfParams {
            factors: 4,
            reg: 0.02,
            lr: 0.05,
            epochs: 400,
            patience: 30,
            seed: 1,
        };
        let mf = BiasedMf::fit(&train, &valid, &prm).unwrap();
        let mf_rmse = score(&mf);
        assert!(biases < mean, "biases {biases} vs mean {mean}");
        assert!(
            mf_rmse < 0.6 * biases,
            "mf {mf_rmse} (pass {:?}) vs biases {biases}",
            mf.best
        );
        // Seeded: the same fit again gives the same predictions.
        let again = BiasedMf::fit(&train, &valid, &prm).unwrap();
        assert_eq!(mf.predict_rows(&test), again.predict_rows(&test));
        assert!(mf.best.0 >= 1);
    }

    #[test]
    fn unseen_users_and_movies_fall_back_to_what_is_known() {
        let (train, valid, _) = low_rank();
        let b = Biases::fit(&train, 5.0, 2);
        assert_eq!(b.predict(999, 999), clip(mean(&train)));
        let prm = MfParams {
            factors: 2,
            reg: 0.05,
            lr: 0.01,
            epochs: 3,
            patience: 1,
            seed: 2,
        };
        let mf = BiasedMf::fit(&train, &valid, &prm).unwrap();
        let p = mf.predict(999, 0);
        assert!((1.0..=5.0).contains(&p));
    }
}
