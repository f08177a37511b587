//! `llmrec rating baselines | llm`: the rating-prediction protocol on MovieLens 1M
//! with the collaborative baselines (global mean, biases, biased MF), settings
//! chosen on validation, test read once; and zero- and few-shot LLM prompts on a
//! seeded sample of test rows, with the baselines scored on the same rows; and
//! fine-tuned MiniLM raters (regression and 5-class heads).

use llmrec_core::{Error, Result};
use llmrec_data::loaders::load_ml1m_explicit;
use llmrec_llm::{Cache, LlmContext};
use llmrec_pipelines::rating::finetune::{run_finetune, sft_chats};
use llmrec_pipelines::rating::{RatingConfig, run_baselines, run_llm};

use crate::args::{
    RatingBaselinesArgs, RatingCommand, RatingExportSftArgs, RatingFinetuneArgs, RatingLlmArgs,
};
use crate::config::load_toml;
use crate::output::{
    markdown_table, publish_table, run_dir, write_atomic, write_json, write_jsonl,
};
use crate::progress;

/// Runs `llmrec rating ...`.
pub fn run(cmd: &RatingCommand) -> Result<()> {
    match cmd {
        RatingCommand::Baselines(a) => baselines(a),
        RatingCommand::Llm(a) => llm(a),
        RatingCommand::Finetune(a) => finetune(a),
        RatingCommand::ExportSft(a) => export_sft(a),
    }
}

