//! `llmrec palr eval | export-sft`: PALR end to end (SASRec candidates, LLM
//! profiles and ranking, cached) and its fine-tuning data.

use std::path::Path;
use std::time::Instant;

use llmrec_core::{Dataset, Error, Recommender, Result, SequenceSplit};
use llmrec_llm::Cache;
use llmrec_pipelines::palr::retriever::{self, RetrieverConfig};
use llmrec_pipelines::palr::sft::{SftConfig, export_sft};
use llmrec_pipelines::palr::{self, LlmContext, PalrConfig, RankMode};
use serde::{Deserialize, Serialize};

use crate::args::{PalrCommand, PalrEvalArgs, PalrFinetuneArgs, PalrSftArgs};
use crate::config::{DatasetConfig, load_toml};
use crate::output::{run_dir, write_atomic};
use crate::progress;

/// `configs/palr.toml`: everything a PALR run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PalrRunConfig {
    /// Which data.
    pub dataset: DatasetConfig,
    /// The retriever.
    pub retriever: RetrieverConfig,
    /// Profiles, candidates, ranking and metrics.
    pub palr: PalrConfig,
    /// Fine-tuning data (`export-sft`).
    pub sft: SftConfig,
    /// LoRA fine-tuning (`palr finetune`).
    pub finetune: llmrec_llm::lora::FinetuneConfig,
}

fn parse_mode(s: &str) -> Result<RankMode> {
    match s.trim() {
        "generate" => Ok(RankMode::Generate),
        "constrained" => Ok(RankMode::Constrained),
        "logprob" => Ok(RankMode::Logprob),
        other => Err(Error::config(
            "--modes",
            format!("unknown mode `{other}`; expected generate, constrained or logprob"),
        )),
    }
}

/// Typed settings of `palr eval`: file < `--set` < flags.
pub fn eval_settings(a: &PalrEvalArgs) -> Result<PalrRunConfig> {
    let mut cfg: PalrRunConfig = load_toml(a.config.as_deref(), &a.set)?;
    if let Some(d) = &a.dataset {
        cfg.dataset.name = d.clone();
    }
    if let Some(u) = a.users {
        cfg.palr.users = u;
    }
    if let Some(s) = a.seed {
        cfg.palr.seed = s;
    }
    if !a.modes.is_empty() {
        cfg.palr.modes = a
            .modes
            .iter()
            .map(|m| parse_mode(m))
            .collect::<Result<_>>()?;
    }
    if let Some(c) = &a.checkpoint {
        cfg.retriever.checkpoint = Some(c.clone());
    }
    cfg.palr.validate()?;
    Ok(cfg)
}

fn load(cfg: &PalrRunConfig) -> Result<(Dataset, SequenceSplit)> {
    let ds = crate::setup::load_dataset(&cfg.dataset)?;
    let split = llmrec_data::split::leave_one_out(&ds);
    Ok((ds, split))
}

fn eval(a: &PalrEvalArgs) -> Result<()> {
    let cfg = eval_settings(a)?;
    let (ds, split) = load(&cfg)?;
    let t0 = Instant::now();
    let source = retriever::source(
        &cfg.retriever,
        &ds,
        &retriever::default_dir(Path::new("artifacts"), &ds.name),
    )?;
    match &source {
        retriever::Source::Checkpoint(c) => eprintln!("retriever: SASRec from {}", c.display()),
        retriever::Source::Train(t, dir) => eprintln!(
            "retriever: no checkpoint in {}; training SASRec ({}, {} epochs) there",
            dir.display(),
            t.loss.label(),
            t.epochs
        ),
    }
    let pb = progress::bar(0, "sasrec");
    let model = retriever::load_or_train(&source, &ds, &split, &mut progress::training(&pb))?;
    pb.finish_and_clear();
    let retriever_seconds = t0.elapsed().as_secs_f64();
    let prep = palr::prepare(&split, &model, &cfg.palr)?;
    let sp = progress::spinner("loading the LLM");
    let local = llmrec_llm::LocalConfig {
        reuse_prefix: cfg.palr.reuse_prefix,
        prefix_slots: cfg.palr.group,
        ..Default::default()
    };
    let llm = crate::setup::llm_backend(&a.backend, local)?;
    sp.finish_and_clear();
    let cache_path = a
        .cache
        .clone()
        .unwrap_or_else(crate::setup::default_cache_path);
    let cache = Cache::open(&cache_path)?;
    let ctx = LlmContext {
        llm: llm.as_ref(),
        cache: &cache,
    };
    let dir = run_dir(&a.out, "palr", &ds.name)?;
    let text = toml::to_string_pretty(&cfg).map_err(|e| Error::config("(all)", e.to_string()))?;
    write_atomic(&dir.join("config.toml"), text.as_bytes())?;

    // One step per user for the profile and one per user and mode.
    let pb = progress::bar(0, "palr steps (profile + each mode, per user)");
    let plain = !progress::is_terminal();
    let started = Instant::now();
    let report = palr::evaluate(&ds, &split, &model.name(), &prep, &ctx, &cfg.palr, &|p| {
        pb.set_length(p.total as u64);
        pb.set_position(p.done as u64);
        // Without a terminal: a line about every 2% of the steps.
        let every = (p.total / 50).max(1);
        if plain && p.done > 0 && p.done % every == 0 {
            eprintln!(
                "palr: {}/{} steps ({:.0}%), {:.0} s",
                p.done,
                p.total,
                100.0 * p.done as f64 / p.total.max(1) as f64,
                started.elapsed().as_secs_f64()
            );
        }
    })?;
    pb.finish_and_clear();
    palr::write_report(&dir, &report)?;
    let heading = format!(
        "dataset: {} | split: {} (test stage) | users: {} | seed: {} | LLM: {} | retriever ready in {:.1}s\nprotocol: {}\n\n",
        report.dataset,
        report.split,
        report.users,
        cfg.palr.seed,
        report.llm,
        retriever_seconds,
        report.protocol
    );
    let table = palr::table(&report);
    print!("{heading}{table}");
    println!(
        "\nLLM cache: {} ({:.0}% of this run's calls were hits)\nrun folder: {}",
        cache_path.display(),
        100.0 * hit_rate(&report),
        dir.display()
    );
    Ok(())
}

