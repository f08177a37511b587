//! End-to-end tests of the `llmrec` binary.

use std::process::Command;

fn llmrec() -> Command {
    Command::new(env!("CARGO_BIN_EXE_llmrec"))
}

/// Runs `llmrec ARGS... OUT` with the data directory set, asserts success
/// (showing stderr otherwise) and returns stdout.
fn run_ok(data: &str, args: &[&str], out: &std::path::Path) -> String {
    let o = llmrec()
        .env("LLMREC_DATA_DIR", data)
        .args(args)
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The datasets folder (a missing one fails the test unless
/// `LLMREC_ALLOW_SKIP=1`; see `llmrec-testkit`).
fn data_dir() -> Option<String> {
    llmrec_testkit::data_dir().map(|d| d.display().to_string())
}

#[test]
fn unknown_dataset_is_a_clear_error() {
    let out = llmrec()
        .args(["eval", "--dataset", "ml-42m", "--out"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown dataset `ml-42m`"), "{err}");
    assert!(err.contains("ml-1m-sas"), "{err}");
}

#[test]
fn unknown_model_and_bad_config_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = llmrec()
        .args(["eval", "--model", "deepfm", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown model `deepfm`"));

    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "seed = 1\n[models.ease]\nlambda = 1.0\nlamda = 2.0\n").unwrap();
    let out = llmrec()
        .args(["eval", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml:4"), "{err}");
    assert!(err.contains("unknown field `lamda`"), "{err}");
}

#[test]
fn eval_writes_table_and_run_folder() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stdout = run_ok(
        &data,
        &[
            "eval",
            "--dataset",
            "ml-100k",
            "--model",
            "mostpop,ease",
            "--ks",
            "10",
            "--per-user",
            "--out",
        ],
        dir.path(),
    );
    assert!(
        stdout.contains("full ranking over all 1682 items"),
        "{stdout}"
    );
    assert!(stdout.contains("| ease"), "{stdout}");
    let run = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["dataset"], "ml-100k");
    assert_eq!(metrics["seed"], 42);
    assert!(
        metrics["split"]
            .as_str()
            .unwrap()
            .starts_with("leave-one-out")
    );
    let results = metrics["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let ease = &results[1];
    assert_eq!(ease["model"], "ease");
    assert_eq!(ease["users"], 943);
    let ndcg = ease["metrics"]["NDCG@10"].as_f64().unwrap();
    let hr = ease["metrics"]["HR@10"].as_f64().unwrap();
    // EASE beats MostPop on ML-100K by a wide margin.
    let pop = results[0]["metrics"]["NDCG@10"].as_f64().unwrap();
    assert!(ndcg > pop * 1.2 && ndcg <= hr, "{ndcg} {pop} {hr}");
    // Per-user file: one line per evaluated user, ranks consistent with HR@10.
    let lines = std::fs::read_to_string(run.join("per_user_ease.jsonl")).unwrap();
    let mut hits = 0;
    let mut n = 0;
    for l in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        n += 1;
        let st = &v["standings"][0];
        let worst_rank = st["ahead"].as_u64().unwrap() + st["tied"].as_u64().unwrap() + 1;
        if worst_rank <= 10 {
            hits += 1;
        }
    }
    assert_eq!(n, 943);
    assert!((hits as f64 / n as f64 - hr).abs() < 1e-9);
    assert!(run.join("config.toml").exists() && run.join("table.md").exists());
}

#[test]
fn sampled_protocol_is_labelled() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stdout = run_ok(
        &data,
        &[
            "eval",
            "--dataset",
            "ml-100k",
            "--model",
            "mostpop",
            "--protocol",
            "sampled-uniform",
            "--out",
        ],
        dir.path(),
    );
    assert!(
        stdout.contains("SAMPLED: each target vs 100 uniform negatives"),
        "{stdout}"
    );
}

#[test]
fn palr_eval_trains_a_retriever_reranks_and_reruns_from_cache() {
    let Some(data) = data_dir() else { return };
    let srv = llmrec_llm::MockServer::start(|req| {
        let p = req.last_message();
        llmrec_llm::MockReply::Chat(if p.contains("Candidates:") {
            "[2]\n[1]\nNot a movie at all".into()
        } else {
            "comedy, 1990s".into()
        })
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        llmrec()
            .current_dir(dir.path())
            .env("LLMREC_DATA_DIR", &data)
            .args([
                "palr",
                "eval",
                "--dataset",
                "ml-100k",
                "--users",
                "6",
                "--modes",
                "generate",
                "--set",
                "retriever.epochs=1",
                "--backend",
                "openai",
                "--model",
                "mock",
                "--base-url",
                srv.url(),
                "--cache",
                "cache.redb",
                "--out",
                "runs",
            ])
            .output()
            .unwrap()
    };
    let out = run();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("training SASRec"), "{stderr}");
    assert!(stdout.contains("| sasrec (retriever) |"), "{stdout}");
    assert!(stdout.contains("| palr-generate |"), "{stdout}");
    assert!(stdout.contains("users: 6"), "{stdout}");
    // Each answer: two valid picks and one hallucination.
    assert!(stdout.contains("| generate | 6 | 0 | 0 |"), "{stdout}");
    assert!(stdout.contains("| 12 | 6 | 0 | 0 |"), "{stdout}");
    assert!(
        dir.path()
            .join("artifacts/ml-100k/palr-sasrec/best/checkpoint.json")
            .exists()
    );
    let again = run();
    let stdout2 = String::from_utf8_lossy(&again.stdout);
    let stderr2 = String::from_utf8_lossy(&again.stderr);
    assert!(stderr2.contains("retriever: SASRec from"), "{stderr2}");
    assert!(
        stdout2.contains("(100% of this run's calls were hits)"),
        "{stdout2}"
    );
    let table = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("| palr") || l.starts_with("| sasrec"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&stdout), table(&stdout2));
}

#[test]
fn palr_export_sft_writes_both_datasets() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        &data,
        &["palr", "export-sft", "--dataset", "ml-100k", "--out"],
        dir.path(),
    );
    for f in ["recommend.jsonl", "recommend_retrieval.jsonl"] {
        let text = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert_eq!(text.lines().count(), 943, "{f}");
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["messages"][0]["role"], "system");
    }
}

