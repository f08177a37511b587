//! Command-line flags. Raw flags are turned into typed settings by each command.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// llmrec: LLM-augmented recommendation, reproducible and fast.
#[derive(Debug, Parser)]
#[command(name = "llmrec", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the registered datasets with statistics.
    Datasets(DatasetsArgs),
    /// Fit models on a split and evaluate them (full ranking by default).
    Eval(EvalArgs),
    /// Train a neural model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Embed every item's text with all-MiniLM-L6-v2 into a reusable artifact.
    Embed(EmbedArgs),
    /// Show where each model's weights resolve (path, LLMREC_MODELS_DIR, HF cache).
    Models(ModelsArgs),
    /// TIGER: Semantic IDs and generative retrieval.
    #[command(subcommand)]
    Tiger(TigerCommand),
    /// Talk to an LLM backend (local GGUF or OpenAI-compatible), cached.
    #[command(subcommand)]
    Llm(LlmCommand),
    /// PALR: LLM profile, SASRec candidates, LLM ranking; fine-tuning data.
    #[command(subcommand)]
    Palr(PalrCommand),
    /// Train the local language model: LoRA fine-tuning and merged exports.
    #[command(subcommand)]
    Lm(LmCommand),
    /// Rating prediction on MovieLens 1M: collaborative baselines and LLM prompts.
    #[command(subcommand)]
    Rating(RatingCommand),
    /// KAR: LLM knowledge about users and items, adapted into CTR models (MovieLens 1M).
    #[command(subcommand)]
    Kar(KarCommand),
    /// LLM-Rec: LLM-augmented item text (four prompting strategies) for a content
    /// MLP recommender.
    #[command(subcommand, name = "llmrec")]
    LlmRec(LlmRecCommand),
    /// Serve retrieval, LLM reranking and explanations over HTTP (`serve.toml`).
    Serve(ServeArgs),
    /// Speed benchmarks (results go to a run folder as JSON and a table).
    #[command(subcommand)]
    Bench(BenchCommand),
}

/// `llmrec kar` commands.
#[derive(Debug, Subcommand)]
pub enum KarCommand {
    /// Generate the LLM's reasoning about every user (from their prompt-only
    /// ratings) and facts about every rated movie, cached and resumable, into a
    /// versioned knowledge artifact.
    Knowledge(KarKnowledgeArgs),
    /// Train the CTR backbones with each kind of knowledge and the controls, the
    /// pass chosen on validation users, and report AUC, LogLoss and GAUC on test
    /// users over the configured seeds.
    Eval(KarEvalArgs),
}

/// Flags of `llmrec kar knowledge`.
#[derive(Debug, Args)]
pub struct KarKnowledgeArgs {
    /// Settings and data.
    #[command(flatten)]
    pub input: Ml1mInput,
    /// LLM backend.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Persistent cache (default: ~/.cache/llmrec/cache.redb or $LLMREC_CACHE_DIR/cache.redb).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Root of knowledge artifacts (the artifact goes to ROOT/<model>/prompt-v<N>/).
    #[arg(long, default_value = "artifacts/kar")]
    pub out: PathBuf,
}

