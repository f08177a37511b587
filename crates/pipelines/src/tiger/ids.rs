//! Step 1: the Semantic-ID table of a dataset, optionally with collaborative fusion.

use std::path::Path;

use llmrec_core::io::{write_atomic, write_json, write_with};
use llmrec_core::plot::{Series, chart};
use llmrec_core::{Dataset, Error, Result};
use llmrec_models::semantic_ids::rqvae::{self, EpochStats, RqVaeReport};
use llmrec_models::semantic_ids::spectral;
use llmrec_models::semantic_ids::{self, IdScheme, SemanticIds};
use serde::{Deserialize, Serialize};

use super::*;

/// Settings of the Semantic-ID step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdsConfig {
    /// Which IDs: `rq-vae` (default), `rq-kmeans`, `random` or `lsh`.
    pub scheme: IdScheme,
    /// RQ-VAE settings. Its `model.levels`, `model.codebook_size` and `seed` also shape
    /// the baselines, so every scheme has the same shape.
    pub rqvae: rqvae::RqVaeTrainConfig,
    /// Return an error (after writing the run folder) when the RQ-VAE's codebook usage
    /// is below `rqvae.min_usage` on some level. Default true.
    pub fail_on_collapse: bool,
    /// Device for the RQ-VAE (`cpu`, `cuda`, `cuda:N`). Default `cpu`.
    pub device: String,
    /// Collaborative vectors fused into the text embeddings before the RQ-VAE (off by
    /// default, which is the paper's text-only TIGER).
    pub collab: CollabConfig,
}

impl Default for IdsConfig {
    fn default() -> Self {
        IdsConfig {
            scheme: IdScheme::RqVae,
            rqvae: rqvae::RqVaeTrainConfig::default(),
            fail_on_collapse: true,
            device: "cpu".into(),
            collab: CollabConfig::default(),
        }
    }
}

/// Fusion of collaborative signal into the RQ-VAE's input (`ids.collab`): spectral item
/// vectors of the **training** user-item graph of the leave-one-out split
/// ([`llmrec_models::semantic_ids::spectral`]) are standardised, weighted and appended to the
/// standardised text embeddings, and the RQ-VAE runs on the result without a second
/// standardisation. Items without training interactions (cold start) get the mean,
/// i.e. zeros, in the collaborative part, so their IDs come from their text alone. This
/// is an extension in the spirit of LETTER and of P5's collaborative indexing, not
/// part of the TIGER paper; results with it must say so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CollabConfig {
    /// Share of the fused vector's variance that is collaborative, in `[0, 1)`; 0 turns
    /// the fusion off. Default 0.
    pub share: f64,
    /// The spectral embedding.
    pub spectral: spectral::SpectralConfig,
}

impl Default for CollabConfig {
    fn default() -> Self {
        CollabConfig {
            share: 0.0,
            spectral: spectral::SpectralConfig::default(),
        }
    }
}

/// What the fusion did, written to `collab_report.json`.
#[derive(Debug, Clone, Serialize)]
struct CollabReport {
    share: f64,
    /// Factor on each standardised collaborative dimension.
    weight: f64,
    /// Items with training interactions (the others get zeros).
    covered: usize,
    items: usize,
    eigenvalues: Vec<f64>,
}

