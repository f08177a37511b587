//! The MLP baseline of rating prediction (arXiv 2305.06474's "MLP" row): a user
//! embedding, a movie embedding and the mean of the movie's genre embeddings,
//! concatenated, through two ReLU layers to the stars (plus the training mean),
//! trained in candle with AdamW on the squared error, with early stopping on the
//! validation RMSE (the best pass's weights are kept, as for MF). A user or movie
//! absent from training gets a zero embedding.

use std::collections::{BTreeMap, HashMap};

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Embedding, Linear, Module, ParamsAdamW, VarBuilder, VarMap};
use llmrec_core::{Error, Result, Rng};
use llmrec_data::loaders::Movie;
use llmrec_models::init::seeded;
use llmrec_models::optim::AdamW;
use serde::{Deserialize, Serialize};

use super::baselines::RatingModel;
use super::protocol::{RatingRow, metrics};

/// Settings of [`RatingMlp`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MlpParams {
    /// Size of the user, movie and genre embeddings.
    pub dim: usize,
    /// Width of the first hidden layer (the second is half as wide).
    pub hidden: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Rows per step.
    pub batch: usize,
    /// At most this many passes over the training rows.
    pub epochs: usize,
    /// Stop after this many passes without a lower validation RMSE.
    pub patience: usize,
    /// Seed of the initial weights and the row order.
    pub seed: u64,
}

fn merr(e: candle_core::Error) -> Error {
    Error::model("rating mlp", e)
}

/// The fitted MLP.
pub struct RatingMlp {
    mu: f32,
    users: HashMap<u32, u32>,
    movies: HashMap<u32, u32>,
    /// `(movies + 1, genres)`: each movie's genres as a row summing to 1 (row 0:
    /// unknown movie, all zero).
    genre_rows: Tensor,
    net: Net,
    /// The pass whose weights were kept (1-based) and its validation RMSE.
    pub best: (usize, f64),
}

struct Net {
    user: Embedding,
    movie: Embedding,
    genre: Linear,
    l1: Linear,
    l2: Linear,
    out: Linear,
}

impl Net {
    fn new(
        vb: &VarBuilder,
        users: usize,
        movies: usize,
        genres: usize,
        p: &MlpParams,
    ) -> Result<Net> {
        let h2 = (p.hidden / 2).max(1);
        Ok(Net {
            user: candle_nn::embedding(users + 1, p.dim, vb.pp("user")).map_err(merr)?,
            movie: candle_nn::embedding(movies + 1, p.dim, vb.pp("movie")).map_err(merr)?,
            genre: candle_nn::linear_no_bias(genres.max(1), p.dim, vb.pp("genre")).map_err(merr)?,
            l1: candle_nn::linear(3 * p.dim, p.hidden, vb.pp("l1")).map_err(merr)?,
            l2: candle_nn::linear(p.hidden, h2, vb.pp("l2")).map_err(merr)?,
            out: candle_nn::linear(h2, 1, vb.pp("out")).map_err(merr)?,
        })
    }

    /// Predicted stars minus the mean, `(batch,)`.
    fn forward(
        &self,
        users: &Tensor,
        movies: &Tensor,
        genre_rows: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let u = self.user.forward(users)?;
        let m = self.movie.forward(movies)?;
        let g = self.genre.forward(&genre_rows.index_select(movies, 0)?)?;
        let x = Tensor::cat(&[u, m, g], D::Minus1)?;
        let x = self.l1.forward(&x)?.relu()?;
        let x = self.l2.forward(&x)?.relu()?;
        self.out.forward(&x)?.squeeze(D::Minus1)
    }
}

