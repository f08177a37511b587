//! Semantic-ID tables (TIGER, Rajput et al. 2023): every item is a short tuple of
//! codewords, `levels` codes in `0..codebook_size` plus one collision token that makes
//! colliding tuples unique.
//!
//! This module holds the table, its versioned JSON artifact, the collision token
//! ([`dedup`]) and the input standardisation. The schemes that make tables live beside
//! it: [`rqvae`] (the paper's residual-quantised VAE), [`schemes`] (the ablation's
//! random and LSH IDs, and RQ-KMeans), [`kmeans`] (their clustering) and [`spectral`]
//! (collaborative item vectors of the training graph, for the optional fusion).

pub mod kmeans;
pub mod rqvae;
pub mod schemes;
pub mod spectral;

pub use schemes::{lsh_ids, random_ids, rq_kmeans_ids};

use std::collections::HashMap;
use std::path::Path;

use llmrec_core::{Dataset, Error, Result};
use serde::{Deserialize, Serialize};

/// Version of the Semantic-ID artifact format written by this build. Other versions
/// are refused.
pub const SEMANTIC_IDS_VERSION: u32 = 1;

/// How a table's codes were made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdScheme {
    /// Residual-quantised VAE codes of the item text embeddings (TIGER).
    RqVae,
    /// Uniformly random codes (the paper's "random IDs" ablation).
    Random,
    /// Locality-sensitive hashing with random hyperplanes (the paper's "LSH" ablation).
    Lsh,
    /// Residual k-means on the standardised embeddings, without an autoencoder: level
    /// `l` clusters what the levels above left over (RQ-KMeans, as in OneRec).
    RqKmeans,
}

impl IdScheme {
    /// Short name (`rq-vae`, `random`, `lsh`, `rq-kmeans`).
    pub fn label(&self) -> &'static str {
        match self {
            IdScheme::RqVae => "rq-vae",
            IdScheme::Random => "random",
            IdScheme::Lsh => "lsh",
            IdScheme::RqKmeans => "rq-kmeans",
        }
    }
}

/// A Semantic-ID table: `codes[item]` has `levels + 1` entries, the semantic codes
/// (each `< codebook_size`) and the collision token (`< collision_size`).
///
/// Invariant (checked by [`SemanticIds::validate`]): every item's tuple is unique.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemanticIds {
    /// Artifact format version ([`SEMANTIC_IDS_VERSION`]).
    pub format_version: u32,
    /// How the codes were made.
    pub scheme: IdScheme,
    /// Number of semantic levels (3 in the paper).
    pub levels: usize,
    /// Codes per level (256 in the paper).
    pub codebook_size: usize,
    /// Number of distinct collision tokens needed (largest collision group size).
    pub collision_size: usize,
    /// Seed that reproduces the table (with the config and the same embeddings).
    pub seed: u64,
    /// The generator's settings, as JSON (the RQ-VAE config, or the baseline's shape).
    pub config: serde_json::Value,
    /// Dataset the table was made for.
    pub dataset_name: String,
    /// [`Dataset::fingerprint`] of that dataset.
    pub dataset_fingerprint: String,
    /// Fraction of codes used on each level (RQ-VAE health; 1.0 is every code).
    pub usage: Vec<f64>,
    /// Fraction of items whose `levels`-tuple collided with another item's before
    /// the collision token was added.
    pub collision_rate: f64,
    /// Per item (dense id order): `levels` codes then the collision token.
    pub codes: Vec<Vec<u16>>,
}

use crate::checkpoint::artifact;

