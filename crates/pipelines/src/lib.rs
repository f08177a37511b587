//! End-to-end pipelines of llmrec, as library functions with progress callbacks and
//! run folders (per-epoch metrics as JSON lines, an SVG plot, reports), so that the CLI
//! and examples only parse arguments and draw progress bars.
//!
//! * [`palr`]: LLM user profile → retriever candidates → LLM ranking; fine-tuning data.
//! * [`tiger`]: Semantic IDs (RQ-VAE, random, LSH) → TIGER training → evaluation.
//! * [`rating`]: rating prediction, its protocol and collaborative baselines.
//! * [`kar`]: KAR, LLM knowledge about users and items in CTR models.
//! * [`llm_rec`]: LLM-Rec, LLM-augmented item text for a content MLP.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod kar;
pub mod llm_rec;
pub mod palr;
pub mod rating;
pub mod registry;
pub mod tiger;