#[test]
fn bench_sasrec_reports_throughput_and_eval_time() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let stdout = run_ok(
        &data,
        &[
            "bench",
            "sasrec",
            "--dataset",
            "ml-100k",
            "--loss",
            "bce",
            "--epochs",
            "1",
            "--out",
        ],
        dir.path(),
    );
    assert!(stdout.contains("| bce "), "{stdout}");
    assert!(stdout.contains("943 training sequences"), "{stdout}");
    let run = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("bench.json")).unwrap()).unwrap();
    let r = &v["results"][0];
    assert_eq!(r["eval_users"], 943);
    assert!(r["seconds_per_epoch"].as_f64().unwrap() > 0.0);
    let bad = llmrec()
        .args(["bench", "sasrec", "--loss", "softmax"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown loss `softmax`"));
}

#[test]
fn tiger_average_refuses_missing_and_single_checkpoints() {
    let Some(data) = data_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").display().to_string();
    // Exit code 1 and stderr of `tiger average --checkpoints LIST`.
    let average = |list: &str| {
        let out = llmrec()
            .env("LLMREC_DATA_DIR", &data)
            .args([
                "tiger",
                "average",
                "--dataset",
                "ml-100k",
                "--checkpoints",
                list,
            ])
            .arg("--out")
            .arg(dir.path().join("avg"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = average(&format!("{missing},{missing}"));
    assert!(err.contains("nope/checkpoint.json"), "{err}");
    let err = average(&missing);
    assert!(err.contains("at least two checkpoint folders"), "{err}");
    assert!(!dir.path().join("avg").exists());
}

/// The README's main job (SASRec retriever trained from scratch, then PALR with the
/// local SmolLM2 in three modes), run twice at a tiny size in two fresh folders with
/// two fresh LLM caches: the retriever's weights and the metrics files agree byte for
/// byte.
#[test]
fn main_job_is_bit_reproducible() {
    let Some(data) = data_dir() else { return };
    if llmrec_testkit::smollm2_path().is_none() {
        return;
    }
    let models = llmrec_testkit::models_dir();
    let run = |dir: &std::path::Path| {
        let o = llmrec()
            .current_dir(dir)
            .env("LLMREC_DATA_DIR", &data)
            .env("LLMREC_MODELS_DIR", &models)
            .env("CANDLE_NUM_THREADS", "1")
            .args([
                "palr",
                "eval",
                "--dataset",
                "ml-100k",
                "--users",
                "3",
                "--set",
                "retriever.epochs=1",
                "--set",
                "palr.candidates=10",
                "--cache",
                "cache.redb",
                "--out",
                "runs",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let runs: Vec<_> = std::fs::read_dir(dir.join("runs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(runs.len(), 1);
        let read = |p: std::path::PathBuf| {
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let retriever = dir.join("artifacts/ml-100k/palr-sasrec/best");
        [
            read(retriever.join("weights.safetensors")),
            read(retriever.join("checkpoint.json")),
            read(runs[0].join("metrics.json")),
            read(runs[0].join("per_user.jsonl")),
        ]
    };
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = run(a.path());
    let second = run(b.path());
    let names = [
        "weights",
        "checkpoint.json",
        "metrics.json",
        "per_user.jsonl",
    ];
    for ((x, y), name) in first.iter().zip(&second).zip(names) {
        assert!(!x.is_empty(), "{name} is empty");
        assert!(x == y, "{name} differs between two seeded runs");
    }
    let m: serde_json::Value = serde_json::from_slice(&first[2]).unwrap();
    assert_eq!(m["dataset"], "ml-100k");
    assert_eq!(m["users"], 3);
    assert!(m.get("seconds").is_none());
}

/// `train sasrec --resume RUN/last` goes on in RUN: a resumed run whose validation never
/// improves again (a learning rate too small to move a weight) finishes with the old
/// best epoch and its test metrics, and no second run folder appears.
#[test]
fn resumed_sasrec_run_goes_on_in_its_folder() {
    let Some(data) = data_dir() else { return };
    let out = tempfile::tempdir().unwrap();
    let train = |extra: &[&str]| {
        let o = llmrec()
            .env("LLMREC_DATA_DIR", &data)
            .env("CANDLE_NUM_THREADS", "1")
            .args([
                "train",
                "sasrec",
                "--dataset",
                "ml-100k",
                "--set",
                "train.eval_every=1",
            ])
            .args(extra)
            .arg("--out")
            .arg(out.path())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    train(&["--epochs", "1"]);
    let runs: Vec<_> = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    let best_before = std::fs::read(run.join("best/weights.safetensors")).unwrap();
    let last = run.join("last");
    train(&[
        "--epochs",
        "3",
        "--set",
        "train.lr=1e-30",
        "--resume",
        last.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 3);
    let test: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("test_metrics.json")).unwrap()).unwrap();
    assert_eq!(test["train"]["best_epoch"], 1);
    assert_eq!(
        std::fs::read(run.join("best/weights.safetensors")).unwrap(),
        best_before
    );
    let last_meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(last.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(last_meta["state"]["since_best"], 2);
}

/// `lm finetune` trains adapters on a tiny model and chat JSONL, `llm chat --adapter`
/// loads them merged into the base, `lm export` writes the merged GGUF, and
/// `--adapter` with a server backend is a clear error.
#[test]
fn lm_finetune_then_chat_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("tiny.gguf");
    llmrec_llm::testing::write_tiny_gguf(&base, &llmrec_llm::testing::TinyShape::small("llama"));
    let data = dir.path().join("chats.jsonl");
    let line = |q: &str, a: &str| {
        serde_json::json!({"messages": [
            {"role": "user", "content": q}, {"role": "assistant", "content": a}]})
        .to_string()
    };
    let text: String = (0..6)
        .map(|_| format!("{}\n{}\n", line("a", "1"), line("b", "2")))
        .collect();
    std::fs::write(&data, text).unwrap();
    let run = |args: &[&str]| {
        let o = llmrec().args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let out = dir.path().join("runs");
    let stdout = run(&[
        "lm",
        "finetune",
        "--model-path",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--set",
        "max_examples=0",
        "--set",
        "eval_every_steps=3",
        "--set",
        "epochs=2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        stdout.contains("valid loss") && stdout.contains("best adapter"),
        "{stdout}"
    );
    let runs: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(runs.len(), 1);
    let best = runs[0].join("best");
    assert!(best.join("adapter.safetensors").is_file());
    let chat = run(&[
        "llm",
        "chat",
        "--model-path",
        base.to_str().unwrap(),
        "--adapter",
        best.to_str().unwrap(),
        "--max-tokens",
        "3",
        "a",
    ]);
    assert!(!chat.trim().is_empty(), "{chat}");
    let merged = dir.path().join("merged.gguf");
    run(&[
        "lm",
        "export",
        "--model-path",
        base.to_str().unwrap(),
        "--adapter",
        best.to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert!(merged.is_file());
    let hf = dir.path().join("merged-hf");
    run(&[
        "lm",
        "export",
        "--model-path",
        base.to_str().unwrap(),
        "--adapter",
        best.to_str().unwrap(),
        "--out",
        hf.to_str().unwrap(),
        "--format",
        "hf",
    ]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["model_type"], "llama");
    assert!(hf.join("model.safetensors").is_file() && hf.join("tokenizer.json").is_file());
    let e = llmrec()
        .args([
            "llm",
            "chat",
            "--backend",
            "openai",
            "--base-url",
            "http://127.0.0.1:9/v1",
        ])
        .args(["--model", "m", "--adapter"])
        .arg(&best)
        .arg("hi")
        .output()
        .unwrap();
    assert!(!e.status.success());
    assert!(String::from_utf8_lossy(&e.stderr).contains("--adapter"));
}
