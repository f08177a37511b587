//! Vector search behind one trait. [`ExactIndex`] scores every item (cosine) in
//! memory: the right choice for catalogues of a few thousand items.
//! [`QdrantEdgeIndex`] keeps the vectors in an embedded Qdrant shard on disk;
//! [`QdrantIndex`] uses a Qdrant server or cluster. `[index] backend` picks one.

mod qdrant;
mod qdrant_edge;

pub use qdrant::QdrantIndex;
pub use qdrant_edge::QdrantEdgeIndex;

use llmrec_core::{Error, ItemId, Result};

/// Rows in `data` of width `dim`; an error when they do not divide evenly.
fn row_count(data: &[f32], dim: usize) -> Result<usize> {
    if dim == 0 || !data.len().is_multiple_of(dim) {
        return Err(Error::Invalid(format!(
            "{} values do not make rows of width {dim}",
            data.len()
        )));
    }
    Ok(data.len() / dim)
}

/// The `k` best of `hits` without `item` itself, best first, equal scores by
/// ascending id: the order every backend answers in.
fn best_k(hits: impl Iterator<Item = (ItemId, f32)>, item: ItemId, k: usize) -> Vec<(ItemId, f32)> {
    let mut out: Vec<(ItemId, f32)> = hits.filter(|&(i, _)| i != item).collect();
    out.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    out.truncate(k);
    out
}

/// Nearest items by text embedding.
pub trait VectorIndex: Send + Sync {
    /// The backend's name (`exact`, `qdrant-edge`, `qdrant`).
    fn name(&self) -> &str;

    /// Items indexed.
    fn len(&self) -> usize;

    /// Whether the index is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `k` items most similar to item `item` (never `item` itself), best
    /// first, as `(item, cosine)`; equal scores by ascending id.
    fn similar(&self, item: ItemId, k: usize) -> Result<Vec<(ItemId, f32)>>;
}

/// Exact cosine search over unit-normalised rows.
pub struct ExactIndex {
    dim: usize,
    rows: Vec<f32>,
}

impl ExactIndex {
    /// From row-major `data` of `dim`-wide rows (normalised here).
    pub fn new(data: Vec<f32>, dim: usize) -> Result<ExactIndex> {
        row_count(&data, dim)?;
        let mut rows = data;
        for r in rows.chunks_mut(dim) {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|x| *x /= n);
            }
        }
        Ok(ExactIndex { dim, rows })
    }
}

impl VectorIndex for ExactIndex {
    fn name(&self) -> &str {
        "exact"
    }

    fn len(&self) -> usize {
        self.rows.len() / self.dim
    }

    fn similar(&self, item: ItemId, k: usize) -> Result<Vec<(ItemId, f32)>> {
        let i = item as usize;
        if i >= self.len() {
            return Err(Error::Invalid(format!("item {item} is not indexed")));
        }
        let q = &self.rows[i * self.dim..(i + 1) * self.dim];
        let scored = self
            .rows
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(j, r)| (j as ItemId, q.iter().zip(r).map(|(a, b)| a * b).sum()));
        Ok(best_k(scored, item, k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_search_ranks_by_cosine_without_the_item() {
        let idx = ExactIndex::new(vec![1.0, 0.0, 2.0, 0.1, 0.0, 1.0, 1.0, 1.0], 2).unwrap();
        let s = idx.similar(0, 2).unwrap();
        assert_eq!(s.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
        assert!((s[0].1 - 2.0 / 4.01f32.sqrt()).abs() < 1e-6);
        assert!(idx.similar(4, 1).is_err());
        assert!(ExactIndex::new(vec![1.0; 3], 2).is_err());
    }
}
