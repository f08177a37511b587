//! The OpenAI-compatible backend against a real HTTP server on 127.0.0.1
//! started by the test, scripted per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use llmrec_llm::openai::{OpenAiConfig, OpenAiLlm};
use llmrec_llm::{Llm, Message, MockReply, MockRequest, MockServer, SamplingParams};

#[derive(Clone)]
enum Reply {
    Json(u16, Vec<(&'static str, &'static str)>, String),
    Truncated,
    Slow(Duration),
}

struct Server {
    inner: MockServer,
    url: String,
    max_in_flight: Arc<AtomicUsize>,
}

impl Server {
    fn requests(&self) -> Vec<MockRequest> {
        self.inner.requests()
    }
}

fn ok_chat(text: &str) -> Reply {
    Reply::Json(
        200,
        vec![],
        serde_json::json!({
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3}
        })
        .to_string(),
    )
}

/// Serves `script[i]` to the i-th request (the last entry repeats), after `delay`.
fn serve(script: Vec<Reply>, delay: Duration) -> Server {
    let count = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let max2 = max_in_flight.clone();
    let inner = MockServer::start(move |_req| {
        let i = count.fetch_add(1, Ordering::SeqCst);
        let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        max2.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(delay);
        in_flight.fetch_sub(1, Ordering::SeqCst);
        let raw = |r: Reply| match r {
            Reply::Json(status, headers, body) => MockReply::Raw {
                status,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                body,
            },
            _ => MockReply::Truncated,
        };
        match script[i.min(script.len() - 1)].clone() {
            Reply::Slow(d) => {
                std::thread::sleep(d);
                raw(ok_chat("late"))
            }
            r => raw(r),
        }
    })
    .unwrap();
    Server {
        url: inner.url().to_string(),
        inner,
        max_in_flight,
    }
}

fn cfg(url: &str) -> OpenAiConfig {
    OpenAiConfig {
        base_url: url.to_string(),
        model: "test-model".into(),
        api_key_env: None,
        timeout: Duration::from_secs(5),
        max_retries: 3,
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_secs(5),
        concurrency: 4,
        ..Default::default()
    }
}

fn msgs() -> Vec<Message> {
    vec![Message::user("Recommend a movie")]
}

#[test]
fn retries_429_honouring_retry_after_then_succeeds() {
    let srv = serve(
        vec![
            Reply::Json(
                429,
                vec![("Retry-After", "1")],
                r#"{"error":{"message":"slow down"}}"#.into(),
            ),
            ok_chat("Heat (1995)"),
        ],
        Duration::ZERO,
    );
    let llm = OpenAiLlm::new(cfg(&srv.url)).unwrap();
    let t0 = Instant::now();
    let g = llm.chat(&msgs(), &SamplingParams::greedy(8)).unwrap();
    assert_eq!(g.text, "Heat (1995)");
    assert_eq!((g.prompt_tokens, g.completion_tokens), (11, 3));
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "Retry-After ignored"
    );
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    let body = &reqs[0].body;
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["messages"][0]["role"], "user");
}

#[test]
fn persistent_500_gives_up_quoting_server() {
    let srv = serve(
        vec![Reply::Json(
            500,
            vec![],
            r#"{"error":{"message":"CUDA out of memory"}}"#.into(),
        )],
        Duration::ZERO,
    );
    let mut c = cfg(&srv.url);
    c.max_retries = 2;
    let err = OpenAiLlm::new(c)
        .unwrap()
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 500") && err.contains("CUDA out of memory"),
        "{err}"
    );
    assert!(err.contains("3 tries"), "{err}");
    assert_eq!(srv.requests().len(), 3);
}

#[test]
fn client_error_is_not_retried() {
    let srv = serve(
        vec![Reply::Json(
            404,
            vec![],
            r#"{"error":{"message":"model `test-model` does not exist"}}"#.into(),
        )],
        Duration::ZERO,
    );
    let err = OpenAiLlm::new(cfg(&srv.url))
        .unwrap()
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 404") && err.contains("does not exist"),
        "{err}"
    );
    assert_eq!(srv.requests().len(), 1);
}