/// Flags of `llmrec kar eval`.
#[derive(Debug, Args)]
pub struct KarEvalArgs {
    /// Settings and data.
    #[command(flatten)]
    pub input: Ml1mInput,
    /// A knowledge artifact of `llmrec kar knowledge` (needed by knowledge user,
    /// item, both and shuffled).
    #[arg(long)]
    pub knowledge_dir: Option<PathBuf>,
    /// all-MiniLM-L6-v2's folder (default: resolved as `llmrec models` says).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Go on in this run folder: models already trained there are read, not
    /// trained again.
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

/// Flags of `llmrec serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Settings (TOML); defaults are documented in configs/serve.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Any config key, e.g. `--set bind="0.0.0.0:8080"` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// `llmrec llmrec` commands.
#[derive(Debug, Subcommand)]
pub enum LlmRecCommand {
    /// Run the prompts of the chosen strategies for every item (engagement
    /// neighbours by personalized PageRank on training interactions), cached and
    /// resumable, into a versioned artifact.
    Augment(LlmRecAugmentArgs),
    /// Train the content MLP on the original text and each augmentation (the pass
    /// chosen on validation NDCG@10), read test once, and score the baselines on
    /// the same split.
    Eval(LlmRecEvalArgs),
}

/// The settings and dataset every `llmrec llmrec` command reads.
#[derive(Debug, Args)]
pub struct LlmRecInput {
    /// Settings (TOML); defaults are documented in configs/llm_rec.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Any config key, e.g. `--set augment.strategies=["eng"]` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Registered dataset (leave-one-out split).
    #[arg(long, default_value = "ml-1m-sas")]
    pub dataset: String,
}

/// Flags of `llmrec llmrec augment`.
#[derive(Debug, Args)]
pub struct LlmRecAugmentArgs {
    /// Settings and dataset.
    #[command(flatten)]
    pub input: LlmRecInput,
    /// LLM backend.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Persistent cache (default: ~/.cache/llmrec/cache.redb or $LLMREC_CACHE_DIR/cache.redb).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Root of augmentation artifacts (ROOT/<dataset>/<model>/prompt-v<N>/).
    #[arg(long, default_value = "artifacts/llm-rec")]
    pub out: PathBuf,
}

/// Flags of `llmrec llmrec eval`.
#[derive(Debug, Args)]
pub struct LlmRecEvalArgs {
    /// Settings and dataset.
    #[command(flatten)]
    pub input: LlmRecInput,
    /// An artifact of `llmrec llmrec augment` (needed by every row but `original`
    /// and `repeat-N`).
    #[arg(long)]
    pub augment_dir: Option<PathBuf>,
    /// A SASRec checkpoint (`RUN/best`) to score on the same split.
    #[arg(long)]
    pub sasrec: Option<PathBuf>,
    /// all-MiniLM-L6-v2's folder (default: resolved as `llmrec models` says).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Go on in this run folder: models already trained there are read, not
    /// trained again.
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

/// `llmrec rating` commands.
#[derive(Debug, Subcommand)]
pub enum RatingCommand {
    /// Global mean, user and item biases and biased MF, chosen on validation.
    Baselines(RatingBaselinesArgs),
    /// Zero- and few-shot LLM prompts (parsed and expected-rating readouts) on a
    /// seeded sample of test rows, with the baselines scored on the same rows.
    Llm(RatingLlmArgs),
    /// all-MiniLM-L6-v2 fine-tuned with a regression head and a 5-class head on
    /// texts of training rows, the pass chosen on validation, scored on test rows
    /// beside the baselines.
    Finetune(RatingFinetuneArgs),
    /// Chat JSONL of training rows (the zero-shot prompt, answered by the stars)
    /// for LoRA fine-tuning of the local LLM: `llmrec lm finetune --data FILE`, then
    /// `llmrec rating llm --adapter RUN/best`.
    ExportSft(RatingExportSftArgs),
}

/// The settings and data every `llmrec rating` and `llmrec kar` command reads.
#[derive(Debug, Args)]
pub struct Ml1mInput {
    /// Settings (TOML); defaults are documented in configs/rating.toml (`rating`)
    /// and configs/kar.toml (`kar`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Any config key, e.g. `--set finetune.lr=1e-4` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The MovieLens 1M folder (default: `$LLMREC_DATA_DIR/ml-1m`).
    #[arg(long)]
    pub ml1m_dir: Option<PathBuf>,
}

/// Flags of `llmrec rating export-sft` (the prompt holds `llm.history` ratings; the
/// rows are drawn with `finetune.seed`).
#[derive(Debug, Args)]
pub struct RatingExportSftArgs {
    /// Settings and data.
    #[command(flatten)]
    pub input: Ml1mInput,
    /// Share of the training rows exported (seeded).
    #[arg(long, default_value_t = 0.001)]
    pub share: f64,
    /// The JSONL file written.
    #[arg(long)]
    pub out: PathBuf,
}

/// Flags of `llmrec rating finetune`.
#[derive(Debug, Args)]
pub struct RatingFinetuneArgs {
    /// Settings and data.
    #[command(flatten)]
    pub input: Ml1mInput,
    /// all-MiniLM-L6-v2's folder (default: resolved as `llmrec models` says).
    #[arg(long)]
    pub encoder: Option<PathBuf>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Go on in this run folder (a run cut off resumes each model from its `last/`).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

/// Flags of `llmrec rating llm`.
#[derive(Debug, Args)]
pub struct RatingLlmArgs {
    /// Settings and data.
    #[command(flatten)]
    pub input: Ml1mInput,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// LLM backend.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Persistent cache (default: ~/.cache/llmrec/cache.redb or $LLMREC_CACHE_DIR/cache.redb).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// Flags of `llmrec rating baselines`.
#[derive(Debug, Args)]
pub struct RatingBaselinesArgs {
    /// Settings and data.
    #[command(flatten)]
    pub input: Ml1mInput,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

/// `llmrec lm` commands.
#[derive(Debug, Subcommand)]
pub enum LmCommand {
    /// LoRA fine-tuning of the local GGUF model on chat JSONL (e.g. `palr export-sft`).
    Finetune(LmFinetuneArgs),
    /// Write the base model with an adapter merged in as a GGUF file (llama.cpp serves it).
    Export(LmExportArgs),
}

/// Flags of `llmrec lm finetune`. Each overrides the config file.
#[derive(Debug, Args)]
pub struct LmFinetuneArgs {
    /// Chat JSONL: one `{"messages": [...]}` a line, the last message the answer.
    #[arg(long)]
    pub data: PathBuf,
    /// Base GGUF model (default: SmolLM2-135M-Instruct, resolved as `llmrec models` says).
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// Settings (TOML); defaults are documented in configs/lm-finetune.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Resume from a run's `last/` folder; the run goes on in that run's folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Any config key, e.g. `--set lora.rank=16` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

/// Flags of `llmrec lm export`.
#[derive(Debug, Args)]
pub struct LmExportArgs {
    /// The adapter folder (a run's `best/` or `last/`); without it, `--format hf`
    /// writes the base model alone.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// Base GGUF model the adapter was trained on (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// Where to write: a GGUF file (`--format gguf`) or a folder (`--format hf`).
    #[arg(long)]
    pub out: PathBuf,
    /// `gguf`: one merged GGUF file (llama.cpp, this backend); `hf`: a folder in the
    /// Hugging Face layout (`model.safetensors` in f32, `config.json`, tokenizer
    /// files) for vLLM, TGI or transformers.
    #[arg(long, value_enum, default_value_t = ExportFormat::Gguf)]
    pub format: ExportFormat,
}

/// What `llmrec lm export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One merged GGUF file.
    Gguf,
    /// A Hugging Face model folder (safetensors).
    Hf,
}

/// `llmrec bench` commands.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// SASRec training throughput per loss, full-ranking evaluation time, peak memory.
    Sasrec(BenchSasrecArgs),
}

/// Flags of `llmrec bench sasrec`.
#[derive(Debug, Args)]
pub struct BenchSasrecArgs {
    /// Dataset name.
    #[arg(long, default_value = "ml-1m-sas")]
    pub dataset: String,
    /// Losses to time (comma-separated): ce, bce, gbce.
    #[arg(long, value_delimiter = ',', default_value = "ce,bce,gbce")]
    pub loss: Vec<String>,
    /// Epochs per loss (the mean time per epoch is reported).
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Worker threads (0 = all cores).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Device: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Any `[train]` key of configs/sasrec.toml, e.g. `--set train.model.hidden=64`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

/// `llmrec palr` commands.
#[derive(Debug, Subcommand)]
pub enum PalrCommand {
    /// Rerank the retriever's candidates with the LLM and compare with it on the same users.
    Eval(Box<PalrEvalArgs>),
    /// Write the "Recommend" (v1) and "Recommend_Retrieval" (v2) instruction data as JSONL.
    ExportSft(PalrSftArgs),
    /// Fine-tune the local LLM on that data (LoRA), leaving out the evaluation users;
    /// evaluate with `palr eval --adapter RUN/lora/best`.
    Finetune(PalrFinetuneArgs),
}

/// Flags of `llmrec palr finetune`. Each overrides the config file.
#[derive(Debug, Args)]
pub struct PalrFinetuneArgs {
    /// Run config (TOML): its `[sft]`, `[palr]` (which users are held out for
    /// evaluation) and `[finetune]` sections (see configs/palr.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset name.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Base GGUF model (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// Resume from a run's `lora/last/` folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Any config key, e.g. `--set finetune.max_examples=512` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

/// Flags of `llmrec palr eval`. Each overrides the config file.
#[derive(Debug, Args)]
pub struct PalrEvalArgs {
    /// Run config (TOML); defaults are documented in configs/palr.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset name.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Users evaluated (a seeded sample; 0 = all).
    #[arg(long)]
    pub users: Option<usize>,
    /// Seed of the user sample.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Ranking modes (comma-separated): generate, constrained, logprob.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    /// SASRec checkpoint folder (default: artifacts/<dataset>/palr-sasrec/best,
    /// trained first if missing).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Any config key, e.g. `--set palr.candidates=20` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// LLM backend.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Persistent cache (default: ~/.cache/llmrec/cache.redb or $LLMREC_CACHE_DIR/cache.redb).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

/// Flags of `llmrec palr export-sft`.
#[derive(Debug, Args)]
pub struct PalrSftArgs {
    /// Run config (TOML); its `[sft]` section (see configs/palr.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset name.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Any config key, e.g. `--set sft.windows=3` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output folder (default: artifacts/<dataset>/palr-sft).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// `llmrec llm` commands.
#[derive(Debug, Subcommand)]
pub enum LlmCommand {
    /// One chat turn.
    Chat(ChatArgs),
    /// Many prompts from JSONL, resumable through the cache.
    Batch(BatchArgs),
}

/// Which LLM backend.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendArg {
    /// The embedded GGUF model on the CPU (SmolLM2-135M-Instruct by default).
    Local,
    /// Any OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama, OpenAI).
    Openai,
}

/// Which backend, and where its model is.
#[derive(Debug, Args)]
pub struct BackendArgs {
    /// Backend.
    #[arg(long, value_enum, default_value = "local")]
    pub backend: BackendArg,
    /// Local GGUF file (default: resolved; see `llmrec models`).
    #[arg(long)]
    pub model_path: Option<PathBuf>,
    /// LoRA adapter folder (`llmrec lm finetune`'s `best/`) merged into the local
    /// model at load.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    /// OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1.
    #[arg(long)]
    pub base_url: Option<String>,
    /// Model name on the server.
    #[arg(long)]
    pub model: Option<String>,
    /// Environment variable holding the API key (never logged).
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
}

/// Backend and sampling flags.
#[derive(Debug, Args)]
pub struct LlmBackendArgs {
    /// Backend.
    #[command(flatten)]
    pub select: BackendArgs,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Flags of `llmrec llm chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Backend and sampling.
    #[command(flatten)]
    pub backend: LlmBackendArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
    /// The user message.
    pub prompt: String,
}

/// Flags of `llmrec llm batch`.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// Backend and sampling (used for lines without their own "params").
    #[command(flatten)]
    pub backend: LlmBackendArgs,
    /// JSONL of {"id": .., "messages": [{"role": "user", "content": ..}], "params"?: {..}}.
    #[arg(long)]
    pub input: PathBuf,
    /// JSONL output, one line per input line, in input order.
    #[arg(long)]
    pub output: PathBuf,
    /// Persistent cache (default: ~/.cache/llmrec/cache.redb or $LLMREC_CACHE_DIR/cache.redb).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Calls in flight.
    #[arg(long, default_value_t = 1)]
    pub concurrency: usize,
    /// Prompts decoded together per call (local backend batching).
    #[arg(long, default_value_t = 8)]
    pub group: usize,
}

/// `llmrec tiger` steps.
#[derive(Debug, Subcommand)]
pub enum TigerCommand {
    /// Learn Semantic IDs from item-text embeddings (RQ-VAE, or the LSH/random baselines).
    SemanticIds(TigerArgs),
    /// Train the seq2seq model (making Semantic IDs first unless --ids is given), then evaluate.
    Train(TigerArgs),
    /// Evaluate a trained checkpoint (full ranking, leave-one-out).
    Eval(TigerArgs),
    /// Average the weights of checkpoints of one network into a new checkpoint folder.
    Average(TigerAverageArgs),
}

/// Flags of `llmrec tiger average`.
#[derive(Debug, Args)]
pub struct TigerAverageArgs {
    /// Dataset name (the checkpoints must belong to it).
    #[arg(long, default_value = "amazon-beauty")]
    pub dataset: String,
    /// Checkpoint folders to average (comma-separated or repeated; at least two), e.g.
    /// copies of a run's `last/` after several epochs.
    #[arg(long, value_delimiter = ',', required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// The averaged checkpoint folder to write (for `tiger eval --checkpoint`).
    #[arg(long)]
    pub out: PathBuf,
}

/// Flags shared by the TIGER steps.
#[derive(Debug, Args)]
pub struct TigerCommon {
    /// Dataset name.
    #[arg(long, default_value = "amazon-beauty")]
    pub dataset: String,
    /// Run config (TOML); defaults documented in configs/tiger-cpu.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// ID scheme: rq-vae, rq-kmeans, lsh or random.
    #[arg(long)]
    pub scheme: Option<String>,
    /// Stop training after the epoch in which this many seconds have passed.
    #[arg(long)]
    pub max_seconds: Option<f64>,
    /// Flags every training command shares.
    #[command(flatten)]
    pub run: RunFlags,
}

/// Flags every training command shares; each overrides the config file.
#[derive(Debug, Args)]
pub struct RunFlags {
    /// Device: cpu, cuda or cuda:N (cuda needs a build with the `cuda` feature).
    #[arg(long)]
    pub device: Option<String>,
    /// Maximum training epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Any config key (repeatable), e.g. `--set train.lr=0.001`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

/// Flags of `llmrec tiger ...`.
#[derive(Debug, Args)]
pub struct TigerArgs {
    /// Shared flags.
    #[command(flatten)]
    pub common: TigerCommon,
    /// Item embeddings artifact (default: artifacts/<dataset>/items.all-MiniLM-L6-v2.emb).
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// Semantic-ID table to train on (from `tiger semantic-ids`).
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Checkpoint folder (for `tiger eval`).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Continue a stopped `tiger train` from its `RUN/train/last` checkpoint folder, in
    /// that run folder (with the checkpoint's Semantic IDs unless --ids is given).
    #[arg(long)]
    pub resume: Option<PathBuf>,
}

/// Flags of `llmrec embed`.
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Dataset name.
    #[arg(long)]
    pub dataset: String,
    /// Explicit model folder (default: resolved; see `llmrec models`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output artifact (default: artifacts/<dataset>/items.all-MiniLM-L6-v2.emb).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
    /// Persistent cache (default: ~/.cache/llmrec/cache.redb or $LLMREC_CACHE_DIR/cache.redb).
    #[arg(long)]
    pub cache: Option<PathBuf>,
}

/// Flags of `llmrec models`.
#[derive(Debug, Args)]
pub struct ModelsArgs {}

/// Models `llmrec train` knows.
#[derive(Debug, Subcommand)]
pub enum TrainCommand {
    /// SASRec (self-attentive sequential recommendation), in candle.
    Sasrec(TrainArgs),
}

/// Loss on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LossArg {
    /// Binary cross-entropy, one sampled negative per position (original SASRec).
    Bce,
    /// Full softmax cross-entropy over all items.
    Ce,
    /// gSASRec's generalised BCE (256 negatives, t = 0.75 unless configured).
    Gbce,
}

/// Flags of `llmrec train sasrec`. Each overrides the config file.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Run config (TOML); defaults are documented in configs/sasrec.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset name.
    #[arg(long)]
    pub dataset: Option<String>,
    /// Loss.
    #[arg(long, value_enum)]
    pub loss: Option<LossArg>,
    /// Seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (0 = all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Resume from a run's `last/` folder; the run goes on in that run's folder.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Flags every training command shares.
    #[command(flatten)]
    pub run: RunFlags,
}

/// Flags of `llmrec datasets`.
#[derive(Debug, Args)]
pub struct DatasetsArgs {
    /// Only these datasets (comma-separated); default: all registered.
    #[arg(long, value_delimiter = ',')]
    pub name: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Ranking protocol on the command line.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProtocolArg {
    /// Rank against all items (default).
    Full,
    /// Rank against sampled uniform negatives (older papers only).
    SampledUniform,
    /// Rank against popularity-sampled negatives (older papers only).
    SampledPop,
}

/// What a tie in score between a target and other items is worth.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TiesArg {
    /// Every tied item ranks ahead of the target (default).
    Pessimistic,
    /// The exact expectation over a random order of each tied block.
    Expected,
}

/// Which held-out part to evaluate.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum StageArg {
    /// Validation items (history = training part).
    Valid,
    /// Test items (history = training + validation).
    Test,
}

/// Flags of `llmrec eval`. Each overrides the config file.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Run config (TOML); defaults are documented in configs/eval.toml.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset name (see `llmrec datasets`).
    #[arg(long)]
    pub dataset: Option<String>,
    /// Models to fit and evaluate, comma-separated (mostpop, itemknn, bpr, ease,
    /// and sasrec with --checkpoint).
    #[arg(long, value_delimiter = ',')]
    pub model: Vec<String>,
    /// Seed for every stochastic step.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Cutoffs, comma-separated (e.g. 5,10,20).
    #[arg(long, value_delimiter = ',')]
    pub ks: Vec<usize>,
    /// Ranking protocol.
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,
    /// Negatives per user for the sampled protocols.
    #[arg(long)]
    pub negatives: Option<usize>,
    /// Keep history items in the ranking (default: excluded).
    #[arg(long)]
    pub keep_history: bool,
    /// What a tie in score with the target is worth (default: pessimistic,
    /// every tied item ranks ahead of the target).
    #[arg(long, value_enum)]
    pub ties: Option<TiesArg>,
    /// Evaluate on validation or test items.
    #[arg(long, value_enum, default_value = "test")]
    pub stage: StageArg,
    /// Also write per-user ranks and top lists (JSONL).
    #[arg(long)]
    pub per_user: bool,
    /// Checkpoint folder for `--model sasrec` (a `best/` or `last/` folder of a training run).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Any config key, e.g. `--set models.ease.lambda=250` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[test]
    fn every_command_line_is_consistent() {
        // Duplicate flags, bad defaults and conflicting flattened groups panic here.
        Cli::command().debug_assert();
    }

    #[test]
    fn rating_commands_share_their_input_flags() {
        let cli = Cli::try_parse_from([
            "llmrec",
            "rating",
            "finetune",
            "--config",
            "c.toml",
            "--set",
            "finetune.lr=1e-4",
            "--ml1m-dir",
            "d",
        ])
        .unwrap();
        let Command::Rating(RatingCommand::Finetune(a)) = cli.command else {
            panic!("not rating finetune");
        };
        assert_eq!(a.input.config, Some(PathBuf::from("c.toml")));
        assert_eq!(a.input.set, vec!["finetune.lr=1e-4".to_string()]);
        assert_eq!(a.input.ml1m_dir, Some(PathBuf::from("d")));
        assert!(Cli::try_parse_from(["llmrec", "rating", "export-sft"]).is_err());
    }
}
