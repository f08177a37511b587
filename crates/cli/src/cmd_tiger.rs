//! `llmrec tiger semantic-ids | train | eval`: TIGER's generative retrieval.

use std::path::{Path, PathBuf};
use std::time::Instant;

use llmrec_core::{Dataset, Error, Result};
use llmrec_models::semantic_ids::{IdScheme, SemanticIds};
use llmrec_pipelines::tiger::{self, TigerRunConfig};

use crate::args::{TigerArgs, TigerCommand, TigerCommon};
use crate::config::load_toml;
use crate::output::{markdown_table, write_json};
use crate::progress;

/// Runs `llmrec tiger ...`.
pub fn run(cmd: &TigerCommand) -> Result<()> {
    match cmd {
        TigerCommand::SemanticIds(a) => {
            let (cfg, ds) = setup(&a.common)?;
            let root = root(&a.common, &ds, cfg.ids.scheme);
            semantic_ids(a, &cfg, &ds, &root).map(|_| ())
        }
        TigerCommand::Train(a) => {
            let (mut cfg, ds) = setup(&a.common)?;
            let mut root = root(&a.common, &ds, cfg.ids.scheme);
            if let Some(r) = &a.resume {
                cfg.train.resume_from = Some(r.clone());
                root = resume_root(r)?;
            }
            let given = a
                .ids
                .clone()
                .or_else(|| a.resume.as_ref().map(|r| r.join("semantic_ids.json")));
            let ids = match &given {
                Some(p) => {
                    let ids = SemanticIds::load(p)?;
                    ids.check_dataset(&ds, p)?;
                    ids
                }
                None => semantic_ids(a, &cfg, &ds, &root)?,
            };
            train_and_eval(&cfg, &ds, &ids, given.as_deref(), &root)
        }
        TigerCommand::Eval(a) => {
            let (cfg, ds) = setup(&a.common)?;
            let ckpt = a.checkpoint.as_ref().ok_or_else(|| {
                Error::config(
                    "--checkpoint",
                    "give the checkpoint folder of `tiger train`",
                )
            })?;
            let model = tiger::load_checkpoint(ckpt, &ds, &cfg.train.device)?;
            // The network and its IDs come from the checkpoint, not from `cfg`.
            let about = tiger::checkpoint_provenance(ckpt, &ds)?;
            let split = llmrec_data::split::leave_one_out(&ds);
            // Next to the checkpoint folder: `eval/` for test, `eval-valid/` for validation.
            let name = match cfg.eval.stage {
                llmrec_core::Stage::Test => "eval",
                llmrec_core::Stage::Valid => "eval-valid",
            };
            let dir = ckpt.parent().unwrap_or(Path::new(".")).join(name);
            evaluate(&cfg, &ds, &model, &split, &dir, about)
        }
        TigerCommand::Average(a) => {
            let ds = crate::setup::dataset_named(&a.dataset)?;
            let from = tiger::average_checkpoints(&a.checkpoints, &ds, &a.out)?;
            let epochs: Vec<String> = from.iter().map(|f| f.epoch.to_string()).collect();
            println!(
                "averaged {} checkpoints (epochs {}) into {}",
                from.len(),
                epochs.join(", "),
                a.out.display()
            );
            Ok(())
        }
    }
}

fn setup(a: &TigerCommon) -> Result<(TigerRunConfig, Dataset)> {
    let mut cfg: TigerRunConfig = load_toml(a.config.as_deref(), &a.run.set)?;
    if let Some(s) = &a.scheme {
        cfg.ids.scheme = match s.as_str() {
            "rq-vae" => IdScheme::RqVae,
            "lsh" => IdScheme::Lsh,
            "random" => IdScheme::Random,
            "rq-kmeans" => IdScheme::RqKmeans,
            _ => {
                return Err(Error::config(
                    "--scheme",
                    format!("expected rq-vae, rq-kmeans, lsh or random, got `{s}`"),
                ));
            }
        };
    }
    if let Some(d) = &a.run.device {
        cfg.train.device = d.clone();
        cfg.ids.device = d.clone();
    }
    if let Some(e) = a.run.epochs {
        cfg.train.epochs = e;
    }
    if let Some(s) = a.max_seconds {
        cfg.train.max_seconds = s;
    }
    Ok((cfg, crate::setup::dataset_named(&a.dataset)?))
}

fn root(a: &TigerCommon, ds: &Dataset, scheme: IdScheme) -> PathBuf {
    tiger::run_folder(&a.run.out, &ds.name, scheme)
}

