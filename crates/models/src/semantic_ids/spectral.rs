//! Spectral item embeddings of the user-item graph: collaborative vectors that can be
//! fused with the text embeddings before Semantic IDs are made (the pipeline's
//! `ids.collab`), so that items bought by the same users tend to share ID prefixes.
//!
//! The graph is the training part of the split only (every user's items, each counted
//! once), with the symmetric normalisation `Â = D_u^{-1/2} A D_i^{-1/2}`. The item
//! vectors are the leading eigenvectors of `Â^T Â` (the right singular vectors of `Â`,
//! as in spectral clustering of the co-occurrence graph), found by seeded subspace
//! iteration with a Rayleigh-Ritz step. The first eigenvector (eigenvalue 1, ∝ the
//! square root of the item degree on a connected graph) says nothing but popularity and
//! is dropped; the next `dim` are kept and every item's row is scaled to unit length
//! (Ng, Jordan and Weiss). Items that never occur in training get the zero vector.

use llmrec_core::{Error, ItemId, Result, Rng};
use serde::{Deserialize, Serialize};

/// Settings of [`item_embeddings`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpectralConfig {
    /// Eigenvectors kept per item (after the dropped first one). Default 32.
    pub dim: usize,
    /// Extra columns carried through the iteration for accuracy. Default 16.
    pub oversample: usize,
    /// Subspace (power) iterations. Default 12.
    pub iters: usize,
    /// Seed of the starting subspace. Default 42.
    pub seed: u64,
}

impl Default for SpectralConfig {
    fn default() -> Self {
        SpectralConfig {
            dim: 32,
            oversample: 16,
            iters: 12,
            seed: 42,
        }
    }
}

/// The normalised user-item operator.
struct Graph {
    /// Per user: (item, weight `1/sqrt(d_u d_i)`).
    rows: Vec<Vec<(usize, f64)>>,
    n_items: usize,
    degree: Vec<usize>,
}

impl Graph {
    fn new(train: &[&[ItemId]], n_items: usize) -> Result<Graph> {
        let mut sets: Vec<Vec<usize>> = Vec::with_capacity(train.len());
        let mut degree = vec![0usize; n_items];
        for (u, seq) in train.iter().enumerate() {
            let mut items: Vec<usize> = seq.iter().map(|&i| i as usize).collect();
            if let Some(&bad) = items.iter().find(|&&i| i >= n_items) {
                return Err(Error::Invalid(format!(
                    "spectral embeddings: user {u} has item {bad}, the catalogue has {n_items}"
                )));
            }
            items.sort_unstable();
            items.dedup();
            for &i in &items {
                degree[i] += 1;
            }
            sets.push(items);
        }
        let rows = sets
            .into_iter()
            .map(|items| {
                let du = items.len() as f64;
                items
                    .into_iter()
                    .map(|i| (i, 1.0 / (du * degree[i] as f64).sqrt()))
                    .collect()
            })
            .collect();
        Ok(Graph {
            rows,
            n_items,
            degree,
        })
    }

    /// `Â^T Â X` for `X` with `r` columns, stored row-major (`n_items × r`).
    fn apply(&self, x: &[f64], r: usize) -> Vec<f64> {
        let mut out = vec![0f64; self.n_items * r];
        let mut y = vec![0f64; r];
        for row in &self.rows {
            y.iter_mut().for_each(|v| *v = 0.0);
            for &(i, w) in row {
                for (yv, xv) in y.iter_mut().zip(&x[i * r..(i + 1) * r]) {
                    *yv += w * xv;
                }
            }
            for &(i, w) in row {
                for (o, yv) in out[i * r..(i + 1) * r].iter_mut().zip(&y) {
                    *o += w * yv;
                }
            }
        }
        out
    }
}

/// Orthonormalises the `r` columns of row-major `x` (`n × r`) in place by modified
/// Gram-Schmidt, twice for accuracy. A column that vanishes is left at zero.
fn orthonormalize(x: &mut [f64], n: usize, r: usize) {
    for _ in 0..2 {
        for j in 0..r {
            for k in 0..j {
                let dot: f64 = (0..n).map(|i| x[i * r + j] * x[i * r + k]).sum();
                for i in 0..n {
                    x[i * r + j] -= dot * x[i * r + k];
                }
            }
            let norm = (0..n).map(|i| x[i * r + j].powi(2)).sum::<f64>().sqrt();
            let inv = if norm > 1e-12 { 1.0 / norm } else { 0.0 };
            for i in 0..n {
                x[i * r + j] *= inv;
            }
        }
    }
}