impl SemanticIds {
    /// Builds a table from `levels`-tuples: adds the collision token ([`dedup`]) and
    /// computes usage and collision statistics.
    pub fn from_prefix_codes(
        scheme: IdScheme,
        prefix: &[Vec<u16>],
        levels: usize,
        codebook_size: usize,
        seed: u64,
        config: serde_json::Value,
    ) -> Result<Self> {
        if levels == 0 || codebook_size == 0 || codebook_size > u16::MAX as usize {
            return Err(Error::Invalid(format!(
                "semantic ids: need levels > 0 and 0 < codebook_size <= 65535, got {levels} and {codebook_size}"
            )));
        }
        if let Some((i, c)) = prefix
            .iter()
            .enumerate()
            .find(|(_, c)| c.len() != levels || c.iter().any(|&x| x as usize >= codebook_size))
        {
            return Err(Error::Invalid(format!(
                "semantic ids: item {i} has codes {c:?}; expected {levels} codes below {codebook_size}"
            )));
        }
        let (codes, collision_size) = dedup(prefix);
        let collided = codes.iter().filter(|c| c[levels] > 0).count();
        let groups_with_dups: usize = {
            let mut seen: HashMap<&[u16], usize> = HashMap::new();
            for c in prefix {
                *seen.entry(c.as_slice()).or_default() += 1;
            }
            seen.values().filter(|&&n| n > 1).count()
        };
        let collision_rate = if prefix.is_empty() {
            0.0
        } else {
            (collided + groups_with_dups) as f64 / prefix.len() as f64
        };
        let usage = code_usage(prefix, levels, codebook_size);
        Ok(SemanticIds {
            format_version: SEMANTIC_IDS_VERSION,
            scheme,
            levels,
            codebook_size,
            collision_size,
            seed,
            config,
            dataset_name: String::new(),
            dataset_fingerprint: String::new(),
            usage,
            collision_rate,
            codes,
        })
    }

    /// What made the table, for result records: scheme, seed, the generator's settings,
    /// shape and health (everything but the codes).
    pub fn provenance(&self) -> serde_json::Value {
        serde_json::json!({
            "scheme": self.scheme.label(),
            "seed": self.seed,
            "config": self.config,
            "levels": self.levels,
            "codebook_size": self.codebook_size,
            "collision_size": self.collision_size,
            "collision_rate": self.collision_rate,
            "usage": self.usage,
        })
    }

    /// Records the dataset the table belongs to.
    pub fn for_dataset(mut self, dataset: &Dataset) -> Self {
        self.dataset_name = dataset.name.clone();
        self.dataset_fingerprint = dataset.fingerprint();
        self
    }

    /// Number of items.
    pub fn n_items(&self) -> usize {
        self.codes.len()
    }

    /// Tokens per item (`levels + 1`).
    pub fn depth(&self) -> usize {
        self.levels + 1
    }

    /// Checks shapes, ranges and uniqueness.
    pub fn validate(&self) -> Result<()> {
        let depth = self.depth();
        let mut seen = HashMap::with_capacity(self.codes.len());
        for (i, c) in self.codes.iter().enumerate() {
            if c.len() != depth {
                return Err(Error::Invalid(format!(
                    "semantic ids: item {i} has {} tokens, expected {depth}",
                    c.len()
                )));
            }
            if c[..self.levels]
                .iter()
                .any(|&x| x as usize >= self.codebook_size)
                || c[self.levels] as usize >= self.collision_size.max(1)
            {
                return Err(Error::Invalid(format!(
                    "semantic ids: item {i} has out-of-range codes {c:?}"
                )));
            }
            if let Some(j) = seen.insert(c.as_slice(), i) {
                return Err(Error::Invalid(format!(
                    "semantic ids: items {j} and {i} share the id {c:?}"
                )));
            }
        }
        Ok(())
    }

    /// Refuses a table made for another dataset.
    pub fn check_dataset(&self, dataset: &Dataset, path: &Path) -> Result<()> {
        let fp = dataset.fingerprint();
        if self.dataset_fingerprint != fp {
            return Err(artifact(
                path,
                format!(
                    "semantic ids made for dataset `{}` (fingerprint {}), but the data given is `{}` (fingerprint {fp})",
                    self.dataset_name, self.dataset_fingerprint, dataset.name
                ),
            ));
        }
        if self.n_items() != dataset.n_items() {
            return Err(artifact(
                path,
                format!(
                    "{} items in the table, {} in the dataset",
                    self.n_items(),
                    dataset.n_items()
                ),
            ));
        }
        Ok(())
    }

