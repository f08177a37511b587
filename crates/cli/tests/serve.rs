//! `llmrec serve` as a process: killed with SIGKILL while it answers and writes
//! LLM answers to its cache, it restarts on the same cache and gives back every
//! answer it had sent, from the cache, word for word.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Starts `llmrec serve --config cfg` and returns it with its base URL, read
/// from the startup line; stderr keeps draining in a thread.
fn start(cfg: &std::path::Path, data: &str) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_llmrec"))
        .env("LLMREC_DATA_DIR", data)
        .args(["serve", "--config"])
        .arg(cfg)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let base = loop {
        let Some(Ok(line)) = lines.next() else {
            panic!("llmrec serve stopped before serving:\n{}", seen.join("\n"));
        };
        if let Some(rest) = line.split(" on http://").nth(1) {
            let addr = rest.split_whitespace().next().unwrap();
            break format!("http://{addr}");
        }
        seen.push(line);
    };
    std::thread::spawn(move || for _ in lines {});
    (child, base)
}

fn explain(base: &str, item: &str) -> Option<(u16, Value)> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into();
    let body = json!({"history": ["50", "100", "181"], "item": item}).to_string();
    let mut r = agent
        .post(&format!("{base}/v1/explain"))
        .header("content-type", "application/json")
        .send(body.as_str())
        .ok()?;
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().ok()?;
    Some((status, serde_json::from_str(&text).ok()?))
}

#[test]
fn serve_killed_during_cache_writes_keeps_every_answer_it_sent() {
    let Some(data) = llmrec_testkit::data_dir() else {
        return;
    };
    let data = data.display().to_string();
    let dir = tempfile::tempdir().unwrap();
    // A tiny random-weight model: fast, so the server spends much of its time
    // committing answers to the cache when the kill lands.
    let model = dir.path().join("tiny.gguf");
    llmrec_llm::testing::write_tiny_gguf(&model, &llmrec_llm::testing::TinyShape::small("llama"));
    let cfg = dir.path().join("serve.toml");
    std::fs::write(
        &cfg,
        format!(
            "bind = \"127.0.0.1:0\"\ndataset = \"ml-100k\"\n[[models]]\nname = \"mostpop\"\n\
             [llm]\nbackend = \"local\"\nmodel_path = {:?}\ncache = {:?}\nqueue = 64\n\
             explain_max_tokens = 8\n",
            model.display().to_string(),
            dir.path().join("cache.redb").display().to_string()
        ),
    )
    .unwrap();

    let (mut child, base) = start(&cfg, &data);
    let answered: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let clients: Vec<_> = (0..4)
        .map(|t| {
            let (base, answered) = (base.clone(), answered.clone());
            std::thread::spawn(move || {
                for i in 0..40 {
                    let item = (1 + t * 40 + i).to_string();
                    match explain(&base, &item) {
                        Some((200, v)) => {
                            let text = v["explanation"].as_str().unwrap().to_string();
                            answered.lock().unwrap().push((item, text));
                        }
                        Some((s, v)) => panic!("item {item}: HTTP {s}: {v}"),
                        None => return, // the server is gone
                    }
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    while answered.lock().unwrap().len() < 12 {
        assert!(t0.elapsed() < Duration::from_secs(300), "too few answers");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL: no shutdown path runs
    child.wait().unwrap();
    for c in clients {
        c.join().unwrap();
    }
    let before = answered.lock().unwrap().clone();
    assert!(before.len() >= 12 && before.len() < 160, "{}", before.len());

    // Restarted on the same cache: it opens, and every answer sent before the
    // kill comes back from it unchanged.
    let (mut child, base) = start(&cfg, &data);
    for (item, text) in &before {
        let (s, v) = explain(&base, item).unwrap();
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["cached"], true, "item {item} was answered but not kept");
        assert_eq!(v["explanation"].as_str().unwrap(), text, "item {item}");
    }
    // And it goes on answering new requests.
    let (s, v) = explain(&base, "1000").unwrap();
    assert_eq!((s, &v["cached"]), (200, &json!(false)), "{v}");
    child.kill().unwrap();
    child.wait().unwrap();
}