#[test]
fn malformed_json_is_a_clear_error() {
    let srv = serve(
        vec![Reply::Json(200, vec![], "{\"choices\": [oops".into())],
        Duration::ZERO,
    );
    let err = OpenAiLlm::new(cfg(&srv.url))
        .unwrap()
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("malformed JSON") && err.contains("oops"),
        "{err}"
    );
    assert_eq!(srv.requests().len(), 1);
    // Valid JSON of the wrong shape.
    let srv = serve(
        vec![Reply::Json(200, vec![], r#"{"result": 1}"#.into())],
        Duration::ZERO,
    );
    let err = OpenAiLlm::new(cfg(&srv.url))
        .unwrap()
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap_err()
        .to_string();
    assert!(err.contains("choices[0].message.content"), "{err}");
}

#[test]
fn truncated_body_is_retried_then_reported() {
    let srv = serve(vec![Reply::Truncated, ok_chat("ok")], Duration::ZERO);
    let g = OpenAiLlm::new(cfg(&srv.url))
        .unwrap()
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap();
    assert_eq!(g.text, "ok");
    assert_eq!(srv.requests().len(), 2);
    let srv = serve(vec![Reply::Truncated], Duration::ZERO);
    let mut c = cfg(&srv.url);
    c.max_retries = 1;
    let err = OpenAiLlm::new(c)
        .unwrap()
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 tries"), "{err}");
    assert_eq!(srv.requests().len(), 2);
}

#[test]
fn slow_reply_times_out() {
    let srv = serve(vec![Reply::Slow(Duration::from_secs(2))], Duration::ZERO);
    let mut c = cfg(&srv.url);
    c.timeout = Duration::from_millis(300);
    c.max_retries = 1;
    let t0 = Instant::now();
    let err = OpenAiLlm::new(c)
        .unwrap()
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap_err()
        .to_string();
    assert!(err.contains("timed out"), "{err}");
    assert!(t0.elapsed() < Duration::from_millis(1800));
    assert_eq!(srv.requests().len(), 2);
}

#[test]
fn api_key_is_sent_and_never_shown() {
    let srv = serve(
        vec![Reply::Json(
            401,
            vec![],
            r#"{"error":{"message":"bad key"}}"#.into(),
        )],
        Duration::ZERO,
    );
    let secret = "sk-test-SECRET-1234567890";
    // SAFETY: a variable name only this test uses.
    unsafe { std::env::set_var("LLMREC_TEST_OPENAI_KEY", secret) };
    let mut c = cfg(&srv.url);
    c.api_key_env = Some("LLMREC_TEST_OPENAI_KEY".into());
    let llm = OpenAiLlm::new(c).unwrap();
    let err = llm
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad key") && !err.contains(secret), "{err}");
    assert!(!format!("{llm:?}").contains(secret));
    assert_eq!(srv.requests()[0].authorization, format!("Bearer {secret}"));
}

#[test]
fn concurrency_is_bounded() {
    let srv = serve(vec![ok_chat("x")], Duration::from_millis(100));
    let mut c = cfg(&srv.url);
    c.concurrency = 2;
    let llm = OpenAiLlm::new(c).unwrap();
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| llm.chat(&msgs(), &SamplingParams::greedy(8)).unwrap());
        }
    });
    assert_eq!(srv.requests().len(), 6);
    let m = srv.max_in_flight.load(Ordering::SeqCst);
    assert!((1..=2).contains(&m), "max in flight {m}");
}

