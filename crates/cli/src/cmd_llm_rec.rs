//! `llmrec llmrec augment | eval`: LLM-Rec. `augment` runs the prompting
//! strategies for every item (cached, resumable) into an artifact; `eval` trains the
//! content MLP on each row of augmented text, choosing on validation and reading
//! test once, beside the baselines on the same leave-one-out split.

use llmrec_core::{Error, Result};
use llmrec_llm::{Cache, LlmContext};
use llmrec_pipelines::llm_rec::augment::generate;
use llmrec_pipelines::llm_rec::{EvalInputs, LlmRecConfig, run_eval};

use crate::args::{LlmRecAugmentArgs, LlmRecCommand, LlmRecEvalArgs};
use crate::config::load_toml;
use crate::output::{markdown_table, publish_table, write_json};
use crate::progress;

/// Runs `llmrec llmrec ...`.
pub fn run(cmd: &LlmRecCommand) -> Result<()> {
    match cmd {
        LlmRecCommand::Augment(a) => augment(a),
        LlmRecCommand::Eval(a) => eval(a),
    }
}

fn strings(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

fn augment(a: &LlmRecAugmentArgs) -> Result<()> {
    let cfg: LlmRecConfig = load_toml(a.input.config.as_deref(), &a.input.set)?;
    cfg.validate()?;
    let ds = crate::setup::dataset_named(&a.input.dataset)?;
    let split = llmrec_data::split::leave_one_out(&ds);
    let sp = progress::spinner("loading the LLM");
    let llm = crate::setup::llm_backend(&a.backend, llmrec_llm::LocalConfig::default())?;
    sp.finish_and_clear();
    let cache = Cache::open(
        a.cache
            .clone()
            .unwrap_or_else(crate::setup::default_cache_path),
    )?;
    let ctx = LlmContext {
        llm: llm.as_ref(),
        cache: &cache,
    };
    let pb = progress::bar(0, "augmentation prompts");
    let plain = !progress::is_terminal();
    let mut log = |line: &str| progress::say(&pb, line.to_string());
    let (dir, m) = generate(
        ctx,
        &ds,
        &split,
        (&cfg.augment, &cfg.engagement),
        &a.out,
        &mut log,
        &|p| {
            pb.set_length(p.total as u64);
            pb.set_position(p.done as u64);
            pb.set_message(format!("{} cached, {} failed", p.cached, p.failed));
            if plain && p.done % (p.total / 50).max(1) == 0 {
                eprintln!("{}/{} prompts ({} cached)", p.done, p.total, p.cached);
            }
        },
    )?;
    pb.finish_and_clear();
    let header = strings(&[
        "dataset",
        "model",
        "items",
        "texts",
        "failed",
        "cached",
        "prompt / gen. tokens",
        "s",
        "gen. tok/s",
    ]);
    let rows = vec![vec![
        m.dataset.clone(),
        format!("{} ({})", m.model, m.backend),
        m.items.to_string(),
        m.records.to_string(),
        m.failed.to_string(),
        m.cached.to_string(),
        format!("{} / {}", m.prompt_tokens, m.completion_tokens),
        format!("{:.0}", m.seconds),
        format!("{:.1}", m.tokens_per_second),
    ]];
    let heading = format!(
        "LLM-Rec augmentation, prompt version {}, strategies {}, at most {} tokens per answer\n\n",
        m.prompt_version,
        m.config
            .strategies
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        m.config.max_tokens
    );
    publish_table(&dir, &heading, &markdown_table(&header, &rows))?;
    if m.failed > 0 {
        return Err(Error::Invalid(format!(
            "{} prompts failed; run the same command again to retry them (answers so far are cached)",
            m.failed
        )));
    }
    Ok(())
}

fn eval(a: &LlmRecEvalArgs) -> Result<()> {
    let (cfg, out): (LlmRecConfig, _) = crate::setup::run_settings(
        a.resume.as_ref(),
        a.input.config.as_deref(),
        &a.input.set,
        (&a.out, "llm-rec-eval", &a.input.dataset),
    )?;
    cfg.validate()?;
    let ds = crate::setup::dataset_named(&a.input.dataset)?;
    let split = llmrec_data::split::leave_one_out(&ds);
    eprintln!("run folder {}", out.display());
    let embedder = crate::setup::minilm(a.encoder.as_deref())?;
    let inputs = EvalInputs {
        embedder: &embedder,
        augment_dir: a.augment_dir.as_deref(),
        sasrec: a.sasrec.as_deref(),
    };
    let report = progress::named_trainings(|say, event| {
        run_eval(&ds, &split, &cfg, &inputs, &out, say, event)
    })?;
    write_json(&out.join("metrics.json"), &report)?;
    let header = strings(&[
        "row",
        "width",
        "seeds",
        "NDCG@10",
        "Recall@10",
        "Precision@10",
        "NDCG@10 vs original",
        "train s / model",
    ]);
    let cell =
        |r: &llmrec_pipelines::llm_rec::TableRow, m: &str| match (r.mean.get(m), r.std.get(m)) {
            (Some(a), Some(s)) if r.seeds > 1 => format!("{a:.4} ± {s:.4}"),
            (Some(a), _) => format!("{a:.4}"),
            _ => "-".to_string(),
        };
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.row.clone(),
                r.width.to_string(),
                r.seeds.to_string(),
                cell(r, "NDCG@10"),
                cell(r, "Recall@10"),
                cell(r, "Precision@10"),
                r.ndcg10_lift_pct
                    .map_or_else(|| "-".to_string(), |l| format!("{l:+.2}%")),
                format!("{:.0}", r.train_seconds),
            ]
        })
        .collect();
    let heading = format!(
        "LLM-Rec on {} ({} split), {}; seeds {:?}; augmented text {}\n\n",
        report.dataset,
        report.split,
        report.protocol,
        cfg.eval.seeds,
        report.augment.as_ref().map_or_else(
            || "none given".to_string(),
            |m| format!(
                "{} ({}), {} texts, {} generated tokens",
                m.model, m.backend, m.records, m.completion_tokens
            )
        )
    );
    publish_table(&out, &heading, &markdown_table(&header, &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_defaults() {
        let p = crate::config::shipped_config("llm_rec.toml");
        let cfg: LlmRecConfig = load_toml(Some(&p), &[]).unwrap();
        assert_eq!(cfg, LlmRecConfig::default());
        assert!(load_toml::<LlmRecConfig>(Some(&p), &["train.lrr=1".into()]).is_err());
        let bad: LlmRecConfig =
            load_toml(Some(&p), &["engagement.pagerank.damping=1.5".into()]).unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("engagement.pagerank.damping"), "{err}");
        let bad: LlmRecConfig = load_toml(Some(&p), &["eval.rows=[\"fancy\"]".into()]).unwrap();
        assert!(bad.validate().is_err());
    }
}