    /// Writes the table as JSON through a temp file and a rename.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self)
            .map_err(|e| Error::Invalid(format!("semantic ids: json: {e}")))?;
        llmrec_core::io::write_atomic(path, &bytes)
    }

    /// Reads a table, refusing other format versions and corrupt or inconsistent files
    /// with [`Error::Artifact`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| artifact(path, format!("not a valid Semantic-ID JSON file: {e}")))?;
        match value.get("format_version").and_then(|v| v.as_u64()) {
            Some(v) if v == SEMANTIC_IDS_VERSION as u64 => {}
            Some(v) => {
                return Err(artifact(
                    path,
                    format!(
                        "Semantic-ID format version {v} is not supported by this build (expected {SEMANTIC_IDS_VERSION}); regenerate it with `llmrec tiger semantic-ids`"
                    ),
                ));
            }
            None => {
                return Err(artifact(
                    path,
                    "no `format_version`: not an llmrec Semantic-ID table",
                ));
            }
        }
        let ids: SemanticIds = serde_json::from_value(value)
            .map_err(|e| artifact(path, format!("invalid Semantic-ID table: {e}")))?;
        ids.validate().map_err(|e| artifact(path, e.to_string()))?;
        Ok(ids)
    }
}

/// Appends the collision token: items sharing a tuple get 0, 1, 2, ... in item order.
/// Returns the codes and the number of collision tokens needed (at least 1).
pub fn dedup(prefix: &[Vec<u16>]) -> (Vec<Vec<u16>>, usize) {
    let mut count: HashMap<&[u16], u16> = HashMap::with_capacity(prefix.len());
    let mut max = 0u16;
    let codes = prefix
        .iter()
        .map(|c| {
            let n = count.entry(c.as_slice()).or_default();
            let mut out = c.clone();
            out.push(*n);
            max = max.max(*n);
            *n = n.saturating_add(1);
            out
        })
        .collect();
    (codes, max as usize + 1)
}

/// Fraction of the `codebook_size` codes used on each level, relative to the most that
/// `prefix.len()` items could use.
pub fn code_usage(prefix: &[Vec<u16>], levels: usize, codebook_size: usize) -> Vec<f64> {
    let possible = codebook_size.min(prefix.len()).max(1);
    (0..levels)
        .map(|l| {
            let mut used = vec![false; codebook_size];
            for c in prefix {
                if let Some(u) = c.get(l).and_then(|&x| used.get_mut(x as usize)) {
                    *u = true;
                }
            }
            used.iter().filter(|&&u| u).count() as f64 / possible as f64
        })
        .collect()
}

/// Per-dimension standardisation statistics of a table of vectors: `x' = (x - mean) * scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    /// Mean of each dimension.
    pub mean: Vec<f32>,
    /// One over the standard deviation of each dimension (1 where it is zero).
    pub scale: Vec<f32>,
}

