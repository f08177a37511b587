//! Hub download, the last step of model resolution, against a real HTTP server
//! on 127.0.0.1. Environment variables are process-global, so every case runs
//! in this one test function, in order.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use llmrec_llm::resolve::{ModelRef, resolve, resolve_local};

/// Serves `files` (URL path → body); `/trunc/` paths announce more bytes than
/// they send; anything else is a 404. Returns the base URL and a request counter.
fn serve(files: HashMap<String, Vec<u8>>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            c.fetch_add(1, Ordering::SeqCst);
            let line = String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let _ = match files.get(&path) {
                Some(body) if path.contains("/trunc/") => s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len() + 100
                    )
                    .as_bytes(),
                )
                .and_then(|()| s.write_all(body)),
                Some(body) => s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .and_then(|()| s.write_all(body)),
                None => s.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found",
                ),
            };
        }
    });
    (base, count)
}

fn model(repo: &'static str, required: &'static [&'static str], single: bool) -> ModelRef {
    ModelRef {
        name: "tiny",
        hf_repo: repo,
        local_name: required[0],
        required,
        single_file: single,
        wheel: "tiny-model==1",
        download_repo: Some(repo),
    }
}

fn set(k: &str, v: &std::path::Path) {
    // SAFETY: this binary has one test function and no other threads read the environment.
    unsafe { std::env::set_var(k, v) };
}

fn unset(k: &str) {
    // SAFETY: as in `set`.
    unsafe { std::env::remove_var(k) };
}

#[test]
fn hub_download_then_cache_then_errors_and_offline() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut files = HashMap::new();
    files.insert(
        "/acme/tiny/resolve/main/config.json".to_string(),
        b"{\"a\":1}".to_vec(),
    );
    files.insert(
        "/acme/tiny/resolve/main/weights.bin".to_string(),
        vec![7u8; 70_000],
    );
    files.insert(
        "/acme/tiny-GGUF/resolve/main/tiny.Q4.gguf".to_string(),
        b"GGUF....".to_vec(),
    );
    files.insert(
        "/acme/trunc/resolve/main/t.gguf".to_string(),
        b"short".to_vec(),
    );
    let (base, count) = serve(files);
    for k in ["HF_HUB_CACHE", "LLMREC_OFFLINE", "HF_HUB_OFFLINE"] {
        unset(k);
    }
    set("HF_ENDPOINT", std::path::Path::new(&format!("{base}/")));
    set("HF_HOME", &tmp.path().join("hf"));
    set("LLMREC_MODELS_DIR", &tmp.path().join("empty-models"));
    let hub = tmp.path().join("hf/hub");

    // A folder model: every required file is downloaded into the HF cache layout.
    let folder = model("acme/tiny", &["config.json", "weights.bin"], false);
    assert!(resolve_local(&folder, None).is_err());
    assert_eq!(
        count.load(Ordering::SeqCst),
        0,
        "resolve_local reached the network"
    );
    let got = resolve(&folder, None).expect("downloaded");
    let snap = hub.join("models--acme--tiny/snapshots/main");
    assert_eq!(got, snap);
    assert_eq!(
        std::fs::read(snap.join("config.json")).expect("config"),
        b"{\"a\":1}"
    );
    assert_eq!(
        std::fs::read(snap.join("weights.bin"))
            .expect("weights")
            .len(),
        70_000
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let leftovers: Vec<_> = std::fs::read_dir(&snap)
        .expect("snapshot")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    // Second time: found in the cache, no request.
    assert_eq!(resolve(&folder, None).expect("cached"), snap);
    assert_eq!(count.load(Ordering::SeqCst), 2);

    // A single-file (GGUF) model resolves to the file.
    let gguf = model("acme/tiny-GGUF", &["tiny.Q4.gguf"], true);
    let got = resolve(&gguf, None).expect("gguf downloaded");
    assert_eq!(
        got,
        hub.join("models--acme--tiny-GGUF/snapshots/main/tiny.Q4.gguf")
    );
    assert_eq!(std::fs::read(&got).expect("gguf"), b"GGUF....");
    assert_eq!(count.load(Ordering::SeqCst), 3);

    // 404: the clear Missing error, with what to fetch and the URL tried.
    let missing = model("acme/missing", &["m.gguf"], true);
    let err = resolve(&missing, None).expect_err("404").to_string();
    let url = format!("{base}/acme/missing/resolve/main/m.gguf");
    assert!(err.contains(&url), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("scripts/fetch-models.sh"), "{err}");
    assert!(err.contains("tiny-model==1"), "{err}");
    assert!(
        !hub.join("models--acme--missing/snapshots/main/m.gguf")
            .exists()
    );
    assert_eq!(count.load(Ordering::SeqCst), 4);

    // A truncated body is an error and leaves no file behind.
    let trunc = model("acme/trunc", &["t.gguf"], true);
    let err = resolve(&trunc, None).expect_err("truncated").to_string();
    assert!(err.contains("acme/trunc/resolve/main/t.gguf"), "{err}");
    let dir = hub.join("models--acme--trunc/snapshots/main");
    let left = std::fs::read_dir(&dir).map_or(0, |d| d.count());
    assert_eq!(left, 0, "files left in {}", dir.display());
    assert_eq!(count.load(Ordering::SeqCst), 5);

    // Offline: no request, and the error says why and what to fetch.
    let fresh = model("acme/fresh", &["f.gguf"], true);
    for var in ["LLMREC_OFFLINE", "HF_HUB_OFFLINE"] {
        set(var, std::path::Path::new("1"));
        let err = resolve(&fresh, None).expect_err("offline").to_string();
        assert!(err.contains("LLMREC_OFFLINE"), "{err}");
        assert!(err.contains("scripts/fetch-models.sh"), "{err}");
        assert!(err.contains("acme/fresh/resolve/main/f.gguf"), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 5, "{var}=1 made a request");
        unset(var);
    }
    // ... while the cached model still resolves offline.
    set("LLMREC_OFFLINE", std::path::Path::new("1"));
    assert_eq!(resolve(&folder, None).expect("cached offline"), snap);
    unset("LLMREC_OFFLINE");
}
