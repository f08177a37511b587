//! `llmrec kar knowledge | eval`: KAR on MovieLens 1M. `knowledge` asks the LLM
//! about every user and rated movie (cached, resumable) and writes a knowledge
//! artifact; `eval` trains the CTR backbones with each kind of knowledge and the
//! controls, choosing on validation users and reading test users once.

use llmrec_core::{Error, Result};
use llmrec_data::loaders::load_ml1m_explicit;
use llmrec_llm::{Cache, LlmContext};
use llmrec_pipelines::kar::knowledge::generate;
use llmrec_pipelines::kar::{EvalInputs, KarConfig, protocol, run_eval};

use crate::args::{KarCommand, KarEvalArgs, KarKnowledgeArgs};
use crate::config::load_toml;
use crate::output::{markdown_table, publish_table, write_json};
use crate::progress;

/// Runs `llmrec kar ...`.
pub fn run(cmd: &KarCommand) -> Result<()> {
    match cmd {
        KarCommand::Knowledge(a) => knowledge(a),
        KarCommand::Eval(a) => eval(a),
    }
}

fn knowledge(a: &KarKnowledgeArgs) -> Result<()> {
    let cfg: KarConfig = load_toml(a.input.config.as_deref(), &a.input.set)?;
    cfg.validate()?;
    let data = load_ml1m_explicit(&crate::setup::ml1m_dir(a.input.ml1m_dir.as_ref())?)?;
    let kar = protocol::build(&data, &cfg.protocol)?;
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
    let pb = progress::bar(0, "knowledge prompts");
    let plain = !progress::is_terminal();
    let mut log = |line: &str| progress::say(&pb, line.to_string());
    let (dir, m) = generate(ctx, &data, &kar, &cfg.knowledge, &a.out, &mut log, &|p| {
        pb.set_length(p.total as u64);
        pb.set_position(p.done as u64);
        pb.set_message(format!("{} cached, {} failed", p.cached, p.failed));
        if plain && p.done % (p.total / 50).max(1) == 0 {
            eprintln!("{}/{} prompts ({} cached)", p.done, p.total, p.cached);
        }
    })?;
    pb.finish_and_clear();
    let header: Vec<String> = [
        "model",
        "users",
        "items",
        "failed",
        "cached",
        "prompt / gen. tokens",
        "s",
        "gen. tok/s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows = vec![vec![
        format!("{} ({})", m.model, m.backend),
        m.users.to_string(),
        m.items.to_string(),
        m.failed.to_string(),
        m.cached.to_string(),
        format!("{} / {}", m.prompt_tokens, m.completion_tokens),
        format!("{:.0}", m.seconds),
        format!("{:.1}", m.tokens_per_second),
    ]];
    let heading = format!(
        "KAR knowledge, prompt version {}, at most {} tokens per answer\n\n",
        m.prompt_version, m.config.max_tokens
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

fn eval(a: &KarEvalArgs) -> Result<()> {
    let (cfg, out): (KarConfig, _) = crate::setup::run_settings(
        a.resume.as_ref(),
        a.input.config.as_deref(),
        &a.input.set,
        (&a.out, "kar-eval", "ml-1m"),
    )?;
    cfg.validate()?;
    let data = load_ml1m_explicit(&crate::setup::ml1m_dir(a.input.ml1m_dir.as_ref())?)?;
    eprintln!("run folder {}", out.display());
    let embedder = crate::setup::minilm(a.encoder.as_deref())?;
    let inputs = EvalInputs {
        embedder: &embedder,
        knowledge_dir: a.knowledge_dir.as_deref(),
        cache_dir: &out,
    };
    let report =
        progress::named_trainings(|say, event| run_eval(&data, &cfg, &inputs, &out, say, event))?;
    write_json(&out.join("metrics.json"), &report)?;
    let header: Vec<String> = [
        "backbone",
        "knowledge",
        "seeds",
        "test AUC",
        "test LogLoss",
        "test GAUC",
        "AUC vs none",
        "train s / model",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.backbone.name().to_string(),
                r.knowledge.name().to_string(),
                r.seeds.to_string(),
                format!("{:.4} ± {:.4}", r.mean.auc, r.std.auc),
                format!("{:.4} ± {:.4}", r.mean.logloss, r.std.logloss),
                format!("{:.4} ± {:.4}", r.mean.gauc, r.std.gauc),
                r.auc_lift_pct
                    .map_or_else(|| "-".to_string(), |l| format!("{l:+.2}%")),
                format!("{:.0}", r.train_seconds),
            ]
        })
        .collect();
    let d = &report.data;
    let heading = format!(
        "KAR on {}; samples train / valid / test {} / {} / {} ({:.1}% clicks); seeds {:?}; knowledge {}\n\n",
        report.protocol,
        d.samples[0],
        d.samples[1],
        d.samples[2],
        100.0 * d.positive_share,
        cfg.eval.seeds,
        report
            .knowledge_dir
            .as_ref()
            .map_or_else(|| "none given".to_string(), |p| p.display().to_string())
    );
    publish_table(&out, &heading, &markdown_table(&header, &rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_config_equals_defaults() {
        let p = crate::config::shipped_config("kar.toml");
        let cfg: KarConfig = load_toml(Some(&p), &[]).unwrap();
        assert_eq!(cfg, KarConfig::default());
        assert!(load_toml::<KarConfig>(Some(&p), &["train.lrr=1".into()]).is_err());
        let bad: KarConfig = load_toml(Some(&p), &["model.adaptor.hidden=0".into()]).unwrap();
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("model.adaptor.hidden"), "{err}");
    }
}