/// The run folder of a resumed run, `RUN` of `RUN/train/last`: a resumed run goes on in
/// its own folder, whatever `--out` and the ID scheme say.
fn resume_root(last: &Path) -> Result<PathBuf> {
    let train = last
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "train"));
    train
        .and_then(Path::parent)
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            Error::config(
                "--resume",
                format!(
                    "expected a run's `.../train/last` folder, got `{}`",
                    last.display()
                ),
            )
        })
}

fn semantic_ids(
    a: &TigerArgs,
    cfg: &TigerRunConfig,
    ds: &Dataset,
    root: &Path,
) -> Result<SemanticIds> {
    let emb: Vec<Vec<f32>> = if cfg.ids.scheme == IdScheme::Random {
        vec![vec![0.0; cfg.ids.rqvae.model.input_dim]; ds.n_items()]
    } else {
        let path = a
            .embeddings
            .clone()
            .unwrap_or_else(|| crate::setup::default_embeddings_path(&ds.name));
        if !path.exists() {
            return Err(Error::Missing {
                what: format!("item embeddings of `{}`", ds.name),
                looked_in: path.display().to_string(),
                hint: format!(
                    "run `llmrec embed --dataset {}` first, or pass --embeddings FILE",
                    ds.name
                ),
            });
        }
        let t = llmrec_llm::read_embeddings(&path)?;
        let texts: Vec<String> = ds.item_text.iter().map(|t| t.to_text()).collect();
        t.check_matches(&path, &t.model_id, &texts)?;
        (0..t.len()).map(|i| t.row(i).to_vec()).collect()
    };
    let pb = progress::bar(cfg.ids.rqvae.epochs as u64, "rq-vae");
    let t = Instant::now();
    let out = tiger::semantic_ids(ds, &emb, &cfg.ids, Some(&root.join("ids")), &mut |s| {
        pb.set_position(s.epoch as u64);
        pb.set_message(format!("usage {:?}", s.usage));
    })?;
    pb.finish_and_clear();
    eprintln!(
        "semantic ids ({}): usage per level {:?}, collision rate {:.4} ({:.1}s); written under {}",
        out.ids.scheme.label(),
        out.ids.usage,
        out.ids.collision_rate,
        t.elapsed().as_secs_f64(),
        root.join("ids").display()
    );
    Ok(out.ids)
}

/// Trains on `ids` (read from `ids_file`, or made by this run's `ids` config when it is
/// `None`), then evaluates the best checkpoint.
fn train_and_eval(
    cfg: &TigerRunConfig,
    ds: &Dataset,
    ids: &SemanticIds,
    ids_file: Option<&Path>,
    root: &Path,
) -> Result<()> {
    cfg.select.validate(&cfg.train)?;
    let split = llmrec_data::split::leave_one_out(ds);
    let pb = progress::bar(0, "tiger");
    let (model, report) = tiger::train(
        ds,
        &split,
        ids,
        &cfg.train,
        &root.join("train"),
        &mut progress::training(&pb),
    )?;
    pb.finish_and_clear();
    eprintln!(
        "trained {} parameters; best epoch {}; stopped by {} after {:.0}s",
        report.parameters, report.best_epoch, report.stopped, report.seconds
    );
    let train_dir = root.join("train");
    if cfg.select.average_last.is_empty() {
        let mut about = tiger::provenance(
            &train_dir.join("best"),
            report.best_epoch,
            &cfg.train.model,
            &report.best_valid,
            ids,
        );
        about["semantic_ids_file"] = serde_json::json!(ids_file);
        return evaluate(cfg, ds, &model, &split, &train_dir, about);
    }
    // Choose on validation among `best/` and the averages, then test the choice once.
    let pb = progress::bar(0, "select");
    let n_valid = split.cases(llmrec_core::Stage::Valid).len() as u64;
    let selection = tiger::select(ds, &split, cfg, &train_dir, &|name, n| {
        if pb.length() != Some(n_valid) || pb.message() != name {
            pb.set_length(n_valid);
            pb.set_position(0);
            pb.set_message(name.to_string());
        }
        pb.inc(n as u64);
    })?;
    pb.finish_and_clear();
    let mut rows = Vec::new();
    for (i, c) in selection.candidates.iter().enumerate() {
        let epochs: Vec<String> = c.epochs.iter().map(|e| e.to_string()).collect();
        let mut row = vec![
            c.name.clone(),
            epochs.join(","),
            if i == selection.chosen {
                "chosen".into()
            } else {
                String::new()
            },
        ];
        row.extend(metric_cells(&cfg.eval.eval.ks, |m| c.valid.get(m).copied()));
        rows.push(row);
    }
    let mut header = vec!["candidate".to_string(), "epochs".into(), "".into()];
    header.extend(
        metric_names(&cfg.eval.eval.ks)
            .iter()
            .map(|m| format!("valid {m}")),
    );
    println!("selection on validation ({}):\n", selection.metric);
    print!("{}", markdown_table(&header, &rows));
    println!();
    let chosen = selection.chosen();
    let model = tiger::load_checkpoint(&chosen.checkpoint, ds, &cfg.train.device)?;
    let mut about = tiger::checkpoint_provenance(&chosen.checkpoint, ds)?;
    about["semantic_ids_file"] = serde_json::json!(ids_file);
    about["selection"] = serde_json::json!(selection);
    evaluate(cfg, ds, &model, &split, &train_dir, about)
}

