//! `llmrec lm finetune | export`: LoRA fine-tuning of the local model, and the merged
//! model as a GGUF file.

use std::path::PathBuf;

use llmrec_core::{Error, Result};
use llmrec_llm::lora::{self, FinetuneConfig};
use llmrec_llm::resolve::{SMOLLM2, resolve};

use crate::args::{ExportFormat, LmCommand, LmExportArgs, LmFinetuneArgs};
use crate::config::load_toml;
use crate::output::{markdown_table, run_dir};
use crate::progress;

/// Runs `llmrec lm ...`.
pub fn run(cmd: &LmCommand) -> Result<()> {
    match cmd {
        LmCommand::Finetune(a) => finetune(a),
        LmCommand::Export(a) => export(a),
    }
}

fn base_model(explicit: Option<&std::path::Path>) -> Result<PathBuf> {
    resolve(&SMOLLM2, explicit)
}

fn finetune(a: &LmFinetuneArgs) -> Result<()> {
    let cfg: FinetuneConfig = load_toml(a.config.as_deref(), &a.set)?;
    cfg.validate()?;
    let base = base_model(a.model_path.as_deref())?;
    let dir = match &a.resume {
        Some(last) => last
            .parent()
            .filter(|p| p.join("train_config.json").is_file())
            .map(|p| p.to_path_buf())
            .ok_or_else(|| {
                Error::config(
                    "--resume",
                    format!(
                        "expected the `last/` folder of an `lm finetune` run, got `{}`",
                        last.display()
                    ),
                )
            })?,
        None => run_dir(&a.out, "lm-finetune", "lora")?,
    };
    let pb = progress::bar(0, "lora");
    let report = lora::finetune(
        &base,
        &a.data,
        &cfg,
        &dir,
        a.resume.as_deref(),
        &mut progress::training(&pb),
    )?;
    pb.finish_and_clear();
    let r = &report.data_report;
    println!(
        "base: {} | data: {} ({} chats: {} train, {} valid, {} too long) | adapters: {} parameters, rank {} on {:?}\n",
        report.base.file.display(),
        report.data.file.display(),
        r.chats,
        r.train,
        r.valid,
        r.too_long,
        report.parameters,
        cfg.lora.rank,
        cfg.lora.targets
    );
    let rows: Vec<Vec<String>> = report
        .rounds
        .iter()
        .map(|e| {
            vec![
                e.epoch.to_string(),
                e.steps.to_string(),
                format!("{:.4}", e.loss),
                e.valid
                    .as_ref()
                    .and_then(|v| v.get(lora::VALID_LOSS))
                    .map_or("-".into(), |v| format!("{v:.4}")),
                format!("{:.2e}", e.lr),
                format!("{:.0}", e.examples_per_sec),
            ]
        })
        .collect();
    let header: Vec<String> = [
        "round",
        "steps",
        "train loss",
        "valid loss",
        "lr",
        "tokens/s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    print!("{}", markdown_table(&header, &rows));
    println!(
        "\nbest adapter (lowest validation loss, round {}): {}\nstopped by {}; run folder: {}",
        report.best_round,
        report.best_adapter.display(),
        report.stopped.label(),
        dir.display()
    );
    Ok(())
}

fn export(a: &LmExportArgs) -> Result<()> {
    let base = base_model(a.model_path.as_deref())?;
    match (a.format, &a.adapter) {
        (ExportFormat::Gguf, Some(adapter)) => lora::export_merged_gguf(&base, adapter, &a.out)?,
        (ExportFormat::Gguf, None) => {
            return Err(Error::Invalid(
                "--format gguf needs --adapter: without one the base GGUF file is the export"
                    .into(),
            ));
        }
        (ExportFormat::Hf, adapter) => lora::export_merged_hf(&base, adapter.as_deref(), &a.out)?,
    }
    match &a.adapter {
        Some(adapter) => println!(
            "wrote {} (base {} with {} merged)",
            a.out.display(),
            base.display(),
            adapter.display()
        ),
        None => println!("wrote {} (base {})", a.out.display(), base.display()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_parses_and_is_a_small_budget() {
        let p = crate::config::shipped_config("lm-finetune.toml");
        let cfg: FinetuneConfig = load_toml(Some(&p), &[]).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg, FinetuneConfig::default());
        assert_eq!(
            (cfg.max_examples, cfg.epochs, cfg.eval_every_steps),
            (128, 1, 8)
        );
        assert!(load_toml::<FinetuneConfig>(Some(&p), &["lora.rnak=4".into()]).is_err());
    }
}