impl Standardization {
    /// The statistics of `embeddings`. Errors on ragged or empty input.
    pub fn fit(embeddings: &[Vec<f32>]) -> Result<Self> {
        let dim = check_embeddings(embeddings)?;
        let n = embeddings.len() as f64;
        let mut mean = vec![0f64; dim];
        for e in embeddings {
            for (m, &x) in mean.iter_mut().zip(e) {
                *m += x as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n);
        let mut var = vec![0f64; dim];
        for e in embeddings {
            for ((v, &x), m) in var.iter_mut().zip(e).zip(&mean) {
                *v += (x as f64 - m).powi(2);
            }
        }
        let scale = var
            .iter()
            .map(|v| {
                let sd = (v / n).sqrt();
                if sd > 1e-12 { (1.0 / sd) as f32 } else { 1.0 }
            })
            .collect();
        Ok(Standardization {
            mean: mean.into_iter().map(|m| m as f32).collect(),
            scale,
        })
    }

    /// Standardises `embeddings` (of the fitted dimension) with these statistics.
    pub fn apply(&self, embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
        let dim = check_embeddings(embeddings)?;
        if dim != self.mean.len() {
            return Err(Error::Invalid(format!(
                "standardisation fitted on dimension {} applied to dimension {dim}",
                self.mean.len()
            )));
        }
        Ok(embeddings
            .iter()
            .map(|e| {
                e.iter()
                    .zip(&self.mean)
                    .zip(&self.scale)
                    .map(|((&x, m), s)| (x - m) * s)
                    .collect()
            })
            .collect())
    }
}

/// Per-dimension standardisation (zero mean, unit variance) of a table of vectors.
/// Dimensions with zero variance are centred only. Errors on ragged or empty input.
pub fn standardize(embeddings: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    Standardization::fit(embeddings)?.apply(embeddings)
}

/// Checks that `embeddings` is a non-empty table of equal-length finite vectors;
/// returns the dimension.
pub fn check_embeddings(embeddings: &[Vec<f32>]) -> Result<usize> {
    let dim = embeddings.first().map(|e| e.len()).unwrap_or(0);
    if dim == 0 {
        return Err(Error::Invalid(
            "embeddings: expected a non-empty table of non-empty vectors".into(),
        ));
    }
    for (i, e) in embeddings.iter().enumerate() {
        if e.len() != dim {
            return Err(Error::Invalid(format!(
                "embeddings: item {i} has dimension {}, item 0 has {dim}",
                e.len()
            )));
        }
        if e.iter().any(|x| !x.is_finite()) {
            return Err(Error::Invalid(format!(
                "embeddings: item {i} has a non-finite value"
            )));
        }
    }
    Ok(dim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardization_is_fitted_once_and_reapplied() {
        let x = vec![
            vec![1.0, 5.0, 2.0],
            vec![3.0, 5.0, 4.0],
            vec![5.0, 5.0, 0.0],
        ];
        let st = Standardization::fit(&x).unwrap();
        assert_eq!(st.mean, vec![3.0, 5.0, 2.0]);
        // Population sd of (1, 3, 5) is sqrt(8/3); the constant column keeps scale 1.
        assert!((st.scale[0] - (3.0f32 / 8.0).sqrt()).abs() < 1e-6);
        assert_eq!(st.scale[1], 1.0);
        let z = st.apply(&x).unwrap();
        assert_eq!(z, standardize(&x).unwrap());
        assert_eq!(z[1], vec![0.0, 0.0, st.scale[2] * 2.0]);
        // A new item goes through the catalogue's statistics.
        let new = st.apply(&[vec![3.0, 6.0, 2.0]]).unwrap();
        assert_eq!(new[0], vec![0.0, 1.0, 0.0]);
        let err = st.apply(&[vec![1.0, 2.0]]).unwrap_err().to_string();
        assert!(
            err.contains("dimension 3") && err.contains("dimension 2"),
            "{err}"
        );
        let back: Standardization =
            serde_json::from_str(&serde_json::to_string(&st).unwrap()).unwrap();
        assert_eq!(back, st);
    }

    #[test]
    fn dedup_makes_ids_unique() {
        let prefix = vec![vec![1, 2], vec![1, 2], vec![3, 4], vec![1, 2]];
        let (codes, size) = dedup(&prefix);
        assert_eq!(size, 3);
        assert_eq!(codes[0], vec![1, 2, 0]);
        assert_eq!(codes[1], vec![1, 2, 1]);
        assert_eq!(codes[2], vec![3, 4, 0]);
        assert_eq!(codes[3], vec![1, 2, 2]);
    }
}
