//! LoRA fine-tuning of the local llama-family model, in candle: the base GGUF
//! weights dequantised to f32 and frozen, low-rank adapters on chosen projections as
//! the only trainable weights, the loss on the answer tokens of chat examples, and
//! training on the shared learner (rounds of steps, validation loss, `best/`,
//! `last/`, exact resumption).
//!
//! - [`config`]: the adapters' and the run's settings;
//! - [`data`]: chat JSONL, tokenized with the base model's template, split seeded;
//! - [`model`]: the differentiable forward with adapters;
//! - [`train`]: the fine-tuning run, [`finetune`];
//! - [`adapter`]: adapter folders, merging into the base at load
//!   ([`crate::LocalConfig::adapter`]) and the merged GGUF export;
//! - [`hf_export`]: the merged model in the Hugging Face layout (safetensors).

pub mod adapter;
pub mod config;
pub mod data;
pub mod hf_export;
pub mod model;
pub mod train;

pub use adapter::{Adapter, AdapterMeta, export_merged_gguf};
pub use config::{FinetuneConfig, LoraConfig, Target};
pub use hf_export::export_merged_hf;
pub use model::{LoraModel, TokenBatch};
pub use train::{FinetuneReport, VALID_LOSS, finetune};
