//! k-means for the RQ-VAE's codebook initialisation and the RQ-KMeans scheme:
//! random or k-means++ starts, then Lloyd iterations.

use llmrec_core::Rng;

/// k-means on `n` points of dimension `d` (row-major), `k` centroids, seeded. Empty
/// clusters are re-seeded with random points. With fewer points than `k`, centroids are
/// points plus small noise. Starts from `k` distinct random points (the RQ-VAE's codebook
/// initialisation); [`kmeans_plus_plus`] starts better.
pub fn kmeans(points: &[f32], d: usize, k: usize, iters: usize, rng: &mut Rng) -> Vec<f32> {
    let n = points.len() / d.max(1);
    let mut c = vec![0f32; k * d];
    if n == 0 {
        return c;
    }
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    for j in 0..k {
        let p = order[j % n];
        for t in 0..d {
            let noise = if j >= n {
                0.01 * rng.normal() as f32
            } else {
                0.0
            };
            c[j * d + t] = points[p * d + t] + noise;
        }
    }
    if n <= k {
        return c;
    }
    lloyd(points, d, k, iters, c, rng)
}

/// k-means as [`kmeans`], but seeded by k-means++: each further starting centroid is a
/// point drawn with probability proportional to its squared distance from the nearest
/// centroid chosen so far. This keeps two starting centroids out of one tight cluster.
pub fn kmeans_plus_plus(
    points: &[f32],
    d: usize,
    k: usize,
    iters: usize,
    rng: &mut Rng,
) -> Vec<f32> {
    let n = points.len() / d.max(1);
    if n <= k {
        return kmeans(points, d, k, iters, rng);
    }
    let row = |i: usize| &points[i * d..(i + 1) * d];
    let dist = |a: &[f32], b: &[f32]| -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| ((x - y) * (x - y)) as f64)
            .sum()
    };
    let mut c = Vec::with_capacity(k * d);
    let first = rng.index(n);
    c.extend_from_slice(row(first));
    let mut nearest: Vec<f64> = (0..n).map(|i| dist(row(i), row(first))).collect();
    for _ in 1..k {
        let total: f64 = nearest.iter().sum();
        let pick = if total > 0.0 {
            let mut r = rng.next_f64() * total;
            let mut pick = n - 1;
            for (i, &w) in nearest.iter().enumerate() {
                if r < w {
                    pick = i;
                    break;
                }
                r -= w;
            }
            pick
        } else {
            // Every point sits on a centroid already.
            rng.index(n)
        };
        c.extend_from_slice(row(pick));
        for (i, m) in nearest.iter_mut().enumerate() {
            *m = m.min(dist(row(i), row(pick)));
        }
    }
    lloyd(points, d, k, iters, c, rng)
}

/// `iters` Lloyd iterations from the centroids `c`; empty clusters take a random point.
fn lloyd(
    points: &[f32],
    d: usize,
    k: usize,
    iters: usize,
    mut c: Vec<f32>,
    rng: &mut Rng,
) -> Vec<f32> {
    let n = points.len() / d.max(1);
    let mut assign = vec![0usize; n];
    for _ in 0..iters {
        for (i, a) in assign.iter_mut().enumerate() {
            *a = nearest_centroid(&c, d, &points[i * d..(i + 1) * d]);
        }
        let mut sum = vec![0f64; k * d];
        let mut cnt = vec![0usize; k];
        for (i, &a) in assign.iter().enumerate() {
            cnt[a] += 1;
            for t in 0..d {
                sum[a * d + t] += points[i * d + t] as f64;
            }
        }
        for j in 0..k {
            if cnt[j] == 0 {
                let p = rng.index(n);
                c[j * d..(j + 1) * d].copy_from_slice(&points[p * d..(p + 1) * d]);
            } else {
                for t in 0..d {
                    c[j * d + t] = (sum[j * d + t] / cnt[j] as f64) as f32;
                }
            }
        }
    }
    c
}

/// Index of the centroid (rows of `centroids`, each `dim` long) nearest to `p` in
/// squared Euclidean distance; the first one on ties.
pub(crate) fn nearest_centroid(centroids: &[f32], dim: usize, p: &[f32]) -> usize {
    let mut best = (f32::INFINITY, 0);
    for (j, c) in centroids.chunks_exact(dim).enumerate() {
        let d: f32 = c.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum();
        if d < best.0 {
            best = (d, j);
        }
    }
    best.1
}
