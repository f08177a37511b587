//! The OpenAI-compatible backend against a real HTTP server on 127.0.0.1
//! started by the test, scripted per request.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use llmrec_llm::openai::{OpenAiConfig, OpenAiLlm};
use llmrec_llm::{Llm, Message, SamplingParams};

#[derive(Clone)]
enum Reply {
    Json(u16, Vec<(&'static str, &'static str)>, String),
    Truncated,
    Slow(Duration),
}

struct Server {
    url: String,
    requests: Arc<Mutex<Vec<(String, String, String)>>>, // path, authorization, body
    max_in_flight: Arc<AtomicUsize>,
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

fn read_request(s: &mut TcpStream) -> Option<(String, String, String)> {
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let (mut len, mut auth) = (0usize, String::new());
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().ok()?,
            "authorization" => auth = v.trim().to_string(),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((path, auth, String::from_utf8_lossy(&body).into_owned()))
}

/// Serves `script[i]` to the i-th request (the last entry repeats), one thread per connection.
fn serve(script: Vec<Reply>, delay: Duration) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", l.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let (req2, inf2, max2) = (requests.clone(), in_flight.clone(), max_in_flight.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let (requests, in_flight, max_in_flight, script) =
                (req2.clone(), inf2.clone(), max2.clone(), script.clone());
            std::thread::spawn(move || {
                let Some(req) = read_request(&mut s) else {
                    return;
                };
                let n = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(n, Ordering::SeqCst);
                let i = {
                    let mut r = requests.lock().unwrap();
                    r.push(req);
                    r.len() - 1
                };
                std::thread::sleep(delay);
                let reply = script[i.min(script.len() - 1)].clone();
                in_flight.fetch_sub(1, Ordering::SeqCst);
                let write = |s: &mut TcpStream,
                             status: u16,
                             headers: &[(&str, &str)],
                             body: &str| {
                    let mut h = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        h.push_str(&format!("{k}: {v}\r\n"));
                    }
                    h.push_str("\r\n");
                    h.push_str(body);
                    let _ = s.write_all(h.as_bytes());
                };
                match reply {
                    Reply::Json(st, hs, body) => write(&mut s, st, &hs, &body),
                    Reply::Truncated => {
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\nConnection: close\r\n\r\n{\"choices\": [{\"mess",
                        );
                    }
                    Reply::Slow(d) => {
                        std::thread::sleep(d);
                        if let Reply::Json(st, hs, b) = ok_chat("late") {
                            write(&mut s, st, &hs, &b)
                        }
                    }
                }
                let _ = s.flush();
            });
        }
    });
    Server {
        url,
        requests,
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
    let reqs = srv.requests.lock().unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].0, "/v1/chat/completions");
    let body: serde_json::Value = serde_json::from_str(&reqs[0].2).unwrap();
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
    assert_eq!(srv.requests.lock().unwrap().len(), 3);
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
    assert_eq!(srv.requests.lock().unwrap().len(), 1);
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
    assert_eq!(srv.requests.lock().unwrap().len(), 1);
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
    assert_eq!(srv.requests.lock().unwrap().len(), 2);
    let srv = serve(vec![Reply::Truncated], Duration::ZERO);
    let mut c = cfg(&srv.url);
    c.max_retries = 1;
    let err = OpenAiLlm::new(c)
        .unwrap()
        .chat(&msgs(), &SamplingParams::greedy(8))
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 tries"), "{err}");
    assert_eq!(srv.requests.lock().unwrap().len(), 2);
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
    assert_eq!(srv.requests.lock().unwrap().len(), 2);
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
    assert_eq!(
        srv.requests.lock().unwrap()[0].1,
        format!("Bearer {secret}")
    );
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
    assert_eq!(srv.requests.lock().unwrap().len(), 6);
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
    let srv = serve(
        vec![reply([-1.0, -0.5]), reply([-3.0, -0.25])],
        Duration::ZERO,
    );
    let llm = OpenAiLlm::new(cfg(&srv.url)).unwrap();
    let allowed = vec!["Heat".to_string(), "Hear".to_string()];
    let s = llm.score_continuations(&msgs(), &allowed).unwrap();
    assert_eq!(s[0].n_tokens, 2);
    assert!((s[0].total + 1.5).abs() < 1e-9 && (s[0].mean + 0.75).abs() < 1e-9);
    assert!((s[1].total + 3.25).abs() < 1e-9);
    let reqs = srv.requests.lock().unwrap();
    assert_eq!(reqs[0].0, "/v1/completions");
    let body: serde_json::Value = serde_json::from_str(&reqs[0].2).unwrap();
    assert_eq!(body["prompt"], format!("{prompt}Heat"));
    assert_eq!(body["echo"], true);
    drop(reqs);
    let srv = serve(
        vec![reply([-3.0, -0.25]), reply([-1.0, -0.5])],
        Duration::ZERO,
    );
    let llm = OpenAiLlm::new(cfg(&srv.url)).unwrap();
    assert_eq!(llm.generate_constrained(&msgs(), &allowed).unwrap(), "Hear");
}
