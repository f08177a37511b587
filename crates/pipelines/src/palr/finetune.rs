//! PALR's defining step: fine-tuning the LLM on its two instruction tasks
//! ("Recommend" and "Recommend_Retrieval", [`super::sft`]) with LoRA
//! ([`llmrec_llm::lora`]), on training users that are not among the users PALR is
//! evaluated on. Held-out labels never shape the data: examples come from training
//! items only, and the evaluation users are left out whole, which this module checks
//! for every example before training.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use llmrec_core::io::{write_json, write_with};
use llmrec_core::{Dataset, Error, Result, SequenceSplit};
use llmrec_llm::lora::{self, FinetuneConfig, FinetuneReport};
use llmrec_models::TrainEvent;
use serde::{Deserialize, Serialize};

use super::sft::{self, Example, SftConfig};
use super::{PalrConfig, sample_users};

/// What went into the fine-tuning data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SftSample {
    /// Users whose examples were written (all users but the evaluation sample).
    pub users: usize,
    /// Evaluation users left out.
    pub left_out_users: usize,
    /// Examples written (both tasks).
    pub examples: usize,
}

/// The fine-tuning examples: every user's SFT examples except those of the users
/// PALR evaluates (`palr.users` sampled with `palr.seed`, as [`super::evaluate`]
/// samples them). Errors if an evaluation user's example would slip through.
pub fn training_examples(
    ds: &Dataset,
    split: &SequenceSplit,
    palr: &PalrConfig,
    cfg: &SftConfig,
) -> Result<(Vec<Example>, SftSample)> {
    let eval: HashSet<String> = sample_users(split, palr.users, palr.seed)
        .into_iter()
        .map(|u| ds.users.raw(u).to_string())
        .collect();
    let all = sft::examples(ds, split, cfg)?;
    let mut users = HashSet::new();
    let kept: Vec<Example> = all
        .into_iter()
        .filter(|e| !eval.contains(&e.user))
        .inspect(|e| {
            users.insert(e.user.clone());
        })
        .collect();
    if let Some(e) = kept.iter().find(|e| eval.contains(&e.user)) {
        return Err(Error::Invalid(format!(
            "leakage: evaluation user {} would reach the fine-tuning data",
            e.user
        )));
    }
    let sample = SftSample {
        users: users.len(),
        left_out_users: eval.len(),
        examples: kept.len(),
    };
    Ok((kept, sample))
}

/// What [`finetune`] produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PalrFinetune {
    /// The fine-tuning data written.
    pub data: PathBuf,
    /// Who and how much went into it.
    pub sample: SftSample,
    /// The LoRA run.
    pub lora: FinetuneReport,
}

/// Writes the fine-tuning data of `ds` to `run_dir/sft.jsonl` and fine-tunes `base`
/// on it with `cfg` into `run_dir/lora/` (the adapter to evaluate is its `best/`).
#[allow(clippy::too_many_arguments)]
pub fn finetune(
    ds: &Dataset,
    split: &SequenceSplit,
    palr: &PalrConfig,
    sft_cfg: &SftConfig,
    cfg: &FinetuneConfig,
    base: &Path,
    run_dir: &Path,
    resume: Option<&Path>,
    event: &mut dyn FnMut(&TrainEvent),
) -> Result<PalrFinetune> {
    let (examples, sample) = training_examples(ds, split, palr, sft_cfg)?;
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let data = run_dir.join("sft.jsonl");
    write_with(&data, |tmp| {
        let mut text = String::new();
        for e in &examples {
            text.push_str(
                &serde_json::to_string(e).map_err(|e| Error::Invalid(format!("json: {e}")))?,
            );
            text.push('\n');
        }
        std::fs::write(tmp, text).map_err(|e| Error::io(tmp, e))
    })?;
    write_json(&run_dir.join("sft_sample.json"), &sample)?;
    let report = lora::finetune(base, &data, cfg, &run_dir.join("lora"), resume, event)?;
    Ok(PalrFinetune {
        data,
        sample,
        lora: report,
    })
}