#[test]
fn scoring_and_constrained_use_completion_logprobs() {
    // The prompt is echoed: offsets below the prompt's length are not counted.
    let prompt = "<|im_start|>user\nRecommend a movie<|im_end|>\n<|im_start|>assistant\n";
    let p = prompt.chars().count();
    let reply = |lps: [f64; 2]| {
        Reply::Json(
            200,
            vec![],
            serde_json::json!({"choices": [{"text": "", "logprobs": {
                "tokens": ["<prompt>", "He", "at", "<gen>"],
                "token_logprobs": [null, lps[0], lps[1], -0.1],
                "text_offset": [0, p, p + 2, p + 4]
            }}]})
            .to_string(),
        )
    };
    // Answers by the continuation in the prompt: the candidates are scored in
    // parallel, so request order is not answer order.
    let by_prompt = |heat: [f64; 2], hear: [f64; 2]| {
        let (a, b) = (reply(heat), reply(hear));
        let raw = |r: Reply| match r {
            Reply::Json(status, _, body) => MockReply::Raw {
                status,
                headers: vec![],
                body,
            },
            _ => MockReply::Truncated,
        };
        let (a, b) = (raw(a), raw(b));
        MockServer::start(move |req: &MockRequest| {
            let p = req.body["prompt"].as_str().unwrap_or("");
            if p.ends_with("Heat") {
                a.clone()
            } else {
                b.clone()
            }
        })
        .unwrap()
    };
    let srv = by_prompt([-1.0, -0.5], [-3.0, -0.25]);
    let llm = OpenAiLlm::new(cfg(srv.url())).unwrap();
    let allowed = vec!["Heat".to_string(), "Hear".to_string()];
    let s = llm.score_continuations(&msgs(), &allowed).unwrap();
    assert_eq!(s[0].n_tokens, 2);
    assert!((s[0].total + 1.5).abs() < 1e-9 && (s[0].mean + 0.75).abs() < 1e-9);
    assert!((s[1].total + 3.25).abs() < 1e-9);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2);
    assert!(reqs.iter().all(|r| r.path == "/v1/completions"));
    let heat = reqs
        .iter()
        .find(|r| r.body["prompt"] == format!("{prompt}Heat"))
        .expect("a request for Heat");
    assert_eq!(heat.body["echo"], true);
    let srv = by_prompt([-3.0, -0.25], [-1.0, -0.5]);
    let llm = OpenAiLlm::new(cfg(srv.url())).unwrap();
    assert_eq!(llm.generate_constrained(&msgs(), &allowed).unwrap(), "Hear");
}

#[test]
fn parallel_scoring_keeps_order_and_bounds_concurrency() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let (inf, max) = (in_flight.clone(), max_in_flight.clone());
    let srv = MockServer::start(move |req: &MockRequest| {
        let n = inf.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(80));
        inf.fetch_sub(1, Ordering::SeqCst);
        // The continuation is `cK`: its one token gets log-prob -K.
        let p = req.body["prompt"].as_str().unwrap_or("").to_string();
        let k: f64 = p[p.len() - 1..].parse().unwrap_or(99.0);
        let plen = p.chars().count() - 2;
        MockReply::Raw {
            status: 200,
            headers: vec![],
            body: serde_json::json!({"choices": [{"text": "", "logprobs": {
                "tokens": ["<prompt>", "cK"],
                "token_logprobs": [null, -k],
                "text_offset": [0, plen]
            }}]})
            .to_string(),
        }
    })
    .unwrap();
    let mut c = cfg(srv.url());
    c.concurrency = 3;
    let llm = OpenAiLlm::new(c).unwrap();
    let cands: Vec<String> = (1..=7).map(|k| format!("c{k}")).collect();
    let got = llm.score_continuations(&msgs(), &cands).unwrap();
    let totals: Vec<f64> = got.iter().map(|l| l.total).collect();
    assert_eq!(totals, vec![-1.0, -2.0, -3.0, -4.0, -5.0, -6.0, -7.0]);
    assert_eq!(srv.requests().len(), 7);
    let m = max_in_flight.load(Ordering::SeqCst);
    assert!((2..=3).contains(&m), "max in flight {m}");
}
