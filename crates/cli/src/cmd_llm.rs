//! `llmrec llm chat | batch`: talk to the local GGUF model or an
//! OpenAI-compatible server, with every generation cached.

use std::io::Write;

use llmrec_core::{Error, Result};
use llmrec_llm::{BatchJob, Cache, LocalConfig, Message, SamplingParams, run_batch_grouped};

use crate::args::{LlmBackendArgs, LlmCommand};
use crate::output::write_atomic;
use crate::progress;

/// Builds the backend the flags ask for (`local` configures the local one).
fn params(a: &LlmBackendArgs) -> SamplingParams {
    SamplingParams {
        max_tokens: a.max_tokens,
        temperature: a.temperature,
        seed: a.seed,
        ..Default::default()
    }
}

/// Runs `llmrec llm ...`.
pub fn run(cmd: &LlmCommand) -> Result<()> {
    match cmd {
        LlmCommand::Chat(a) => {
            let llm = crate::setup::llm_backend(&a.backend.select, LocalConfig::default())?;
            let mut messages = Vec::new();
            if let Some(s) = &a.system {
                messages.push(Message::system(s.clone()));
            }
            messages.push(Message::user(a.prompt.clone()));
            let g = llm.chat(&messages, &params(&a.backend))?;
            println!("{}", g.text);
            eprintln!(
                "[{} prompt + {} generated tokens, {:.0} ms]",
                g.prompt_tokens, g.completion_tokens, g.latency_ms
            );
            Ok(())
        }
        LlmCommand::Batch(a) => {
            let text = std::fs::read_to_string(&a.input).map_err(|e| Error::io(&a.input, e))?;
            let mut jobs = Vec::new();
            for (i, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let mut job: BatchJob = serde_json::from_str(line).map_err(|e| {
                    Error::parse(
                        &a.input,
                        i + 1,
                        format!("expected {{\"id\": .., \"messages\": [{{\"role\": .., \"content\": ..}}], \"params\"?: ..}}: {e}"),
                    )
                })?;
                if !line.contains("\"params\"") {
                    job.params = params(&a.backend);
                }
                jobs.push(job);
            }
            let llm = crate::setup::llm_backend(&a.backend.select, LocalConfig::default())?;
            let cache_path = a
                .cache
                .clone()
                .unwrap_or_else(crate::setup::default_cache_path);
            if let Some(d) = cache_path.parent() {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
            let cache = Cache::open(&cache_path)?;
            let pb = progress::bar(jobs.len() as u64, "prompts");
            let results =
                run_batch_grouped(llm.as_ref(), &cache, &jobs, a.concurrency, a.group, &|p| {
                    pb.set_position(p.done as u64)
                })?;
            pb.finish_and_clear();
            let mut out = Vec::new();
            let (mut cached, mut failed) = (0, 0);
            for r in &results {
                cached += usize::from(r.cached);
                let v = match &r.result {
                    Ok(g) => serde_json::json!({"id": r.id, "text": g.text, "cached": r.cached,
                        "prompt_tokens": g.prompt_tokens, "completion_tokens": g.completion_tokens}),
                    Err(e) => {
                        failed += 1;
                        serde_json::json!({"id": r.id, "error": e.to_string()})
                    }
                };
                writeln!(out, "{v}").map_err(|e| Error::io(&a.output, e))?;
            }
            write_atomic(&a.output, &out)?;
            eprintln!(
                "{} prompts: {} from cache, {} failed; wrote {}",
                results.len(),
                cached,
                failed,
                a.output.display()
            );
            Ok(())
        }
    }
}
