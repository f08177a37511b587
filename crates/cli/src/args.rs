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
    /// Models to fit and evaluate, comma-separated (mostpop, itemknn, bpr, ease).
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
    /// Evaluate on validation or test items.
    #[arg(long, value_enum, default_value = "test")]
    pub stage: StageArg,
    /// Also write per-user ranks and top lists (JSONL).
    #[arg(long)]
    pub per_user: bool,
    /// Any config key, e.g. `--set models.ease.lambda=250` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Where run folders go.
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
}