impl RatingMlp {
    /// Trains on `train` (genres from `movies`), choosing the pass on `valid`.
    pub fn fit(
        train: &[RatingRow],
        valid: &[RatingRow],
        movies: &HashMap<u32, Movie>,
        p: &MlpParams,
    ) -> Result<RatingMlp> {
        if p.dim == 0 || p.hidden == 0 || p.batch == 0 || p.epochs == 0 || p.patience == 0 {
            return Err(Error::config(
                "mlp",
                "dims, hidden, batch, epochs and patience must be positive",
            ));
        }
        let dev = Device::Cpu;
        // Dense ids from 1 in order of first appearance; 0 is "not in training".
        let mut users: HashMap<u32, u32> = HashMap::new();
        let mut ids: HashMap<u32, u32> = HashMap::new();
        for r in train {
            let n = users.len() as u32 + 1;
            users.entry(r.user).or_insert(n);
            let n = ids.len() as u32 + 1;
            ids.entry(r.movie).or_insert(n);
        }
        let mut genre_names: BTreeMap<&str, usize> = BTreeMap::new();
        for m in movies.values() {
            for g in &m.genres {
                genre_names.entry(g.as_str()).or_insert(0);
            }
        }
        for (i, v) in genre_names.values_mut().enumerate() {
            *v = i;
        }
        let ng = genre_names.len().max(1);
        let mut rows = vec![0f32; (ids.len() + 1) * ng];
        for (&movie, &ix) in &ids {
            if let Some(m) = movies.get(&movie)
                && !m.genres.is_empty()
            {
                let w = 1.0 / m.genres.len() as f32;
                for g in &m.genres {
                    rows[ix as usize * ng + genre_names[g.as_str()]] += w;
                }
            }
        }
        let genre_rows = Tensor::from_vec(rows, (ids.len() + 1, ng), &dev).map_err(merr)?;
        let mu = {
            let s: f64 = train.iter().map(|r| r.stars as f64).sum();
            (s / train.len().max(1) as f64) as f32
        };

        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
        let net = Net::new(&vb, users.len(), ids.len(), ng, p)?;
        seeded(&varmap, p.seed)?;
        // Row 0 of each table (unknown user or movie) is zero, and stays so: no
        // training row indexes it, and weight decay keeps a zero at zero.
        for name in ["user.weight", "movie.weight"] {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::model("rating mlp", "lock"))?;
            if let Some(v) = data.get(name) {
                let t = v.as_tensor();
                let zero = Tensor::zeros((1, p.dim), DType::F32, &dev).map_err(merr)?;
                let rest = t.narrow(0, 1, t.dim(0).map_err(merr)? - 1).map_err(merr)?;
                v.set(&Tensor::cat(&[&zero, &rest], 0).map_err(merr)?)
                    .map_err(merr)?;
            }
        }
        let mut opt = AdamW::new(
            &varmap,
            ParamsAdamW {
                lr: p.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: p.weight_decay,
            },
        )?;
        let mut m = RatingMlp {
            mu,
            users,
            movies: ids,
            genre_rows,
            net,
            best: (0, f64::INFINITY),
        };
        let dense: Vec<(u32, u32, f32)> = train
            .iter()
            .map(|r| (m.users[&r.user], m.movies[&r.movie], r.stars - mu))
            .collect();
        let mut order: Vec<usize> = (0..dense.len()).collect();
        let mut rng = Rng::stream(p.seed, 0x4d4c50);
        let snapshot = |vm: &VarMap| -> Result<Vec<(String, Tensor)>> {
            let data = vm
                .data()
                .lock()
                .map_err(|_| Error::model("rating mlp", "lock"))?;
            data.iter()
                .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy().map_err(merr)?)))
                .collect()
        };
        let mut kept = snapshot(&varmap)?;
        let mut since_best = 0;
        for epoch in 1..=p.epochs {
            rng.shuffle(&mut order);
            for chunk in order.chunks(p.batch) {
                let u: Vec<u32> = chunk.iter().map(|&j| dense[j].0).collect();
                let i: Vec<u32> = chunk.iter().map(|&j| dense[j].1).collect();
                let y: Vec<f32> = chunk.iter().map(|&j| dense[j].2).collect();
                let n = chunk.len();
                let step = || -> candle_core::Result<Tensor> {
                    let u = Tensor::from_vec(u, n, &dev)?;
                    let i = Tensor::from_vec(i, n, &dev)?;
                    let y = Tensor::from_vec(y, n, &dev)?;
                    let pred = m.net.forward(&u, &i, &m.genre_rows)?;
                    (pred - y)?.sqr()?.mean_all()
                };
                let loss = step().map_err(merr)?;
                opt.backward_step(&loss)?;
            }
            let v = metrics(valid, &m.predict_rows(valid))?.rmse;
            if v < m.best.1 {
                m.best = (epoch, v);
                kept = snapshot(&varmap)?;
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= p.patience {
                    break;
                }
            }
        }
        let data = varmap
            .data()
            .lock()
            .map_err(|_| Error::model("rating mlp", "lock"))?;
        for (k, t) in kept {
            if let Some(v) = data.get(&k) {
                v.set(&t).map_err(merr)?;
            }
        }
        drop(data);
        Ok(m)
    }

    fn predict_batch(&self, pairs: &[(u32, u32)]) -> Result<Vec<f32>> {
        let dev = Device::Cpu;
        let u: Vec<u32> = pairs
            .iter()
            .map(|(u, _)| *self.users.get(u).unwrap_or(&0))
            .collect();
        let i: Vec<u32> = pairs
            .iter()
            .map(|(_, i)| *self.movies.get(i).unwrap_or(&0))
            .collect();
        let n = pairs.len();
        let f = || -> candle_core::Result<Vec<f32>> {
            let u = Tensor::from_vec(u, n, &dev)?;
            let i = Tensor::from_vec(i, n, &dev)?;
            self.net.forward(&u, &i, &self.genre_rows)?.to_vec1::<f32>()
        };
        Ok(f()
            .map_err(merr)?
            .into_iter()
            .map(|x| (x + self.mu).clamp(1.0, 5.0))
            .collect())
    }
}