/// Standardised text plus `weight ×` standardised collaborative vectors (see
/// [`CollabConfig`]). Text is standardised only when `standardize_text`.
fn fuse(
    text: &[Vec<f32>],
    cf: &[Vec<f32>],
    covered: &[bool],
    share: f64,
    standardize_text: bool,
) -> Result<(Vec<Vec<f32>>, f64)> {
    llmrec_core::check::unit_interval("ids.collab.share", share)?;
    let d_text = semantic_ids::check_embeddings(text)?;
    let d_cf = semantic_ids::check_embeddings(cf)?;
    let text = if standardize_text {
        semantic_ids::standardize(text)?
    } else {
        text.to_vec()
    };
    let known: Vec<Vec<f32>> = cf
        .iter()
        .zip(covered)
        .filter(|(_, c)| **c)
        .map(|(v, _)| v.clone())
        .collect();
    if known.is_empty() {
        return Err(Error::Invalid(
            "ids.collab: no item has a training interaction".into(),
        ));
    }
    let st = semantic_ids::Standardization::fit(&known)?;
    let weight = (share / (1.0 - share) * d_text as f64 / d_cf as f64).sqrt();
    let fused = text
        .into_iter()
        .zip(cf)
        .zip(covered)
        .map(|((mut t, c), &cov)| {
            if cov {
                let z = st.apply(std::slice::from_ref(c))?;
                t.extend(z[0].iter().map(|x| (*x as f64 * weight) as f32));
            } else {
                t.extend(std::iter::repeat_n(0.0, d_cf));
            }
            Ok(t)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((fused, weight))
}

/// Result of [`semantic_ids`].
#[derive(Debug, Clone)]
pub struct IdsOutput {
    /// The table (already checked and tied to the dataset).
    pub ids: SemanticIds,
    /// The RQ-VAE run, for the `rq-vae` scheme.
    pub report: Option<RqVaeReport>,
}

/// Makes the Semantic-ID table of `dataset` from one embedding per item (dense item
/// order; e.g. MiniLM vectors of [`llmrec_core::ItemText::to_text`]).
///
/// `progress` sees every RQ-VAE epoch. With `run_dir`, writes the files listed in the
/// module docs there.
pub fn semantic_ids(
    dataset: &Dataset,
    embeddings: &[Vec<f32>],
    cfg: &IdsConfig,
    run_dir: Option<&Path>,
    progress: &mut dyn FnMut(&EpochStats),
) -> Result<IdsOutput> {
    if embeddings.len() != dataset.n_items() {
        return Err(Error::Invalid(format!(
            "{} embeddings for {} items of `{}`",
            embeddings.len(),
            dataset.n_items(),
            dataset.name
        )));
    }
    if let Some(d) = run_dir {
        mkdir(d)?;
        write_json(&d.join("ids_config.json"), cfg)?;
    }
    let levels = cfg.rqvae.model.levels;
    let k = cfg.rqvae.model.codebook_size;
    let seed = cfg.rqvae.seed;
    let mut rqvae_cfg = cfg.rqvae.clone();
    let mut collab = None;
    let fused;
    llmrec_core::check::unit_interval("ids.collab.share", cfg.collab.share)?;
    let embeddings = if cfg.collab.share > 0.0 {
        let dim = semantic_ids::check_embeddings(embeddings)?;
        if dim != cfg.rqvae.model.input_dim {
            return Err(Error::config(
                "ids.rqvae.model.input_dim",
                format!(
                    "is {}, but the item embeddings have {dim} dimensions",
                    cfg.rqvae.model.input_dim
                ),
            ));
        }
        if cfg.scheme != IdScheme::RqVae {
            return Err(Error::config(
                "ids.collab.share",
                format!(
                    "collaborative fusion needs the rq-vae scheme, not {}",
                    cfg.scheme.label()
                ),
            ));
        }
        // Training part of the same leave-one-out split that training and evaluation
        // use: no validation or test item enters the graph.
        let split = llmrec_data::split::leave_one_out(dataset);
        let spec = spectral::item_embeddings(
            &split.train_sequences(),
            dataset.n_items(),
            &cfg.collab.spectral,
        )?;
        let (f, weight) = fuse(
            embeddings,
            &spec.vectors,
            &spec.covered,
            cfg.collab.share,
            cfg.rqvae.standardize,
        )?;
        fused = f;
        rqvae_cfg.standardize = false;
        rqvae_cfg.model.input_dim = fused[0].len();
        collab = Some(CollabReport {
            share: cfg.collab.share,
            weight,
            covered: spec.covered.iter().filter(|&&c| c).count(),
            items: dataset.n_items(),
            eigenvalues: spec.eigenvalues,
        });
        if let Some(d) = run_dir {
            write_json(&d.join("collab_report.json"), &collab)?;
        }
        &fused[..]
    } else {
        embeddings
    };
    let (mut ids, report) = match cfg.scheme {
        IdScheme::Random => (
            semantic_ids::random_ids(dataset.n_items(), levels, k, seed)?,
            None,
        ),
        IdScheme::Lsh => (semantic_ids::lsh_ids(embeddings, levels, k, seed)?, None),
        IdScheme::RqKmeans => (
            semantic_ids::rq_kmeans_ids(embeddings, levels, k, cfg.rqvae.kmeans_iters, seed)?,
            None,
        ),
        IdScheme::RqVae => {
            let dev = llmrec_models::parse_device(&cfg.device)?;
            let mut epochs = Vec::new();
            let trained = rqvae::train(embeddings, &rqvae_cfg, &dev, &mut |s| {
                progress(s);
                epochs.push(s.clone());
                if let Some(d) = run_dir {
                    // Best effort mid-run; the final write below reports errors.
                    let _ = jsonl(&epochs)
                        .and_then(|b| write_atomic(&d.join("rqvae_metrics.jsonl"), &b));
                }
            })?;
            if let Some(d) = run_dir {
                write_atomic(
                    &d.join("rqvae_metrics.jsonl"),
                    &jsonl(&trained.report.epochs)?,
                )?;
                write_json(&d.join("rqvae_report.json"), &trained.report)?;
                write_atomic(&d.join("rqvae.svg"), rqvae_plot(&trained.report).as_bytes())?;
                if let Some(st) = &trained.standardization {
                    write_json(&d.join("rqvae_standardization.json"), st)?;
                }
                write_with(&d.join("rqvae.safetensors"), |tmp| {
                    trained.varmap.save(tmp).map_err(|e| {
                        llmrec_models::checkpoint::artifact(
                            tmp,
                            format!("cannot write RQ-VAE weights: {e}"),
                        )
                    })
                })?;
            }
            (trained.semantic_ids()?, Some(trained.report))
        }
    };
    if let (Some(c), serde_json::Value::Object(m)) = (&collab, &mut ids.config) {
        m.insert(
            "collab".into(),
            serde_json::json!({"config": cfg.collab, "report": c}),
        );
    }
    let ids = ids.for_dataset(dataset);
    ids.validate()?;
    if let Some(d) = run_dir {
        ids.save(&d.join("semantic_ids.json"))?;
    }
    if cfg.fail_on_collapse
        && let Some(r) = &report
        && let Some(why) = &r.failure
    {
        return Err(Error::model("rq-vae", format!("run failed: {why}")));
    }
    Ok(IdsOutput { ids, report })
}

fn rqvae_plot(r: &RqVaeReport) -> String {
    let levels = r.usage.len();
    let names: Vec<String> = (0..levels).map(|l| format!("usage L{l}")).collect();
    let mut series: Vec<Series<'_>> = vec![Series {
        name: "recon loss",
        points: r
            .epochs
            .iter()
            .map(|e| (e.epoch as f64, e.recon_loss))
            .collect(),
    }];
    for (l, name) in names.iter().enumerate() {
        series.push(Series {
            name,
            points: r
                .epochs
                .iter()
                .map(|e| (e.epoch as f64, e.usage.get(l).copied().unwrap_or(f64::NAN)))
                .collect(),
        });
    }
    series.push(Series {
        name: "collision rate",
        points: r
            .epochs
            .iter()
            .map(|e| (e.epoch as f64, e.collision_rate))
            .collect(),
    });
    chart(
        "RQ-VAE: reconstruction loss and codebook usage",
        "epoch",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text columns come out standardised, the collaborative column has mean 0 and
    /// variance `weight²` over covered items, so its share of the variance is `share`;
    /// an uncovered item gets 0 there.
    #[test]
    fn fusion_weights_the_collaborative_part_by_its_share() {
        let text = vec![
            vec![1.0, 10.0],
            vec![2.0, 20.0],
            vec![3.0, 30.0],
            vec![4.0, 40.0],
        ];
        let cf = vec![vec![1.0], vec![-1.0], vec![3.0], vec![0.0]];
        let covered = [true, true, true, false];
        let (f, w) = fuse(&text, &cf, &covered, 0.5, true).unwrap();
        assert!((w - 2f64.sqrt()).abs() < 1e-12);
        assert_eq!(f[3][2], 0.0);
        let col = |j: usize, n: usize| -> (f64, f64) {
            let xs: Vec<f64> = f[..n].iter().map(|r| r[j] as f64).collect();
            let m = xs.iter().sum::<f64>() / n as f64;
            (
                m,
                xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n as f64,
            )
        };
        for j in 0..2 {
            let (m, v) = col(j, 4);
            assert!(
                m.abs() < 1e-6 && (v - 1.0).abs() < 1e-5,
                "text column {j}: {m} {v}"
            );
        }
        let (m, v) = col(2, 3);
        assert!(
            m.abs() < 1e-6 && (v - 2.0).abs() < 1e-5,
            "collaborative column: {m} {v}"
        );
        // Shares outside [0, 1) are errors.
        assert!(fuse(&text, &cf, &covered, 1.0, true).is_err());
        assert!(fuse(&text, &cf, &[false; 4], 0.5, true).is_err());
    }
}
