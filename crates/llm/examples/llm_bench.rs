//! Throughput of the embedder and the local LLM (numbers for BENCHMARKS.md).
//!
//! ```text
//! RUSTFLAGS="-C target-cpu=x86-64-v3" cargo run --release -p llmrec-llm --example llm_bench -- \
//!     [embed|embed-default|gemm|llm|q8|shipped|cache|all] [path/to/ml-1m/movies.dat]
//! ```
//! `q8` and `shipped` are `llm` with one kind of decode weights.
//! Models come from `$LLMREC_MODELS_DIR` (default `./models`); run `scripts/fetch-models.sh`.

use std::time::Instant;

use llmrec_llm::{DecodeWeights, Embedder, KvCache, Llm, LocalConfig, LocalLlm, Message};

fn titles(path: Option<&str>) -> Vec<String> {
    let Some(p) = path.and_then(|p| std::fs::read(p).ok()) else {
        return (0..3883)
            .map(|i| {
                format!(
                    "Synthetic Movie Title Number {i} (199{}) (Comedy, Drama)",
                    i % 10
                )
            })
            .collect();
    };
    // movies.dat is Latin-1: `id::Title (Year)::Genre|Genre`.
    let text: String = p.iter().map(|&b| b as char).collect();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split("::");
            let _id = f.next()?;
            let title = f.next()?;
            let genres = f.next()?.replace('|', ", ");
            Some(format!("{title} ({genres})"))
        })
        .collect()
}

/// `only_default`: just the default kernel at batch 32, five times (for
/// profiling).
fn bench_embed(path: Option<&str>, only_default: bool) -> llmrec_core::Result<()> {
    let texts = titles(path);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let all = [
        (32, true, true),
        (128, true, true),
        (32, true, false),
        (128, true, false),
        (32, false, false),
        (128, false, false),
    ];
    let configs: &[(usize, bool, bool)] = if only_default {
        &[(32, true, true); 5]
    } else {
        &all
    };
    for &(bs, fast, amx) in configs {
        let e = Embedder::minilm(None)?
            .with_batch_size(bs)
            .with_fast_path(fast)
            .with_amx(amx);
        let _ = e.embed(&refs[..64])?; // warm-up
        let t0 = Instant::now();
        let v = e.embed(&refs)?;
        let s = t0.elapsed().as_secs_f64();
        println!(
            "embedder batch {bs} ({}): {} sentences in {s:.2}s = {:.0} sentences/s",
            e.kernel(),
            v.len(),
            v.len() as f64 / s
        );
    }
    Ok(())
}