/// Eigen-decomposition of the symmetric `r × r` row-major matrix `a` by cyclic Jacobi
/// rotations. Returns the eigenvalues in descending order and the matching
/// eigenvectors as the columns of a row-major `r × r` matrix.
pub fn symmetric_eigen(a: &[f64], r: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0f64; r * r];
    for i in 0..r {
        v[i * r + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..r)
            .flat_map(|i| (0..r).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * r + j].powi(2))
            .sum();
        let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().max(f64::MIN_POSITIVE);
        if off <= 1e-30 * scale {
            break;
        }
        for p in 0..r {
            for q in p + 1..r {
                let apq = a[p * r + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * r + q] - a[p * r + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..r {
                    let akp = a[k * r + p];
                    let akq = a[k * r + q];
                    a[k * r + p] = c * akp - s * akq;
                    a[k * r + q] = s * akp + c * akq;
                }
                for k in 0..r {
                    let apk = a[p * r + k];
                    let aqk = a[q * r + k];
                    a[p * r + k] = c * apk - s * aqk;
                    a[q * r + k] = s * apk + c * aqk;
                }
                for k in 0..r {
                    let vkp = v[k * r + p];
                    let vkq = v[k * r + q];
                    v[k * r + p] = c * vkp - s * vkq;
                    v[k * r + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..r).collect();
    order.sort_by(|&i, &j| a[j * r + j].total_cmp(&a[i * r + i]));
    let values = order.iter().map(|&i| a[i * r + i]).collect();
    let mut vectors = vec![0f64; r * r];
    for (new, &old) in order.iter().enumerate() {
        for k in 0..r {
            vectors[k * r + new] = v[k * r + old];
        }
    }
    (values, vectors)
}

/// What [`item_embeddings`] returns.
#[derive(Debug, Clone)]
pub struct SpectralEmbeddings {
    /// One unit-length vector of `dim` values per item (zero for items without
    /// training interactions).
    pub vectors: Vec<Vec<f32>>,
    /// The kept eigenvalues, descending (each in `[0, 1]`).
    pub eigenvalues: Vec<f64>,
    /// Per item: whether it has at least one training interaction.
    pub covered: Vec<bool>,
}

/// Spectral embeddings of `n_items` items from the training sequences `train` (one per
/// user; validation and test items must not be in them). See the module docs.
pub fn item_embeddings(
    train: &[&[ItemId]],
    n_items: usize,
    cfg: &SpectralConfig,
) -> Result<SpectralEmbeddings> {
    if cfg.dim == 0 || cfg.iters == 0 {
        return Err(Error::config(
            "spectral.dim/iters",
            format!(
                "must be positive (got dim {}, iters {})",
                cfg.dim, cfg.iters
            ),
        ));
    }
    let r = cfg.dim + 1 + cfg.oversample;
    if r > n_items {
        return Err(Error::config(
            "spectral.dim",
            format!("dim + 1 + oversample = {r} exceeds the {n_items} items of the catalogue"),
        ));
    }
    let g = Graph::new(train, n_items)?;
    let covered: Vec<bool> = g.degree.iter().map(|&d| d > 0).collect();
    let mut rng = Rng::new(cfg.seed);
    let mut x: Vec<f64> = (0..n_items * r).map(|_| rng.normal()).collect();
    orthonormalize(&mut x, n_items, r);
    for _ in 0..cfg.iters {
        x = g.apply(&x, r);
        orthonormalize(&mut x, n_items, r);
    }
    // Rayleigh-Ritz: B = X^T M X, B = V Λ V^T, eigenvectors X V.
    let mx = g.apply(&x, r);
    let mut b = vec![0f64; r * r];
    for i in 0..n_items {
        let xi = &x[i * r..(i + 1) * r];
        let mi = &mx[i * r..(i + 1) * r];
        for p in 0..r {
            for q in 0..r {
                b[p * r + q] += xi[p] * mi[q];
            }
        }
    }
    for p in 0..r {
        for q in p + 1..r {
            let s = 0.5 * (b[p * r + q] + b[q * r + p]);
            b[p * r + q] = s;
            b[q * r + p] = s;
        }
    }
    let (values, v) = symmetric_eigen(&b, r);
    let keep = 1..cfg.dim + 1;
    let vectors = (0..n_items)
        .map(|i| {
            let xi = &x[i * r..(i + 1) * r];
            let mut row: Vec<f64> = keep
                .clone()
                .map(|c| (0..r).map(|k| xi[k] * v[k * r + c]).sum())
                .collect();
            let norm = row.iter().map(|z| z * z).sum::<f64>().sqrt();
            if g.degree[i] == 0 || norm < 1e-12 {
                row.iter_mut().for_each(|z| *z = 0.0);
            } else {
                row.iter_mut().for_each(|z| *z /= norm);
            }
            row.into_iter().map(|z| z as f32).collect()
        })
        .collect();
    Ok(SpectralEmbeddings {
        vectors,
        eigenvalues: values[keep].to_vec(),
        covered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_finds_known_eigenpairs() {
        // [[2, 1], [1, 2]]: eigenvalues 3 and 1, vectors (1, 1)/√2 and (1, -1)/√2.
        let (vals, vecs) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((vals[0] - 3.0).abs() < 1e-12 && (vals[1] - 1.0).abs() < 1e-12);
        let h = std::f64::consts::FRAC_1_SQRT_2;
        assert!((vecs[0].abs() - h).abs() < 1e-12 && (vecs[2].abs() - h).abs() < 1e-12);
        assert!(vecs[0] * vecs[2] > 0.0, "first vector is (1, 1)");
        assert!(vecs[1] * vecs[3] < 0.0, "second vector is (1, -1)");
        // A diagonal matrix sorts its entries.
        let (vals, _) = symmetric_eigen(&[1.0, 0.0, 0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 3.0], 3);
        assert_eq!(vals, vec![5.0, 3.0, 1.0]);
    }

    /// Two communities of items joined by one bridging user, plus an item no one
    /// trained on: the first kept eigenvector separates the communities by sign.
    #[test]
    fn first_vector_splits_two_communities_and_cold_items_are_zero() {
        let mut train: Vec<Vec<ItemId>> = Vec::new();
        for u in 0..10u32 {
            train.push((0..4).map(|k| (u + k) % 6).collect());
            train.push((0..4).map(|k| 6 + (u + k) % 6).collect());
        }
        train.push(vec![5, 6]);
        let seqs: Vec<&[ItemId]> = train.iter().map(|v| v.as_slice()).collect();
        let cfg = SpectralConfig {
            dim: 1,
            oversample: 4,
            iters: 30,
            seed: 7,
        };
        let e = item_embeddings(&seqs, 13, &cfg).unwrap();
        assert_eq!(e.covered.iter().filter(|&&c| c).count(), 12);
        assert!(!e.covered[12]);
        assert_eq!(e.vectors[12], vec![0.0]);
        let sign_a = e.vectors[0][0].signum();
        for i in 0..12 {
            let v = e.vectors[i][0];
            assert!(
                (v.abs() - 1.0).abs() < 1e-5,
                "item {i}: unit length, got {v}"
            );
            let want = if i < 6 { sign_a } else { -sign_a };
            assert_eq!(v.signum(), want, "item {i} on the wrong side");
        }
        // The bridge is weak: the kept eigenvalue is just below the trivial 1.
        assert!(
            e.eigenvalues[0] > 0.8 && e.eigenvalues[0] < 1.0,
            "{:?}",
            e.eigenvalues
        );
        // Same seed, same vectors.
        assert_eq!(item_embeddings(&seqs, 13, &cfg).unwrap().vectors, e.vectors);
        // Bad input is an error, not a panic.
        assert!(item_embeddings(&[&[13]], 13, &cfg).is_err());
        assert!(
            item_embeddings(
                &seqs,
                13,
                &SpectralConfig {
                    dim: 20,
                    ..cfg.clone()
                }
            )
            .is_err()
        );
    }
}
