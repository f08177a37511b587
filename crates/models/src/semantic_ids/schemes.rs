//! The Semantic-ID schemes other than the RQ-VAE: random codes, LSH and RQ-KMeans.

use llmrec_core::{Error, Result, Rng};

use super::kmeans::{kmeans_plus_plus, nearest_centroid};
use super::{IdScheme, SemanticIds, standardize};

/// Random IDs: every level's code uniform in `0..codebook_size`, seeded.
pub fn random_ids(
    n_items: usize,
    levels: usize,
    codebook_size: usize,
    seed: u64,
) -> Result<SemanticIds> {
    if codebook_size == 0 {
        return Err(Error::config("codebook_size", "must be positive"));
    }
    let mut rng = Rng::new(seed);
    let prefix: Vec<Vec<u16>> = (0..n_items)
        .map(|_| {
            (0..levels)
                .map(|_| rng.index(codebook_size) as u16)
                .collect()
        })
        .collect();
    SemanticIds::from_prefix_codes(
        IdScheme::Random,
        &prefix,
        levels,
        codebook_size,
        seed,
        serde_json::json!({"levels": levels, "codebook_size": codebook_size}),
    )
}

/// LSH IDs: on the standardised embeddings, level `l` hashes each item with
/// `ceil(log2(codebook_size))` random Gaussian hyperplanes (sign bits), taken modulo
/// `codebook_size`. Every level has its own hyperplanes. Seeded.
pub fn lsh_ids(
    embeddings: &[Vec<f32>],
    levels: usize,
    codebook_size: usize,
    seed: u64,
) -> Result<SemanticIds> {
    if codebook_size < 2 {
        return Err(Error::config("codebook_size", "must be at least 2 for LSH"));
    }
    let x = standardize(embeddings)?;
    let dim = x[0].len();
    let bits = usize::BITS - (codebook_size - 1).leading_zeros();
    let mut rng = Rng::new(seed);
    let planes: Vec<Vec<Vec<f32>>> = (0..levels)
        .map(|_| {
            (0..bits)
                .map(|_| (0..dim).map(|_| rng.normal() as f32).collect())
                .collect()
        })
        .collect();
    let prefix: Vec<Vec<u16>> = x
        .iter()
        .map(|e| {
            planes
                .iter()
                .map(|level| {
                    let mut code = 0usize;
                    for (b, p) in level.iter().enumerate() {
                        let dot: f32 = p.iter().zip(e).map(|(a, b)| a * b).sum();
                        if dot > 0.0 {
                            code |= 1 << b;
                        }
                    }
                    (code % codebook_size) as u16
                })
                .collect()
        })
        .collect();
    SemanticIds::from_prefix_codes(
        IdScheme::Lsh,
        &prefix,
        levels,
        codebook_size,
        seed,
        serde_json::json!({"levels": levels, "codebook_size": codebook_size, "hyperplanes_per_level": bits}),
    )
}

/// RQ-KMeans IDs: on the standardised embeddings, level 0 runs k-means with
/// `codebook_size` centroids ([`kmeans_plus_plus`], `iters` Lloyd
/// iterations). Each item takes its nearest centroid as its code, and the residual
/// (embedding minus centroid) goes on to the next level. Seeded: the same embeddings,
/// shape, `iters` and `seed` give the same table.
pub fn rq_kmeans_ids(
    embeddings: &[Vec<f32>],
    levels: usize,
    codebook_size: usize,
    iters: usize,
    seed: u64,
) -> Result<SemanticIds> {
    if codebook_size == 0 || codebook_size > u16::MAX as usize || iters == 0 {
        return Err(Error::config(
            "rq-kmeans",
            "codebook_size must be in 1..=65535 and kmeans_iters positive",
        ));
    }
    let x = standardize(embeddings)?;
    let dim = x[0].len();
    let mut residual: Vec<f32> = x.concat();
    let n = x.len();
    let mut prefix = vec![Vec::with_capacity(levels); n];
    let mut rng = Rng::new(seed);
    for _ in 0..levels {
        let centroids = kmeans_plus_plus(&residual, dim, codebook_size, iters, &mut rng);
        for (i, codes) in prefix.iter_mut().enumerate() {
            let r = &mut residual[i * dim..(i + 1) * dim];
            let code = nearest_centroid(&centroids, dim, r);
            for (v, c) in r.iter_mut().zip(&centroids[code * dim..(code + 1) * dim]) {
                *v -= c;
            }
            codes.push(code as u16);
        }
    }
    SemanticIds::from_prefix_codes(
        IdScheme::RqKmeans,
        &prefix,
        levels,
        codebook_size,
        seed,
        serde_json::json!({"levels": levels, "codebook_size": codebook_size, "kmeans_iters": iters, "standardize": true}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baselines_have_the_same_shape_and_are_seeded() {
        let mut rng = Rng::new(1);
        let emb: Vec<Vec<f32>> = (0..300)
            .map(|_| (0..16).map(|_| rng.normal() as f32).collect())
            .collect();
        for ids in [
            random_ids(300, 3, 16, 7).unwrap(),
            lsh_ids(&emb, 3, 16, 7).unwrap(),
        ] {
            ids.validate().unwrap();
            assert_eq!(ids.depth(), 4);
            assert_eq!(ids.n_items(), 300);
            assert!(ids.usage.iter().all(|&u| u > 0.5), "{:?}", ids.usage);
        }
        assert_eq!(
            lsh_ids(&emb, 3, 16, 7).unwrap(),
            lsh_ids(&emb, 3, 16, 7).unwrap()
        );
        assert_ne!(
            random_ids(300, 3, 16, 7).unwrap(),
            random_ids(300, 3, 16, 8).unwrap()
        );
    }
}
