//! The content MLP recommender of LLM-Rec (Lyu et al., 2024): a learned embedding
//! per user, scored by dot product against an item tower, an MLP over each item's
//! fixed text features (the concatenated sentence embeddings of its original and
//! LLM-augmented descriptions). Items have no id embedding: everything the model
//! knows about an item comes from its text.

use candle_core::{DType, Device, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use llmrec_core::check::all_positive;
use llmrec_core::{Error, ItemId, Query, Recommender, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

fn merr(e: candle_core::Error) -> Error {
    Error::model("content-mlp", e)
}

/// Shape of the model (documented in `configs/llm_rec.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentMlpConfig {
    /// Width of the user embedding and of the item tower's output. Default 64.
    pub dim: usize,
    /// Hidden widths of the item tower (ReLU after each). Default `[256]`.
    pub hidden: Vec<usize>,
}

impl Default for ContentMlpConfig {
    fn default() -> Self {
        ContentMlpConfig {
            dim: 64,
            hidden: vec![256],
        }
    }
}

impl ContentMlpConfig {
    /// Checks the settings; `prefix` names the config table.
    pub fn validate(&self, prefix: &str) -> Result<()> {
        all_positive(
            std::iter::once((format!("{prefix}.dim"), self.dim))
                .chain(self.hidden.iter().map(|&h| (format!("{prefix}.hidden"), h))),
        )
    }
}

/// The trainable model over a fixed feature table `(n_items, width)`.
pub struct ContentMlp {
    users: Embedding,
    layers: Vec<Linear>,
    features: Tensor,
    dim: usize,
}

impl ContentMlp {
    /// A model for `n_users` users over `features` (one row per dense item id),
    /// its variables under `vb` (`user`, `tower.l0`, `tower.l1`, ...).
    pub fn new(
        vb: VarBuilder,
        cfg: &ContentMlpConfig,
        n_users: usize,
        features: Tensor,
    ) -> Result<ContentMlp> {
        cfg.validate("model")?;
        let (_, width) = features.dims2().map_err(merr)?;
        let users = candle_nn::embedding(n_users, cfg.dim, vb.pp("user")).map_err(merr)?;
        let mut layers = Vec::new();
        let mut prev = width;
        for (i, &w) in cfg.hidden.iter().chain([&cfg.dim]).enumerate() {
            layers.push(candle_nn::linear(prev, w, vb.pp(format!("tower.l{i}"))).map_err(merr)?);
            prev = w;
        }
        Ok(ContentMlp {
            users,
            layers,
            features,
            dim: cfg.dim,
        })
    }

    /// The item tower over every item: `(n_items, dim)`.
    pub fn item_vectors(&self) -> Result<Tensor> {
        let mut x = self.features.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x).map_err(merr)?;
            if i + 1 < self.layers.len() {
                x = x.relu().map_err(merr)?;
            }
        }
        Ok(x)
    }

    /// Scores `(batch, m)` of users `(batch,)` against items `(batch, m)`, with the
    /// item tower already run (`items_all` from [`ContentMlp::item_vectors`]).
    pub fn logits(&self, items_all: &Tensor, users: &Tensor, items: &Tensor) -> Result<Tensor> {
        let run = || -> candle_core::Result<Tensor> {
            let (b, m) = items.dims2()?;
            let u = self.users.forward(users)?.unsqueeze(2)?; // (b, dim, 1)
            let v = items_all
                .index_select(&items.flatten_all()?, 0)?
                .reshape((b, m, self.dim))?;
            v.matmul(&u)?.squeeze(2)
        };
        run().map_err(merr)
    }

    /// The trained model as plain vectors, for scoring.
    pub fn freeze(&self, name: &str) -> Result<ContentScorer> {
        let items = self.item_vectors()?;
        let (n_items, dim) = items.dims2().map_err(merr)?;
        let items = items
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(merr)?;
        let users = self
            .users
            .embeddings()
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(merr)?;
        Ok(ContentScorer {
            name: name.to_string(),
            n_items,
            dim,
            users,
            items,
        })
    }
}

/// A trained content MLP as user and item vectors. A query for an unknown user
/// (or one without a user id) is folded in as the mean of its history items'
/// vectors.
#[derive(Debug, Clone)]
pub struct ContentScorer {
    name: String,
    n_items: usize,
    dim: usize,
    users: Vec<f32>,
    items: Vec<f32>,
}

impl ContentScorer {
    fn user_vector(&self, q: &Query<'_>) -> Result<Vec<f32>> {
        if let Some(u) = q.user {
            let u = u as usize;
            if (u + 1) * self.dim <= self.users.len() {
                return Ok(self.users[u * self.dim..(u + 1) * self.dim].to_vec());
            }
        }
        if q.history.is_empty() {
            return Err(Error::Invalid(format!(
                "{}: a query needs a known user or a non-empty history",
                self.name
            )));
        }
        let mut v = vec![0f32; self.dim];
        for &i in q.history {
            let i = i as usize;
            if i >= self.n_items {
                return Err(Error::Invalid(format!(
                    "{}: history item {i} outside 0..{}",
                    self.name, self.n_items
                )));
            }
            for (a, b) in v.iter_mut().zip(&self.items[i * self.dim..]) {
                *a += b / q.history.len() as f32;
            }
        }
        Ok(v)
    }

    /// The item vectors, row-major `(n_items, dim)`.
    pub fn item_matrix(&self) -> &[f32] {
        &self.items
    }

    /// The vector of item `i`.
    pub fn item(&self, i: ItemId) -> &[f32] {
        &self.items[i as usize * self.dim..(i as usize + 1) * self.dim]
    }
}

impl Recommender for ContentScorer {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_into(&self, query: &Query<'_>, out: &mut [f32]) -> Result<()> {
        if out.len() != self.n_items {
            return Err(Error::Invalid(format!(
                "{}: output of {} scores for {} items",
                self.name,
                out.len(),
                self.n_items
            )));
        }
        let u = self.user_vector(query)?;
        for (o, v) in out.iter_mut().zip(self.items.chunks_exact(self.dim)) {
            *o = u.iter().zip(v).map(|(a, b)| a * b).sum();
        }
        Ok(())
    }

    fn score_batch(&self, queries: &[Query<'_>], out: &mut [f32]) -> Result<()> {
        if out.len() != queries.len() * self.n_items {
            return Err(Error::Invalid(format!(
                "{}: output of {} scores for {} queries of {} items",
                self.name,
                out.len(),
                queries.len(),
                self.n_items
            )));
        }
        out.par_chunks_mut(self.n_items)
            .zip(queries.par_iter())
            .try_for_each(|(row, q)| self.score_into(q, row))
    }
}

/// A feature table `(rows, width)` on the CPU from row-major values.
pub fn feature_table(values: Vec<f32>, rows: usize, width: usize) -> Result<Tensor> {
    Tensor::from_vec(values, (rows, width), &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(merr)
}
