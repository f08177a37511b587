//! Times TIGER training steps (forward, backward, AdamW) on the CPU with the fused kernels
//! and with candle's primitive ops, in one process, on synthetic data of Beauty's shape
//! (12,101 items, 3 levels x 256 codes, histories of up to 20 items, batch 256).
//!
//! `cargo run --release -p llmrec-models --example bench_tiger -- [cpu|paper] [steps]`

use std::time::Instant;

use candle_core::Device;
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use llmrec_core::{ItemId, Rng};
use llmrec_models::semantic_ids;
use llmrec_models::tiger::{self, TigerConfig, TrainBatch, Vocab};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let shape = args.get(1).map_or("cpu", String::as_str);
    let steps: usize = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let cfg = match shape {
        // configs/tiger-cpu.toml
        "cpu" => TigerConfig {
            d_model: 64,
            heads: 4,
            head_dim: 16,
            d_ff: 256,
            encoder_layers: 2,
            decoder_layers: 2,
            ..TigerConfig::default()
        },
        // configs/tiger-paper.toml (the defaults)
        "paper" => TigerConfig::default(),
        other => return Err(format!("shape `{other}`: expected cpu or paper").into()),
    };
    let n_items = 12_101;
    let ids = semantic_ids::random_ids(n_items, 3, 256, 42)?;
    let vocab = Vocab::new(&ids, cfg.user_buckets);
    let mut rng = Rng::new(7);
    // Beauty's training examples: history lengths 1..=20, most of them short.
    let hists: Vec<Vec<ItemId>> = (0..256 * 4)
        .map(|_| {
            let len = 1 + (rng.next_f32() * rng.next_f32() * 20.0) as usize;
            (0..len)
                .map(|_| rng.below(n_items as u64) as ItemId)
                .collect()
        })
        .collect();
    let batches: Vec<TrainBatch> = hists
        .chunks(256)
        .enumerate()
        .map(|(c, chunk)| {
            let ex: Vec<(Option<u32>, &[ItemId], ItemId)> = chunk
                .iter()
                .enumerate()
                .map(|(i, h)| (Some((c * 256 + i) as u32), &h[..], h[0]))
                .collect();
            TrainBatch::new(&ex, &ids.codes, &vocab, cfg.max_history, &Device::Cpu)
        })
        .collect::<Result<_, _>>()?;
    println!(
        "shape {shape}, {steps} steps of batch 256 each, threads: {}",
        rayon::current_num_threads()
    );
    println!("| kernels | s/step | examples/s |");
    println!("|---|---|---|");
    for fused in [true, false, true, false] {
        let (mut model, vars) = tiger::new_model(&cfg, &vocab, 1, &Device::Cpu)?;
        model.set_fused(fused);
        let mut opt = AdamW::new(
            vars.all_vars(),
            ParamsAdamW {
                lr: 1e-3,
                ..Default::default()
            },
        )?;
        let mut drop_rng = Rng::new(3);
        // One warm-up step.
        opt.backward_step(&model.loss(&batches[0], Some(&mut drop_rng))?)?;
        let t0 = Instant::now();
        for s in 0..steps {
            let loss = model.loss(&batches[s % batches.len()], Some(&mut drop_rng))?;
            opt.backward_step(&loss)?;
        }
        let dt = t0.elapsed().as_secs_f64() / steps as f64;
        let name = if fused { "fused" } else { "candle ops" };
        println!("| {name} | {dt:.3} | {:.0} |", 256.0 / dt);
    }
    Ok(())
}
