//! EASE (Steck, 2019): a closed-form linear item-item model.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{
    LltRegularization, cholesky_in_place, cholesky_in_place_scratch,
};
use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, MatMut, MatRef, Par};
use llmrec_core::{Error, ItemId, Query, Recommender, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::util;

/// EASE settings (`[models.ease]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EaseConfig {
    /// L2 regularisation `λ` added to the diagonal of the Gram matrix
    /// (finite, positive). Default 500, Steck's value for ML-20M-sized data.
    pub lambda: f64,
}

impl Default for EaseConfig {
    fn default() -> Self {
        EaseConfig { lambda: 500.0 }
    }
}

impl EaseConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        util::check_number("models.ease.lambda", self.lambda, true)
    }
}

/// EASE: `G = XᵀX + λI`, `P = G⁻¹`, `B_ij = -P_ij / P_jj`, `B_jj = 0`.
///
/// `X` is the binary user-item matrix of the training sequences (repeats count
/// once). A history scores `x · B`, with `x` the binary vector of the history,
/// so any history (not only a training row) can be scored. The inverse is
/// computed in `f64` through a Cholesky factorisation; `B` is kept in `f32`.
#[derive(Debug, Clone)]
pub struct Ease {
    n_items: usize,
    /// Row-major `n_items x n_items`.
    b: Vec<f32>,
}

impl Ease {
    /// Fits EASE on `train`. `seed` is unused (the fit is closed-form).
    ///
    /// Memory peaks at two `n_items²` `f64` buffers (2.3 GB for 12,101 items).
    pub fn fit(
        cfg: &EaseConfig,
        train: &[Vec<ItemId>],
        n_items: usize,
        _seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        util::check_train("ease", train, n_items)?;
        let n = n_items;
        let n2 = n
            .checked_mul(n)
            .ok_or_else(|| Error::Invalid(format!("ease: {n} items is too many")))?;
        let sets = util::distinct_sets(train);
        let (inv_off, inv_users) = util::inverted_index(&sets, n);

        // Gram matrix, column-major, built column by column from the inverted index.
        let mut g = vec![0f64; n2];
        g.par_chunks_mut(n).enumerate().for_each(|(j, col)| {
            for &u in &inv_users[inv_off[j]..inv_off[j + 1]] {
                for &i in &sets[u as usize] {
                    col[i as usize] += 1.0;
                }
            }
            col[j] += cfg.lambda;
        });
        drop(sets);
        drop(inv_users);

        let par = Par::rayon(0);
        {
            let gm = MatMut::from_column_major_slice_mut(&mut g, n, n);
            let mut scratch =
                MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
            cholesky_in_place(
                gm,
                LltRegularization::default(),
                par,
                MemStack::new(&mut scratch),
                Default::default(),
            )
            .map_err(|e| {
                Error::model(
                    "ease",
                    format!(
                        "XᵀX + λI is not positive definite ({e:?}); increase models.ease.lambda"
                    ),
                )
            })?;
        }
        // L⁻¹, then P = L⁻ᵀ L⁻¹ (lower triangle) written over L.
        let mut linv = vec![0f64; n2];
        invert_lower_triangular(
            MatMut::from_column_major_slice_mut(&mut linv, n, n),
            MatRef::from_column_major_slice(&g, n, n),
            par,
        );
        {
            let l = MatRef::from_column_major_slice(&linv, n, n);
            matmul(
                MatMut::from_column_major_slice_mut(&mut g, n, n),
                BlockStructure::TriangularLower,
                Accum::Replace,
                l.transpose(),
                BlockStructure::TriangularUpper,
                l,
                BlockStructure::TriangularLower,
                1.0,
                par,
            );
        }
        drop(linv);

        // P is symmetric and its lower triangle is in `g` (column-major):
        // P(i, j) = g[min(i,j) * n + max(i,j)].
        let p = &g;
        let mut b = vec![0f32; n2];
        b.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            for (j, out) in row.iter_mut().enumerate() {
                if i == j {
                    continue;
                }
                let pij = if i >= j { p[j * n + i] } else { p[i * n + j] };
                *out = (-pij / p[j * n + j]) as f32;
            }
        });
        if b.iter().any(|x| !x.is_finite()) {
            return Err(Error::model(
                "ease",
                "the inverse has non-finite entries; increase models.ease.lambda",
            ));
        }
        Ok(Ease { n_items: n, b })
    }

    /// The weight `B[i, j]` (how much having `i` raises the score of `j`).
    pub fn weight(&self, i: ItemId, j: ItemId) -> f32 {
        let (i, j) = (i as usize, j as usize);
        if i < self.n_items && j < self.n_items {
            self.b[i * self.n_items + j]
        } else {
            0.0
        }
    }

    /// Row `i` of `B` (the weights of item `i` towards every item).
    pub fn row(&self, i: ItemId) -> &[f32] {
        let i = i as usize;
        if i < self.n_items {
            &self.b[i * self.n_items..(i + 1) * self.n_items]
        } else {
            &[]
        }
    }
}

impl Recommender for Ease {
    fn name(&self) -> String {
        "ease".into()
    }

    fn n_items(&self) -> usize {
        self.n_items
    }

    fn score_into(&self, query: &Query<'_>, out: &mut [f32]) -> Result<()> {
        util::check_out("ease", self.n_items, out.len())?;
        let items = util::distinct_items("ease", query.history, self.n_items)?;
        out.fill(0.0);
        for i in items {
            for (o, &w) in out.iter_mut().zip(self.row(i)) {
                *o += w;
            }
        }
        Ok(())
    }

    fn score_batch(&self, queries: &[Query<'_>], out: &mut [f32]) -> Result<()> {
        util::check_batch_out("ease", self.n_items, queries.len(), out.len())?;
        out.par_chunks_mut(self.n_items)
            .zip(queries.par_iter())
            .try_for_each(|(row, q)| self.score_into(q, row))
    }
}