impl RatingModel for RatingMlp {
    fn predict(&self, user: u32, movie: u32) -> f32 {
        self.predict_batch(&[(user, movie)])
            .ok()
            .and_then(|v| v.first().copied())
            .unwrap_or(self.mu.clamp(1.0, 5.0))
    }

    fn predict_rows(&self, rows: &[RatingRow]) -> Vec<f32> {
        let mut out = Vec::with_capacity(rows.len());
        for chunk in rows.chunks(8192) {
            let pairs: Vec<(u32, u32)> = chunk.iter().map(|r| (r.user, r.movie)).collect();
            match self.predict_batch(&pairs) {
                Ok(v) => out.extend(v),
                Err(_) => out.extend(chunk.iter().map(|r| self.predict(r.user, r.movie))),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rating::baselines::GlobalMean;

    /// Ratings from a rank-2 taste model plus a genre effect.
    fn synthetic() -> (Vec<RatingRow>, Vec<RatingRow>, HashMap<u32, Movie>) {
        let mut rng = Rng::new(5);
        let (nu, nm) = (60u32, 40u32);
        let uf: Vec<[f64; 2]> = (0..nu).map(|_| [rng.normal(), rng.normal()]).collect();
        let mf: Vec<[f64; 2]> = (0..nm).map(|_| [rng.normal(), rng.normal()]).collect();
        let movies: HashMap<u32, Movie> = (0..nm)
            .map(|m| {
                let g = if m % 2 == 0 { "Comedy" } else { "Horror" };
                (
                    m,
                    Movie {
                        title: format!("M{m}"),
                        genres: vec![g.into()],
                    },
                )
            })
            .collect();
        let (mut train, mut valid) = (Vec::new(), Vec::new());
        for u in 0..nu {
            for m in 0..nm {
                if rng.next_f64() < 0.5 {
                    continue;
                }
                let s = 3.0
                    + uf[u as usize][0] * mf[m as usize][0]
                    + uf[u as usize][1] * mf[m as usize][1]
                    + if m % 2 == 0 { 0.5 } else { -0.5 };
                let row = RatingRow {
                    user: u,
                    movie: m,
                    stars: s.round().clamp(1.0, 5.0) as f32,
                    position: 0,
                };
                if rng.next_f64() < 0.15 {
                    valid.push(row)
                } else {
                    train.push(row)
                }
            }
        }
        (train, valid, movies)
    }

    #[test]
    fn mlp_learns_a_low_rank_matrix_far_better_than_the_mean() {
        let (train, valid, movies) = synthetic();
        let p = MlpParams {
            dim: 8,
            hidden: 32,
            lr: 0.01,
            weight_decay: 0.0,
            batch: 64,
            epochs: 60,
            patience: 5,
            seed: 3,
        };
        let m = RatingMlp::fit(&train, &valid, &movies, &p).unwrap();
        let mean = metrics(&valid, &GlobalMean::fit(&train).predict_rows(&valid))
            .unwrap()
            .rmse;
        let got = metrics(&valid, &m.predict_rows(&valid)).unwrap().rmse;
        assert!(
            (got - m.best.1).abs() < 1e-9,
            "the kept pass is the best one"
        );
        assert!(got < 0.75 * mean, "mlp {got} vs mean {mean}");
        // Seeded: the same fit again gives the same predictions.
        let again = RatingMlp::fit(&train, &valid, &movies, &p).unwrap();
        assert_eq!(m.predict_rows(&valid), again.predict_rows(&valid));
        // Unknown user and movie: a finite prediction in range.
        let x = m.predict(9999, 9999);
        assert!((1.0..=5.0).contains(&x));
    }
}