/// Evaluates `model` on `cfg.eval.stage` and writes `eval_summary.json` under `dir`,
/// with `about` (the network's checkpoint, config and Semantic-ID provenance) as `model`.
fn evaluate(
    cfg: &TigerRunConfig,
    ds: &Dataset,
    model: &llmrec_models::tiger::Tiger,
    split: &llmrec_core::SequenceSplit,
    dir: &Path,
    about: serde_json::Value,
) -> Result<()> {
    let cases = split.cases(cfg.eval.stage).len();
    let stage = match cfg.eval.stage {
        llmrec_core::Stage::Valid => "validation",
        llmrec_core::Stage::Test => "test",
    };
    let pb = progress::bar(cases as u64, "beam search");
    let ev = tiger::eval(model, split, &cfg.eval, Some(dir), &|n| pb.inc(n as u64))?;
    pb.finish_and_clear();
    write_json(
        &dir.join("eval_summary.json"),
        &serde_json::json!({
            "dataset": ds.name,
            "dataset_fingerprint": ds.fingerprint(),
            "split": split.name,
            "stage": stage,
            "protocol": ev.report.protocol,
            "config": cfg,
            "model": about,
            "invalid_rate_constrained": ev.invalid_rate_constrained,
            "invalid_rate_unconstrained": ev.invalid_rate_unconstrained,
            "beam_size": ev.beam_size,
            "beam_skips_history": ev.beam_skips_history,
            "metrics": ev.report.metrics,
        }),
    )?;
    let ks = &cfg.eval.eval.ks;
    let mut header = vec!["model".to_string()];
    header.extend(metric_names(ks));
    let mut row = vec!["tiger".to_string()];
    row.extend(metric_cells(ks, |name| ev.report.get(name)));
    header.push("invalid (constrained)".into());
    row.push(format!("{:.4}", ev.invalid_rate_constrained));
    header.push("invalid (unconstrained)".into());
    row.push(format!("{:.4}", ev.invalid_rate_unconstrained));
    println!(
        "dataset: {} | split: {} | stage: {stage} | protocol: {} | beams: {}{} | seed: {}\n",
        ds.name,
        split.name,
        ev.report.protocol,
        ev.beam_size,
        if ev.beam_skips_history {
            ", skipping history items"
        } else {
            ""
        },
        cfg.train.seed
    );
    print!("{}", markdown_table(&header, &[row]));
    if !ev.cold_start.is_empty() {
        println!("\ncold start, by the {stage} target's training occurrences:\n");
        print!("{}", cold_start_table(&ev.cold_start, &cfg.eval.eval.ks));
    }
    println!("\nrun folder: {}", dir.display());
    Ok(())
}

/// The metric columns of TIGER's tables: Recall and NDCG at each cutoff.
fn metric_names(ks: &[usize]) -> Vec<String> {
    ks.iter()
        .flat_map(|k| [format!("Recall@{k}"), format!("NDCG@{k}")])
        .collect()
}

/// The cells under [`metric_names`]: each metric to 4 places, `-` where `get` has none.
fn metric_cells(ks: &[usize], get: impl Fn(&str) -> Option<f64>) -> Vec<String> {
    metric_names(ks)
        .iter()
        .map(|name| get(name).map_or("-".into(), |v| format!("{v:.4}")))
        .collect()
}

