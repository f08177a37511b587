//! `llmrec`: a thin entry point. Flags become typed settings in `args`, and
//! each command builds its pipeline from those settings.

#![forbid(unsafe_code)]

mod args;
mod cmd_bench;
mod cmd_datasets;
mod cmd_embed;
mod cmd_eval;
mod cmd_kar;
mod cmd_llm;
mod cmd_llm_rec;
mod cmd_lm;
mod cmd_palr;
mod cmd_rating;
mod cmd_serve;
mod cmd_tiger;
mod cmd_train;
mod config;
mod output;
mod progress;
mod setup;

use clap::Parser;

fn main() {
    let cli = args::Cli::parse();
    let result = match cli.command {
        args::Command::Datasets(a) => cmd_datasets::run(&a),
        args::Command::Eval(a) => cmd_eval::run(&a),
        args::Command::Train(args::TrainCommand::Sasrec(a)) => cmd_train::run(&a),
        args::Command::Embed(a) => cmd_embed::run(&a),
        args::Command::Models(a) => cmd_embed::models(&a),
        args::Command::Tiger(c) => cmd_tiger::run(&c),
        args::Command::Llm(c) => cmd_llm::run(&c),
        args::Command::Palr(c) => cmd_palr::run(&c),
        args::Command::Lm(c) => cmd_lm::run(&c),
        args::Command::Rating(c) => cmd_rating::run(&c),
        args::Command::Kar(c) => cmd_kar::run(&c),
        args::Command::LlmRec(c) => cmd_llm_rec::run(&c),
        args::Command::Serve(a) => cmd_serve::run(&a),
        args::Command::Bench(args::BenchCommand::Sasrec(a)) => cmd_bench::sasrec(&a),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
