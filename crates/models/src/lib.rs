//! Neural sequential recommenders for llmrec: SASRec (Kang & McAuley 2018) in candle,
//! with BCE, full cross-entropy and gBCE losses, a seeded training loop with early
//! stopping and checkpoints, and a batched [`llmrec_core::Recommender`] implementation.

#![warn(missing_docs)]

pub mod init;
mod layers;
pub mod loss;
mod mha;
mod ops;
pub mod optim;
pub mod rqvae;
pub mod sasrec;
pub mod sasrec_train;
pub mod semantic_ids;
pub mod spectral;
mod svg;
pub mod tiger;
pub mod trie;

pub use loss::Loss;
pub use sasrec::{Config, SasRec, SasRecModel};
pub use sasrec_train::{
    CHECKPOINT_VERSION, TrainConfig, TrainEvent, TrainReport, load_checkpoint, parse_device, train,
};