/// The cold-start buckets as a table: users, then Recall and NDCG at each cutoff.
fn cold_start_table(buckets: &[tiger::Bucket], ks: &[usize]) -> String {
    let mut header = vec!["target".to_string(), "users".to_string()];
    header.extend(metric_names(ks));
    let rows: Vec<Vec<String>> = buckets
        .iter()
        .map(|b| {
            let mut row = vec![b.label.clone(), b.users.to_string()];
            row.extend(metric_cells(ks, |name| b.metrics.get(name).copied()));
            row
        })
        .collect();
    markdown_table(&header, &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_start_buckets_print_as_a_table() {
        let b = tiger::Bucket {
            label: "rare (1-4 training occurrences)".into(),
            users: 7,
            metrics: [
                ("Recall@10".to_string(), 0.25),
                ("NDCG@10".to_string(), 0.125),
            ]
            .into_iter()
            .collect(),
        };
        let t = cold_start_table(&[b], &[10, 20]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[0].contains("Recall@10") && lines[0].contains("NDCG@20"),
            "{t}"
        );
        assert!(
            lines[2].contains("rare (1-4 training occurrences)")
                && lines[2].contains("| 7 ")
                && lines[2].contains("0.2500")
                && lines[2].contains("0.1250"),
            "{t}"
        );
        // A cutoff without a metric shows a dash, not a zero.
        assert!(lines[2].contains("| -"), "{t}");
    }

    #[test]
    fn resume_goes_on_in_the_resumed_runs_folder() {
        let root = resume_root(Path::new("/x/runs/beauty/lsh/train/last")).unwrap();
        assert_eq!(root, Path::new("/x/runs/beauty/lsh"));
        for bad in ["last", "train/last", "/x/runs/beauty/lsh/best"] {
            let e = resume_root(Path::new(bad)).unwrap_err().to_string();
            assert!(e.contains("--resume"), "{bad}: {e}");
        }
    }

    #[test]
    fn shipped_cpu_config_parses_and_unknown_keys_fail() {
        let p = crate::config::shipped_config("tiger-cpu.toml");
        let cfg: TigerRunConfig = load_toml(Some(&p), &[]).unwrap();
        assert_eq!(cfg.train.model.d_model, 64);
        assert_eq!(cfg.ids.rqvae.model.levels, 3);
        assert!(load_toml::<TigerRunConfig>(Some(&p), &["train.modle.d_model=1".into()]).is_err());
        assert_eq!(cfg.train.label_smoothing, 0.0);
        assert_eq!(cfg.train.keep_every, 2);
        cfg.train.validate().unwrap();
        let smooth: TigerRunConfig =
            load_toml(Some(&p), &["train.label_smoothing=1.0".into()]).unwrap();
        let e = smooth.train.validate().unwrap_err().to_string();
        assert!(e.contains("label_smoothing") && e.contains("[0, 1)"), "{e}");
    }

    #[test]
    fn shipped_mid_config_holds_the_best_measured_recipe() {
        let p = crate::config::shipped_config("tiger-mid.toml");
        let cfg: TigerRunConfig = load_toml(Some(&p), &[]).unwrap();
        let m = &cfg.train.model;
        assert_eq!((m.d_model, m.heads, m.head_dim, m.d_ff), (128, 4, 32, 512));
        assert_eq!((m.encoder_layers, m.decoder_layers), (3, 3));
        assert_eq!(cfg.ids.collab.share, 0.3);
        assert_eq!(cfg.train.label_smoothing, 0.1);
        assert_eq!((cfg.train.epochs, cfg.train.keep_every), (30, 1));
        assert_eq!(cfg.train.max_seconds, 0.0);
        // Self-contained: no early stopping cuts the run short of the epochs it
        // averages, and the averaging choice is made on validation by the config.
        assert_eq!(cfg.train.patience, 0);
        assert_eq!(cfg.select.average_last, vec![5, 7, 9]);
        assert!(
            cfg.select
                .average_last
                .iter()
                .all(|&n| n <= cfg.train.epochs)
        );
        cfg.train.validate().unwrap();
        cfg.select.validate(&cfg.train).unwrap();
    }

    #[test]
    fn shipped_paper_config_has_the_paper_shape() {
        let p = crate::config::shipped_config("tiger-paper.toml");
        let cfg: TigerRunConfig = load_toml(Some(&p), &[]).unwrap();
        let m = &cfg.train.model;
        assert_eq!((m.d_model, m.heads, m.head_dim, m.d_ff), (128, 6, 64, 1024));
        assert_eq!(
            (m.encoder_layers, m.decoder_layers, m.max_history),
            (4, 4, 20)
        );
        assert_eq!((m.user_buckets, cfg.train.batch_size), (2000, 256));
        assert_eq!(cfg.ids.rqvae.model.hidden, vec![512, 256, 128]);
        assert_eq!(cfg.ids.rqvae.model.codebook_size, 256);
        assert_eq!(cfg.train.device, "cuda");
    }
}