fn bench_llm(weights: &[DecodeWeights]) -> llmrec_core::Result<()> {
    for &decode in weights {
        let m = LocalLlm::smollm2(
            None,
            LocalConfig {
                decode_weights: decode,
                ..Default::default()
            },
        )?;
        let base = "I watched Toy Story, Heat, Casino and Sabrina last week and liked them. ";
        let text = base.repeat(40);
        let ids = m.encode(&text)?;
        let prompt = &ids[..500.min(ids.len())];
        let _ = m.forward(&prompt[..32], &mut KvCache::default(), false, true)?; // warm-up
        let mut cache = KvCache::default();
        let t0 = Instant::now();
        let logits = m.forward(prompt, &mut cache, false, true)?;
        let tp = t0.elapsed().as_secs_f64();
        let argmax = |l: &candle_core::Tensor| -> u32 {
            let row: Vec<f32> = l.squeeze(0).and_then(|r| r.to_vec1()).unwrap_or_default();
            row.iter()
                .enumerate()
                .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
                .0 as u32
        };
        let mut next = argmax(&logits);
        let n = 128;
        let t1 = Instant::now();
        for _ in 0..n {
            let l = m.forward(&[next], &mut cache, false, false)?;
            next = argmax(&l);
        }
        let tg = t1.elapsed().as_secs_f64();
        println!(
            "llm {decode:?} (load {:.2}s): prompt {} tok in {tp:.2}s = {:.0} tok/s; generated {n} tok = {:.1} tok/s",
            m.load_secs(),
            prompt.len(),
            prompt.len() as f64 / tp,
            n as f64 / tg
        );
        if decode != DecodeWeights::F32 {
            // Many users: 16 short prompts, 64 tokens each, batched vs one at a time.
            let prompts: Vec<Vec<u32>> = (0..16)
                .map(|i| m.encode(&format!("<|im_start|>user\nUser {i} liked Heat. Describe them.<|im_end|>\n<|im_start|>assistant\n")))
                .collect::<llmrec_core::Result<_>>()?;
            let params: Vec<llmrec_llm::SamplingParams> = (0..16)
                .map(|_| llmrec_llm::SamplingParams {
                    max_tokens: 64,
                    temperature: 0.7,
                    seed: 1,
                    ..Default::default()
                })
                .collect();
            for batched in [true, false] {
                let t0 = Instant::now();
                let gens: Vec<_> = if batched {
                    m.generate_batch(&prompts, &params)
                } else {
                    prompts
                        .iter()
                        .zip(&params)
                        .map(|(p, s)| m.generate_ids(p, s))
                        .collect()
                };
                let toks: usize = gens
                    .iter()
                    .map(|g| g.as_ref().map_or(0, |g| g.completion_tokens))
                    .sum();
                let s = t0.elapsed().as_secs_f64();
                println!(
                    "llm 16 users, {}: {toks} generated tok in {s:.2}s = {:.1} tok/s (prompts included)",
                    if batched { "batched" } else { "sequential" },
                    toks as f64 / s
                );
            }
            // As llama.cpp's `llama-batched-bench -npp 32 -ntg 64 -npl 16`:
            // 16 prompts of 32 tokens, then 64 greedy tokens each, no early stop.
            let (npl, npp, ntg) = (16, 32, 64);
            let t0 = Instant::now();
            let mut caches = Vec::with_capacity(npl);
            let mut next = Vec::with_capacity(npl);
            for i in 0..npl {
                let (c, l) = m.prefill(&ids[i * 7..i * 7 + npp])?;
                caches.push(c);
                next.push(argmax(&l));
            }
            let tpp = t0.elapsed().as_secs_f64();
            let t1 = Instant::now();
            for _ in 0..ntg {
                let l = m.decode_step_batch(&next, &mut caches)?;
                next = (0..npl)
                    .map(|i| l.narrow(0, i, 1).map(|r| argmax(&r)))
                    .collect::<candle_core::Result<_>>()
                    .map_err(|e| llmrec_core::Error::Invalid(e.to_string()))?;
            }
            let ttg = t1.elapsed().as_secs_f64();
            println!(
                "llm batched-bench npp {npp} ntg {ntg} npl {npl}: prompts {:.0} tok/s, generation {:.1} tok/s, generated tok / total time {:.1} tok/s",
                (npl * npp) as f64 / tpp,
                (npl * ntg) as f64 / ttg,
                (npl * ntg) as f64 / (tpp + ttg)
            );
            // Ranking: a ~300-token prompt and 20 candidate titles.
            let history =
                "Toy Story (1995), Heat (1995), Casino (1995), Sabrina (1995), ".repeat(12);
            let msgs = vec![
                Message::system("You rank movies for a user."),
                Message::user(format!("The user watched: {history}. Which movie next?")),
            ];
            let cands: Vec<String> = (0..20)
                .map(|i| format!("Candidate Movie {i} (19{})", 70 + i))
                .collect();
            let t0 = Instant::now();
            let s = m.score_continuations(&msgs, &cands)?;
            println!(
                "llm score_continuations: prompt {} tok + {} candidates ({} tok) in {:.2}s",
                m.encode(&m.render_chat(&msgs, true))?.len(),
                s.len(),
                s.iter().map(|x| x.n_tokens).sum::<usize>(),
                t0.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Cache hit latency: `Cache::get_generation` of a stored key, averaged over 1,000 hits.
fn bench_cache() -> llmrec_core::Result<()> {
    let dir = std::env::temp_dir().join(format!("llmrec-cache-bench-{}", std::process::id()));
    let cache = llmrec_llm::Cache::open(dir.join("cache.redb"))?;
    let msgs = vec![Message::user("Recommend a movie like Heat (1995).")];
    let params = llmrec_llm::SamplingParams::default();
    let mut stored = None;
    for i in 0..1000 {
        let key = llmrec_llm::cache::generation_key("local", &format!("m{i}"), &msgs, &params);
        let g = llmrec_llm::Generation {
            text: "Casino (1995)".repeat(8),
            prompt_tokens: 40,
            completion_tokens: 32,
            latency_ms: 100.0,
            finish: llmrec_llm::FinishReason::Stop,
        };
        cache.put_generation(&key, &g)?;
        stored = Some(key);
    }
    let Some(key) = stored else { return Ok(()) };
    let _ = cache.get_generation(&key)?; // warm-up
    let n = 1000;
    let t0 = Instant::now();
    let mut hits = 0;
    for _ in 0..n {
        hits += usize::from(cache.get_generation(&key)?.is_some());
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("cache hit: {hits}/{n} hits, {us:.1} µs per get_generation (1,000 stored)");
    drop(cache);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> llmrec_core::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map_or("all", String::as_str);
    let path = args.get(2).map(String::as_str);
    if what == "gemm" {
        for (m, n, k) in [
            (400, 1152, 384),
            (400, 1536, 384),
            (400, 384, 1536),
            (1600, 1536, 384),
            (1600, 384, 1536),
        ] {
            for threads in [1, 2] {
                for (name, g) in llmrec_kernels::bench_linear(m, n, k, threads) {
                    println!("gemm m {m} n {n} k {k}, {threads} threads, {name}: {g:.0} GFLOP/s");
                }
            }
        }
    }
    if what == "embed" || what == "all" {
        bench_embed(path, false)?;
    }
    if what == "embed-default" {
        bench_embed(path, true)?;
    }
    if what == "llm" || what == "all" {
        bench_llm(&[
            DecodeWeights::Shipped,
            DecodeWeights::Q8_0,
            DecodeWeights::F32,
            DecodeWeights::Candle,
        ])?;
    }
    if what == "q8" {
        bench_llm(&[DecodeWeights::Q8_0])?;
    }
    if what == "shipped" {
        bench_llm(&[DecodeWeights::Shipped])?;
    }
    if what == "cache" || what == "all" {
        bench_cache()?;
    }
    Ok(())
}
