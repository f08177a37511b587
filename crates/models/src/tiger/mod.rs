//! TIGER (Rajput et al., "Recommender Systems with Generative Retrieval", NeurIPS 2023):
//! an encoder-decoder transformer that reads the Semantic IDs of a user's recent items
//! and generates the Semantic ID of the next item.
//!
//! * **Tokens** ([`Vocab`]): `PAD = 0`, `BOS = 1`; level `l` code `c` is token
//!   `2 + l·codebook_size + c` (the collision level follows the last semantic level);
//!   then `user_buckets` hashed user tokens.
//! * **Encoder input:** one hashed user token, then the `levels + 1` tokens of each of the
//!   last `max_history` items, left-padded; learned absolute positions aligned to the
//!   right end (the most recent item always has the same positions). The paper's T5 uses
//!   relative position biases instead.
//! * **Layers:** pre-LayerNorm self-attention / cross-attention / ReLU feed-forward
//!   blocks with `heads × head_dim` attention width (T5 style, which lets the paper's
//!   6 heads of 64 sit on a 128-wide model), dropout on embeddings, attention weights and
//!   residual branches. Input embeddings are shared by encoder and decoder; the output
//!   head covers only BOS, PAD and code tokens. With `tie_embeddings` (T5's choice) the
//!   head is those tokens' input embeddings.
//! * **Training:** teacher forcing; the decoder reads `[BOS, t0, .., t_{L-1}]` and predicts
//!   `[t0, .., t_L]`.
//! * **Decoding** ([`TigerModel::beam_search`]): beam search with a self-attention KV
//!   cache; cross-attention keys and values are computed once per user and shared by its
//!   beams (beams are laid out as the query axis of their user). With constraints on,
//!   each step may only take codes that continue a valid ID in the [`Trie`], so every
//!   result is a real item.

//!
//! Files: [`config`] (sizes and the token layout), [`model`] (batches and the network),
//! [`generation`] (beam search and the [`Recommender`](llmrec_core::Recommender)),
//! [`train`] (training on the shared learner) and [`checkpoint`] (checkpoint folders,
//! averaging, provenance).

pub mod checkpoint;
pub mod config;
pub mod generation;
pub mod model;
pub mod train;

pub use checkpoint::{
    AveragedFrom, CHECKPOINT_VERSION, average_checkpoints, checkpoint_provenance, load_checkpoint,
    provenance,
};
pub use config::{BOS, PAD, TigerConfig, Vocab};
pub use generation::{Beam, OUTSIDE_BEAM, Tiger};
pub use model::{EncoderBatch, TigerModel, TrainBatch, new_model};
pub use train::{TigerTrainConfig, TigerTrainReport, train};
