//! SASRec (Kang & McAuley 2018): the self-attentive sequential recommender
//! ([`model`]) and its training on the shared learner ([`train`]).

pub mod model;
pub mod train;

pub use model::{SasRec, SasRecConfig, SasRecModel};
pub use train::{
    CHECKPOINT_VERSION, SasRecTrainConfig, SasRecTrainReport, load_checkpoint, load_checkpoint_on,
    train,
};