fn hit_rate(r: &palr::PalrReport) -> f64 {
    let (calls, hits) = r
        .calls
        .values()
        .fold((0, 0), |(c, h), s| (c + s.calls, h + s.cached));
    if calls == 0 {
        0.0
    } else {
        hits as f64 / calls as f64
    }
}

fn export(a: &PalrSftArgs) -> Result<()> {
    let mut cfg: PalrRunConfig = load_toml(a.config.as_deref(), &a.set)?;
    if let Some(d) = &a.dataset {
        cfg.dataset.name = d.clone();
    }
    let (ds, split) = load(&cfg)?;
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| Path::new("artifacts").join(&ds.name).join("palr-sft"));
    let rep = export_sft(&ds, &split, &cfg.sft, &out)?;
    let text = toml::to_string_pretty(&cfg.sft).map_err(|e| Error::config("sft", e.to_string()))?;
    write_atomic(&out.join("sft_config.toml"), text.as_bytes())?;
    println!(
        "{} users: {} \"Recommend\" and {} \"Recommend_Retrieval\" examples (training items only)",
        rep.users, rep.recommend_examples, rep.retrieval_examples
    );
    for f in &rep.files {
        println!("wrote {}", f.display());
    }
    Ok(())
}

fn finetune(a: &PalrFinetuneArgs) -> Result<()> {
    let mut cfg: PalrRunConfig = load_toml(a.config.as_deref(), &a.set)?;
    if let Some(d) = &a.dataset {
        cfg.dataset.name = d.clone();
    }
    cfg.palr.validate()?;
    cfg.finetune.validate()?;
    let base = llmrec_llm::resolve::resolve(&llmrec_llm::SMOLLM2, a.model_path.as_deref())?;
    let (ds, split) = load(&cfg)?;
    let dir = match &a.resume {
        Some(last) => last
            .parent()
            .and_then(Path::parent)
            .filter(|p| p.join("sft.jsonl").is_file())
            .map(Path::to_path_buf)
            .ok_or_else(|| {
                Error::config(
                    "--resume",
                    format!(
                        "expected the `lora/last` folder of a `palr finetune` run, got `{}`",
                        last.display()
                    ),
                )
            })?,
        None => run_dir(&a.out, "palr-finetune", &ds.name)?,
    };
    let text = toml::to_string_pretty(&cfg).map_err(|e| Error::config("(all)", e.to_string()))?;
    write_atomic(&dir.join("config.toml"), text.as_bytes())?;
    let pb = progress::bar(0, "lora");
    let out = palr::finetune::finetune(
        &ds,
        &split,
        &cfg.palr,
        &cfg.sft,
        &cfg.finetune,
        &base,
        &dir,
        a.resume.as_deref(),
        &mut progress::training(&pb),
    )?;
    pb.finish_and_clear();
    let r = &out.lora;
    println!(
        "dataset: {} | split: {} | fine-tuning data: {} examples of {} training users ({} evaluation users left out) -> {} train, {} valid",
        ds.name,
        split.name,
        out.sample.examples,
        out.sample.users,
        out.sample.left_out_users,
        r.data_report.train,
        r.data_report.valid
    );
    println!(
        "best adapter (validation loss {:.4}, round {}): {}\nevaluate: llmrec palr eval --dataset {} --adapter {}",
        r.best_valid
            .get(llmrec_llm::lora::VALID_LOSS)
            .copied()
            .unwrap_or(f64::NAN),
        r.best_round,
        r.best_adapter.display(),
        ds.name,
        r.best_adapter.display()
    );
    Ok(())
}

/// Runs `llmrec palr ...`.
pub fn run(cmd: &PalrCommand) -> Result<()> {
    match cmd {
        PalrCommand::Eval(a) => eval(a),
        PalrCommand::ExportSft(a) => export(a),
        PalrCommand::Finetune(a) => finetune(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_defaults() {
        let p = crate::config::shipped_config("palr.toml");
        let cfg: PalrRunConfig = load_toml(Some(&p), &[]).unwrap();
        assert_eq!(cfg, PalrRunConfig::default());
    }

    #[test]
    fn overrides_and_bad_values_name_the_field() {
        let cfg: PalrRunConfig = load_toml(
            None,
            &[
                "palr.candidates=20".into(),
                "palr.modes=[\"logprob\"]".into(),
            ],
        )
        .unwrap();
        assert_eq!(cfg.palr.candidates, 20);
        assert_eq!(cfg.palr.modes, vec![RankMode::Logprob]);
        let err = load_toml::<PalrRunConfig>(None, &["palr.candiates=20".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("candiates"), "{err}");
        let bad = PalrConfig {
            ks: vec![100],
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().to_string().contains("ks"));
        assert!(parse_mode("rerank").is_err());
    }
}