fn baselines(a: &RatingBaselinesArgs) -> Result<()> {
    let cfg: RatingConfig = load_toml(a.input.config.as_deref(), &a.input.set)?;
    cfg.validate()?;
    let dir = crate::setup::ml1m_dir(a.input.ml1m_dir.as_ref())?;
    let data = load_ml1m_explicit(&dir)?;
    let report = run_baselines(&data, &cfg, &mut |line| eprintln!("{line}"))?;
    let out = run_dir(&a.out, "rating-baselines", "ml-1m")?;
    write_json(&out.join("metrics.json"), &report)?;
    let header: Vec<String> = [
        "method",
        "chosen on validation",
        "valid RMSE",
        "test RMSE",
        "test MAE",
        "test AUC",
        "s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = report
        .methods
        .iter()
        .map(|m| {
            vec![
                m.method.clone(),
                m.chosen.clone(),
                format!("{:.4}", m.valid.rmse),
                format!("{:.4}", m.test.rmse),
                format!("{:.4}", m.test.mae),
                format!("{:.4}", m.test.auc),
                format!("{:.1}", m.seconds),
            ]
        })
        .collect();
    let table = markdown_table(&header, &rows);
    let heading = format!(
        "ml-1m rating prediction, {} ({} train / {} valid / {} test rows), seed {}\n\n",
        report.protocol, report.rows[0], report.rows[1], report.rows[2], cfg.seed
    );
    publish_table(&out, &heading, &table)
}

fn llm(a: &RatingLlmArgs) -> Result<()> {
    let cfg: RatingConfig = load_toml(a.input.config.as_deref(), &a.input.set)?;
    cfg.validate()?;
    let dir = crate::setup::ml1m_dir(a.input.ml1m_dir.as_ref())?;
    let data = load_ml1m_explicit(&dir)?;
    let sp = progress::spinner("loading the LLM");
    // Prefix reuse: the worked examples are computed once, and the expected readout
    // reads its prompt's cache, kept from the decode of the same group.
    let local = llmrec_llm::LocalConfig {
        reuse_prefix: true,
        prefix_slots: cfg.llm.group + 2,
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
    let out = run_dir(&a.out, "rating-llm", "ml-1m")?;
    let text = toml::to_string_pretty(&cfg).map_err(|e| Error::config("(all)", e.to_string()))?;
    write_atomic(&out.join("config.toml"), text.as_bytes())?;
    let pb = progress::bar(0, "rating prompts");
    let plain = !progress::is_terminal();
    let report = run_llm(
        &data,
        &cfg,
        &ctx,
        &mut |line| eprintln!("{line}"),
        &|stage, done, total| {
            pb.set_length(total as u64);
            pb.set_position(done as u64);
            pb.set_message(stage.to_string());
            let every = (total / 20).max(1);
            if plain && done % every == 0 {
                eprintln!("{stage}: {done}/{total} calls");
            }
        },
    )?;
    pb.finish_and_clear();
    write_json(&out.join("metrics.json"), &report)?;
    let header: Vec<String> = [
        "method",
        "readout",
        "RMSE",
        "MAE",
        "AUC",
        "full-test RMSE",
        "unparsed",
        "calls (cached)",
        "prompt / gen. tokens",
        "s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = report
        .results
        .iter()
        .map(|r| {
            let dash = || "-".to_string();
            vec![
                r.method.clone(),
                r.readout.clone(),
                format!("{:.4}", r.sample.rmse),
                format!("{:.4}", r.sample.mae),
                format!("{:.4}", r.sample.auc),
                r.full_test.map_or_else(dash, |m| format!("{:.4}", m.rmse)),
                r.parse_failures.map_or_else(dash, |n| n.to_string()),
                r.calls
                    .as_ref()
                    .map_or_else(dash, |c| format!("{} ({})", c.calls, c.cached)),
                r.calls.as_ref().map_or_else(dash, |c| {
                    format!("{} / {}", c.prompt_tokens, c.completion_tokens)
                }),
                r.calls
                    .as_ref()
                    .map_or_else(dash, |c| format!("{:.0}", c.seconds)),
            ]
        })
        .collect();
    let table = markdown_table(&header, &rows);
    let heading = format!(
        "ml-1m rating prediction with {}, {} seeded test rows (seed {}) of {}; {}; baselines chosen on validation, seed {}\n\n",
        report.llm, report.sample, cfg.llm.seed, report.rows[2], report.protocol, cfg.seed
    );
    publish_table(&out, &heading, &table)
}

fn finetune(a: &RatingFinetuneArgs) -> Result<()> {
    let (cfg, out): (RatingConfig, _) = crate::setup::run_settings(
        a.resume.as_ref(),
        a.input.config.as_deref(),
        &a.input.set,
        (&a.out, "rating-finetune", "ml-1m"),
    )?;
    cfg.validate()?;
    let dir = crate::setup::ml1m_dir(a.input.ml1m_dir.as_ref())?;
    let data = load_ml1m_explicit(&dir)?;
    let encoder = llmrec_llm::resolve_model(&llmrec_llm::MINILM, a.encoder.as_deref())?;
    eprintln!("run folder {}", out.display());
    let pb = progress::bar(0, "fine-tuning");
    let plain = !progress::is_terminal();
    let report = {
        let mut on_train = progress::training(&pb);
        run_finetune(
            &data,
            &cfg,
            &encoder,
            &out,
            &mut |line| pb.suspend(|| eprintln!("{line}")),
            &mut on_train,
            &|stage, done, total| {
                pb.set_length(total as u64);
                pb.set_position(done as u64);
                pb.set_message(format!("{stage}: scoring test rows"));
                let every = (total / 10).max(1);
                if plain && done % every < 32 {
                    eprintln!("{stage}: {done}/{total} test rows scored");
                }
            },
        )?
    };
    pb.finish_and_clear();
    write_json(&out.join("metrics.json"), &report)?;
    let header: Vec<String> = [
        "method",
        "chosen on validation",
        "valid RMSE",
        "test RMSE",
        "test MAE",
        "test AUC",
        "LLM-sample RMSE / MAE / AUC",
        "train ex/s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut rows: Vec<Vec<String>> = report
        .baselines
        .iter()
        .map(|b| {
            vec![
                b.method.clone(),
                b.chosen.clone(),
                "-".into(),
                format!("{:.4}", b.test.rmse),
                format!("{:.4}", b.test.mae),
                format!("{:.4}", b.test.auc),
                format!(
                    "{:.4} / {:.4} / {:.4}",
                    b.llm_sample.rmse, b.llm_sample.mae, b.llm_sample.auc
                ),
                "-".into(),
            ]
        })
        .collect();
    for f in &report.finetuned {
        rows.push(vec![
            format!(
                "MiniLM fine-tuned, {} head, {}% of training rows ({} texts)",
                match f.head {
                    llmrec_pipelines::rating::finetune::Head::Regression => "regression",
                    llmrec_pipelines::rating::finetune::Head::Classes => "5-class",
                },
                f.share * 100.0,
                f.examples
            ),
            format!("pass {} of {} ({})", f.best_epoch, f.epochs_run, f.stopped),
            format!("{:.4}", f.valid.rmse),
            format!("{:.4}", f.test.rmse),
            format!("{:.4}", f.test.mae),
            format!("{:.4}", f.test.auc),
            format!(
                "{:.4} / {:.4} / {:.4}",
                f.llm_sample.rmse, f.llm_sample.mae, f.llm_sample.auc
            ),
            format!("{:.1}", f.examples_per_sec),
        ]);
    }
    let table = markdown_table(&header, &rows);
    let heading = format!(
        "ml-1m rating prediction, fine-tuned {} beside the baselines; {} seeded test rows (seed {}) of {}, holding the {}-row LLM sample; {}; validation: {} sampled rows; seeds {} (baselines), {} (fine-tuning)\n\n",
        report.encoder,
        report.test_rows,
        cfg.llm.seed,
        report.rows[2],
        report.llm_sample,
        report.protocol,
        cfg.finetune.valid_rows,
        cfg.seed,
        cfg.finetune.seed
    );
    publish_table(&out, &heading, &table)
}

fn export_sft(a: &RatingExportSftArgs) -> Result<()> {
    let cfg: RatingConfig = load_toml(a.input.config.as_deref(), &a.input.set)?;
    cfg.validate()?;
    let dir = crate::setup::ml1m_dir(a.input.ml1m_dir.as_ref())?;
    let data = load_ml1m_explicit(&dir)?;
    let s = llmrec_pipelines::rating::protocol::split(&data, cfg.share)?;
    let chats = sft_chats(&data, &s.train, a.share, cfg.llm.history, cfg.finetune.seed)?;
    let records: Vec<_> = chats
        .iter()
        .map(|chat| serde_json::json!({ "messages": chat }))
        .collect();
    write_jsonl(&a.out, &records)?;
    eprintln!(
        "{} chats from {} training rows (share {}, history {}, seed {}) written to {}",
        chats.len(),
        s.train.len(),
        a.share,
        cfg.llm.history,
        cfg.finetune.seed,
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_defaults() {
        let p = crate::config::shipped_config("rating.toml");
        let cfg: RatingConfig = load_toml(Some(&p), &[]).unwrap();
        assert_eq!(cfg, RatingConfig::default());
        assert!(load_toml::<RatingConfig>(Some(&p), &["mf.factrs=[2]".into()]).is_err());
    }
}
