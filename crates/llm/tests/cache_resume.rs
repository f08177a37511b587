//! The batch runner resumes after `kill -9`: a child process (this test binary,
//! re-run with an environment switch) is killed in the middle of a batch, and
//! the rerun recomputes nothing that was stored.

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use llmrec_llm::{
    BatchJob, Cache, FinishReason, Generation, Llm, LogProb, Message, SamplingParams, run_batch,
};

const CHILD_ENV: &str = "LLMREC_TEST_RESUME_CHILD";
const N: usize = 60;

/// A slow fake backend that records which prompts it computed.
struct Fake {
    delay: Duration,
    calls: Mutex<Vec<String>>,
}

impl Llm for Fake {
    fn backend(&self) -> &str {
        "fake"
    }
    fn model(&self) -> &str {
        "echo"
    }
    fn chat(&self, messages: &[Message], _p: &SamplingParams) -> llmrec_core::Result<Generation> {
        std::thread::sleep(self.delay);
        let text = messages[0].content.to_uppercase();
        self.calls.lock().unwrap().push(messages[0].content.clone());
        Ok(Generation {
            text,
            prompt_tokens: 3,
            completion_tokens: 2,
            latency_ms: self.delay.as_secs_f64() * 1e3,
            finish: FinishReason::Stop,
        })
    }
    fn score_continuations(
        &self,
        _: &[Message],
        _: &[String],
    ) -> llmrec_core::Result<Vec<LogProb>> {
        unimplemented!()
    }
    fn generate_constrained(&self, _: &[Message], _: &[String]) -> llmrec_core::Result<String> {
        unimplemented!()
    }
}

fn jobs() -> Vec<BatchJob> {
    (0..N)
        .map(|i| BatchJob {
            id: format!("job{i}"),
            messages: vec![Message::user(format!("prompt number {i}"))],
            params: SamplingParams::greedy(8),
        })
        .collect()
}

/// In the child: run the batch slowly, logging each finished job after it is stored.
fn child(db: &Path) {
    let cache = Cache::open(db).unwrap();
    let fake = Fake {
        delay: Duration::from_millis(40),
        calls: Mutex::new(Vec::new()),
    };
    let log = Mutex::new(std::fs::File::create(db.with_extension("log")).unwrap());
    run_batch(&fake, &cache, &jobs(), 3, &|p| {
        let mut f = log.lock().unwrap();
        writeln!(f, "{}", p.done).unwrap();
        f.flush().unwrap();
    })
    .unwrap();
}

#[test]
fn resume_after_kill_9() {
    if let Some(db) = std::env::var_os(CHILD_ENV) {
        child(Path::new(&db));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("cache.redb");
    let exe = std::env::current_exe().unwrap();
    let mut c = Command::new(exe)
        .args([
            "--exact",
            "resume_after_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let log = db.with_extension("log");
    let t0 = Instant::now();
    loop {
        let lines = std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0);
        if lines >= 15 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "child made no progress"
        );
        assert!(c.try_wait().unwrap().is_none(), "child exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
    c.kill().unwrap(); // SIGKILL
    let status = c.wait().unwrap();
    assert!(
        !status.success(),
        "child should have been killed, not finished"
    );

    let cache = Cache::open(&db).unwrap();
    let stored = cache.generation_count().unwrap() as usize;
    assert!((15..N).contains(&stored), "stored {stored}");
    let fake = Fake {
        delay: Duration::ZERO,
        calls: Mutex::new(Vec::new()),
    };
    let res = run_batch(&fake, &cache, &jobs(), 4, &|_| {}).unwrap();
    let calls: HashSet<String> = fake.calls.into_inner().unwrap().into_iter().collect();
    assert_eq!(
        calls.len(),
        N - stored,
        "rerun must compute exactly what was not stored"
    );
    let cached = res.iter().filter(|r| r.cached).count();
    assert_eq!(cached, stored);
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r.id, format!("job{i}"));
        let g = r.result.as_ref().unwrap();
        assert_eq!(g.text, format!("PROMPT NUMBER {i}"));
        if r.cached {
            assert!(!calls.contains(&format!("prompt number {i}")));
        }
    }
    // A third run is all hits.
    let fake = Fake {
        delay: Duration::ZERO,
        calls: Mutex::new(Vec::new()),
    };
    let res = run_batch(&fake, &cache, &jobs(), 2, &|_| {}).unwrap();
    assert!(res.iter().all(|r| r.cached));
    assert!(fake.calls.into_inner().unwrap().is_empty());
}

#[test]
fn embeddings_roundtrip_in_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::open(tmp.path().join("c.redb")).unwrap();
    cache
        .put_embeddings("m", &[("hello", &[1.0, 2.0]), ("x", &[-0.5, 0.25])])
        .unwrap();
    assert_eq!(
        cache.get_embedding("m", "x").unwrap(),
        Some(vec![-0.5, 0.25])
    );
    assert_eq!(cache.get_embedding("other", "x").unwrap(), None);
}
