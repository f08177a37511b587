//! The service over a real socket: every route with good and bad input, the
//! OpenAPI document against the routes, and the bounded LLM queue under overload.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{agent, get, post, start, start_with_index};
use serde_json::{Value, json};

fn field(v: &Value) -> &str {
    v["error"]["field"].as_str().unwrap_or("")
}

#[test]
fn every_route_answers_good_input_and_names_the_field_of_bad_input() {
    let s = start(Duration::ZERO, 8);
    assert_eq!(get(&s, "/healthz"), (200, "ok".to_string()));
    let (st, ready) = get(&s, "/readyz");
    let ready: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(st, 200);
    assert_eq!(ready["models"], json!(["ease", "mostpop"]));
    assert_eq!(ready["llm"], "fake");

    // Recommend for a known user: 5 items, none from the user's history, with
    // the default model and its latency breakdown.
    let (st, r) = post(&s, "/v1/recommend", r#"{"user_id": "u0", "k": 5}"#);
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["model"], "ease");
    let items = r["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    let (_, u0) = get(&s, "/v1/users/u0");
    let u0: Value = serde_json::from_str(&u0).unwrap();
    let seen: Vec<&Value> = u0["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["id"])
        .collect();
    assert_eq!(seen.len(), 5);
    assert!(items.iter().all(|i| !seen.contains(&&i["id"])));
    // User 0 has 5 of the first half's 6 items: EASE puts the sixth first.
    assert!(items[0]["id"].as_u64().unwrap() < 6, "{r}");
    assert!(items[0]["score"].as_f64().unwrap() > items[1]["score"].as_f64().unwrap());
    assert!(r["latency_ms"]["total_ms"].as_f64().unwrap() >= 0.0);

    // A history by raw and internal ids; another model; history kept.
    let (st, r) = post(
        &s,
        "/v1/recommend",
        r#"{"history": ["i7", 8], "k": 3, "model": "mostpop", "exclude_seen": false}"#,
    );
    assert_eq!((st, r["model"].as_str()), (200, Some("mostpop")), "{r}");
    assert_eq!(r["items"].as_array().unwrap().len(), 3);

    // Bad input: 4xx naming the field.
    for (body, want_field) in [
        (r#"{"user_id": "nobody"}"#, "user_id"),
        (r#"{"history": []}"#, "history"),
        (r#"{"history": ["i1", "zz"]}"#, "history[1]"),
        (r#"{"history": [99]}"#, "history[0]"),
        (r#"{"user_id": "u1", "k": 0}"#, "k"),
        (r#"{"user_id": "u1", "k": 21}"#, "k"),
        (r#"{"user_id": "u1", "model": "nope"}"#, "model"),
        (r#"{"user_id": "u1", "colour": "red"}"#, "colour"),
        (r#"{"user_id": "u1", "k": "ten"}"#, "body"),
        (r#"{"user_id": "u1", "history": ["i1"]}"#, "user_id"),
        (r#"{}"#, "history"),
        (r#"{"user_id": "#, "body"),
    ] {
        let (st, r) = post(&s, "/v1/recommend", body);
        assert_eq!(st, 400, "{body}: {r}");
        assert_eq!(field(&r), want_field, "{body}: {r}");
    }
    // A body over the limit is refused with a 4xx.
    let big = format!(r#"{{"history": [{}]}}"#, vec!["1"; 3000].join(","));
    let (st, _) = post(&s, "/v1/recommend", &big);
    assert_eq!(st, 413);

    // PALR reranking: the LLM's two picks first, the hallucinated title counted.
    let (st, r) = post(
        &s,
        "/v1/recommend",
        r#"{"user_id": "u0", "k": 4, "rerank": "palr"}"#,
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["validity"]["valid"], 2);
    assert_eq!(r["validity"]["hallucinated"], 1);
    let (_, plain) = post(&s, "/v1/recommend", r#"{"user_id": "u0", "k": 20}"#);
    let p = plain["items"].as_array().unwrap();
    let got: Vec<&Value> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["id"])
        .collect();
    assert_eq!(got[..2], [&p[1]["id"], &p[0]["id"]]);
    assert_eq!(got[2..], [&p[2]["id"], &p[3]["id"]]);
    // Asked again: both LLM answers come from the cache.
    let calls = s.llm.calls.load(Ordering::SeqCst);
    let (_, again) = post(
        &s,
        "/v1/recommend",
        r#"{"user_id": "u0", "k": 4, "rerank": "palr"}"#,
    );
    assert_eq!(again["validity"]["cached"], true);
    assert_eq!(s.llm.calls.load(Ordering::SeqCst), calls);

    // /v1/rerank and /v1/explain.
    let (st, r) = post(
        &s,
        "/v1/rerank",
        r#"{"history": ["i0", "i1"], "candidates": ["i2", "i3", "i4"], "k": 2}"#,
    );
    assert_eq!(st, 200, "{r}");
    let ids: Vec<&str> = r["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["raw_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["i3", "i2"]);
    let (st, r) = post(&s, "/v1/rerank", r#"{"history": ["i0"], "candidates": []}"#);
    assert_eq!((st, field(&r)), (400, "candidates"));
    let (st, r) = post(
        &s,
        "/v1/explain",
        r#"{"history": ["i0", "i1"], "item": "i2"}"#,
    );
    assert_eq!(st, 200, "{r}");
    assert_eq!(r["explanation"], "Because it is like the others.");
    assert_eq!(r["item"]["raw_id"], "i2");
    let (st, r) = post(&s, "/v1/explain", r#"{"history": ["i0"], "item": "nope"}"#);
    assert_eq!((st, field(&r)), (400, "item"));

    // Items, neighbours and users.
    let (st, it) = get(&s, "/v1/items/i3");
    let it: Value = serde_json::from_str(&it).unwrap();
    assert_eq!((st, it["title"].as_str()), (200, Some("Item 3")));
    let (st, sim) = get(&s, "/v1/items/i3/similar?k=3");
    let sim: Value = serde_json::from_str(&sim).unwrap();
    assert_eq!(st, 200);
    let near: Vec<u64> = sim["similar"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_u64().unwrap())
        .collect();
    assert_eq!(near.len(), 3);
    assert!(near.iter().all(|&j| j < 6 && j != 3), "{near:?}");
    assert_eq!(get(&s, "/v1/items/nope").0, 404);
    assert_eq!(get(&s, "/v1/items/i3/similar?k=0").0, 400);
    assert_eq!(get(&s, "/v1/items/i3/similar?k=abc").0, 400);
    assert_eq!(get(&s, "/v1/users/nobody").0, 404);
    assert_eq!(get(&s, "/v1/nothing").0, 404);

    // Metrics count what happened.
    let (st, m) = get(&s, "/metrics");
    assert_eq!(st, 200);
    assert!(
        m.contains("llmrec_requests_total{route=\"/v1/recommend\",status=\"200\"}"),
        "{m}"
    );
    assert!(
        m.contains("llmrec_requests_total{route=\"/v1/recommend\",status=\"400\"} 12"),
        "{m}"
    );
    assert!(m.contains("llmrec_llm_cache_hits_total 2"), "{m}");
    assert!(m.contains("llmrec_llm_queue_depth 0"), "{m}");

    // The demo page is served.
    let (st, page) = get(&s, "/");
    assert_eq!(st, 200);
    assert!(page.contains("/v1/recommend"));
    drop(s);
}

#[test]
fn the_openapi_document_lists_exactly_the_routes() {
    let s = start(Duration::ZERO, 8);
    let (st, doc) = get(&s, "/openapi.json");
    assert_eq!(st, 200);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // The constraints the handlers enforce are stated: k in 1..=max_k (20 here),
    // items named by an internal id >= 0 or a non-empty raw id.
    let schemas = &doc["components"]["schemas"];
    for s in ["RecommendRequest", "RerankRequest"] {
        let k = &schemas[s]["properties"]["k"];
        assert_eq!(
            (&k["minimum"], &k["maximum"]),
            (&json!(1), &json!(20)),
            "{s}: {k}"
        );
    }
    let params = doc["paths"]["/v1/items/{id}/similar"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let k = params.iter().find(|p| p["name"] == "k").unwrap();
    assert_eq!(
        (&k["in"], &k["schema"]["maximum"]),
        (&json!("query"), &json!(20))
    );
    assert_eq!(k["schema"]["minimum"], json!(1));
    let forms = schemas["ItemRef"]["oneOf"].as_array().unwrap();
    assert!(
        forms
            .iter()
            .any(|f| f["type"] == "integer" && f["minimum"] == json!(0)),
        "{forms:?}"
    );
    assert!(
        forms
            .iter()
            .any(|f| f["type"] == "string" && f["minLength"] == json!(1)),
        "{forms:?}"
    );
    let mut listed: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            listed.push((method.clone(), path.clone()));
        }
    }
    listed.sort();
    let mut routes: Vec<(String, String)> = llmrec_serve::api::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    routes.sort();
    assert_eq!(listed, routes);
    // Every listed route exists on the server (no 404 or 405 from the router).
    for (m, p) in &routes {
        let path = p
            .replace("{id}", "i1")
            .replace("/v1/users/i1", "/v1/users/u1");
        let st = if m == "get" {
            get(&s, &path).0
        } else {
            post(&s, &path, "{}").0
        };
        assert!(st != 404 && st != 405, "{m} {path}: {st}");
    }
    // Every schema a path refers to is defined.
    let text = doc.to_string();
    for part in text.split("\"#/components/schemas/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(doc["components"]["schemas"].get(name).is_some(), "{name}");
    }
}

#[test]
fn overload_gets_prompt_503s_and_the_service_recovers() {
    // One worker and one waiting slot; each LLM call takes 1 s: a refusal must come well before.
    let s = start(Duration::from_millis(1000), 1);
    let base = s.base.clone();
    let cached = r#"{"history": ["i0"], "item": "i9"}"#;
    let (st, first) = post(&s, "/v1/explain", cached);
    assert_eq!((st, &first["cached"]), (200, &json!(false)), "{first}");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let t0 = std::time::Instant::now();
                let mut r = agent()
                    .post(&format!("{base}/v1/explain"))
                    .header("content-type", "application/json")
                    .send(format!(r#"{{"history": ["i0"], "item": {i}}}"#))
                    .unwrap();
                let retry = r.headers().get("retry-after").is_some();
                let _ = r.body_mut().read_to_string();
                (r.status().as_u16(), retry, t0.elapsed())
            })
        })
        .collect();
    // While the queue is full, an answer already in the cache is served at once.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = std::time::Instant::now();
    let (st, again) = post(&s, "/v1/explain", cached);
    assert_eq!((st, &again["cached"]), (200, &json!(true)), "{again}");
    assert_eq!(again["explanation"], first["explanation"]);
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    let out: Vec<(u16, bool, Duration)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = out.iter().filter(|o| o.0 == 200).count();
    let busy: Vec<_> = out.iter().filter(|o| o.0 == 503).collect();
    assert_eq!(ok + busy.len(), 8, "{out:?}");
    assert!(ok >= 2 && !busy.is_empty(), "{out:?}");
    // Refusals are immediate and say when to retry.
    assert!(
        busy.iter().all(|o| o.1 && o.2 < Duration::from_millis(800)),
        "{out:?}"
    );
    let (_, m) = get(&s, "/metrics");
    assert!(m.contains("llmrec_llm_queue_depth 0"), "{m}");
    assert!(
        m.contains(&format!("llmrec_llm_rejected_total {}", busy.len())),
        "{m}"
    );
    // Load gone: the next request is served.
    let (st, _) = post(&s, "/v1/explain", r#"{"history": ["i0"], "item": "i5"}"#);
    assert_eq!(st, 200);
    let _ = &s.rt;
}

#[test]
fn similar_items_through_the_embedded_qdrant_engine_match_exact_search() {
    let exact = start(Duration::ZERO, 8);
    let edge = start_with_index(
        Duration::ZERO,
        8,
        llmrec_serve::config::IndexSettings {
            backend: llmrec_serve::config::IndexBackend::QdrantEdge,
            ..Default::default()
        },
    );
    // The shard is built beside the embeddings file.
    assert!(
        edge.dir
            .path()
            .join("items.emb.qdrant-edge/llmrec-index.json")
            .exists()
    );
    for id in ["i0", "i4", "i7", "i11"] {
        let (sa, a) = get(&exact, &format!("/v1/items/{id}/similar?k=4"));
        let (sb, b) = get(&edge, &format!("/v1/items/{id}/similar?k=4"));
        assert_eq!((sa, sb), (200, 200), "{a} {b}");
        let (a, b): (Value, Value) = (
            serde_json::from_str(&a).unwrap(),
            serde_json::from_str(&b).unwrap(),
        );
        assert_eq!(
            (&a["index"], &b["index"]),
            (&json!("exact"), &json!("qdrant-edge"))
        );
        let ids = |v: &Value| {
            v["similar"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x["id"].clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids(&a), ids(&b), "{id}");
    }
}
