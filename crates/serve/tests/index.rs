//! The vector indexes against exact search: the embedded Qdrant engine for
//! real, in a temp folder; the Qdrant REST client against a small stand-in
//! server that speaks the four REST calls it uses.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use llmrec_core::Error;
use llmrec_serve::index::{ExactIndex, QdrantEdgeIndex, QdrantIndex, VectorIndex};
use serde_json::{Value, json};

/// `n` seeded pseudo-random rows of width `dim` (no two items tie).
fn rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut s = seed;
    (0..n * dim)
        .map(|_| {
            s = s
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        })
        .collect()
}

/// Every item's top `k` from `ix` equals exact search's, scores within 1e-5.
fn assert_same(ix: &dyn VectorIndex, exact: &ExactIndex, k: usize) {
    assert_eq!(ix.len(), exact.len());
    for i in 0..exact.len() as u32 {
        let a = ix.similar(i, k).unwrap();
        let b = exact.similar(i, k).unwrap();
        let ids = |v: &[(u32, f32)]| v.iter().map(|x| x.0).collect::<Vec<_>>();
        assert_eq!(ids(&a), ids(&b), "item {i}");
        for (x, y) in a.iter().zip(&b) {
            assert!((x.1 - y.1).abs() < 1e-5, "item {i}: {} vs {}", x.1, y.1);
        }
    }
    assert!(ix.similar(exact.len() as u32, 1).is_err());
}

#[test]
fn the_embedded_qdrant_engine_finds_what_exact_search_finds_and_rebuilds_when_stale() {
    let (n, dim) = (300, 16);
    let data = rows(n, dim, 7);
    let exact = ExactIndex::new(data.clone(), dim).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard");

    let ix = QdrantEdgeIndex::open_or_build(&dir, "fp-1", &data, dim).unwrap();
    assert_eq!(ix.name(), "qdrant-edge");
    assert_same(&ix, &exact, 10);
    drop(ix);
    let stamp = std::fs::read_to_string(dir.join("llmrec-index.json")).unwrap();

    // Reopened from disk: the stamp matches, nothing is rebuilt.
    let ix = QdrantEdgeIndex::open_or_build(&dir, "fp-1", &data, dim).unwrap();
    assert_same(&ix, &exact, 7);
    drop(ix);
    assert_eq!(
        std::fs::read_to_string(dir.join("llmrec-index.json")).unwrap(),
        stamp
    );

    // New vectors for the same dataset: the shard is rebuilt from them.
    let data2 = rows(n, dim, 8);
    let exact2 = ExactIndex::new(data2.clone(), dim).unwrap();
    let ix = QdrantEdgeIndex::open_or_build(&dir, "fp-1", &data2, dim).unwrap();
    assert_same(&ix, &exact2, 10);
    drop(ix);

    // A build cut short leaves no stamp: the next start builds again.
    std::fs::remove_file(dir.join("llmrec-index.json")).unwrap();
    let ix = QdrantEdgeIndex::open_or_build(&dir, "fp-1", &data2, dim).unwrap();
    assert_same(&ix, &exact2, 5);
    assert!(QdrantEdgeIndex::open_or_build(&dir, "fp-1", &data2[..5], dim).is_err());
}

/// The stand-in server's collections: name -> (width, vectors by id).
type Collections = Arc<Mutex<HashMap<String, (usize, HashMap<u64, Vec<f32>>)>>>;

async fn info(State(c): State<Collections>, Path(name): Path<String>) -> (StatusCode, Json<Value>) {
    let c = c.lock().unwrap();
    match c.get(&name) {
        Some((dim, pts)) => (
            StatusCode::OK,
            Json(json!({"result": {"points_count": pts.len(),
                "config": {"params": {"vectors": {"size": dim, "distance": "Cosine"}}}}})),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"status": {"error": format!("Collection `{name}` doesn't exist!")}})),
        ),
    }
}

async fn create(
    State(c): State<Collections>,
    Path(name): Path<String>,
    Json(b): Json<Value>,
) -> Json<Value> {
    assert_eq!(b["vectors"]["distance"], "Cosine");
    let dim = b["vectors"]["size"].as_u64().unwrap() as usize;
    c.lock().unwrap().insert(name, (dim, HashMap::new()));
    Json(json!({"result": true, "status": "ok"}))
}

async fn upsert(
    State(c): State<Collections>,
    Path(name): Path<String>,
    Json(b): Json<Value>,
) -> Json<Value> {
    let mut c = c.lock().unwrap();
    let (_, pts) = c.get_mut(&name).unwrap();
    for p in b["points"].as_array().unwrap() {
        let v: Vec<f32> = serde_json::from_value(p["vector"].clone()).unwrap();
        pts.insert(p["id"].as_u64().unwrap(), v);
    }
    Json(json!({"result": {"status": "completed"}, "status": "ok"}))
}

/// Query by point id: cosine against that point's vector, the point itself
/// left out (as Qdrant does), best first.
async fn query(
    State(c): State<Collections>,
    Path(name): Path<String>,
    Json(b): Json<Value>,
) -> Json<Value> {
    let c = c.lock().unwrap();
    let (_, pts) = &c[&name];
    let id = b["query"].as_u64().unwrap();
    let cos = |a: &[f32], b: &[f32]| {
        let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        d / (n(a) * n(b))
    };
    let q = &pts[&id];
    let mut hits: Vec<(u64, f32)> = pts
        .iter()
        .filter(|(j, _)| **j != id)
        .map(|(j, v)| (*j, cos(q, v)))
        .collect();
    hits.sort_by(|a, b| b.1.total_cmp(&a.1));
    hits.truncate(b["limit"].as_u64().unwrap() as usize);
    let points: Vec<Value> = hits
        .iter()
        .map(|(j, s)| json!({"id": j, "version": 0, "score": s}))
        .collect();
    Json(json!({"result": {"points": points}, "status": "ok"}))
}

fn stand_in_qdrant(rt: &tokio::runtime::Runtime) -> (String, Collections) {
    let cols: Collections = Arc::default();
    let app = axum::Router::new()
        .route("/collections/{name}", get(info).put(create))
        .route("/collections/{name}/points", put(upsert))
        .route("/collections/{name}/points/query", post(query))
        .with_state(cols.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move { axum::serve(listener, app).await });
    (url, cols)
}

#[test]
fn the_qdrant_client_fills_a_missing_collection_searches_it_and_refuses_a_mismatch() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (url, cols) = stand_in_qdrant(&rt);
    let (n, dim) = (600, 8);
    let data = rows(n, dim, 3);
    let exact = ExactIndex::new(data.clone(), dim).unwrap();
    let t = Duration::from_secs(10);

    // Missing: created and filled in batches, then searched by point id.
    let ix = QdrantIndex::connect(&url, "items", None, t, &data, dim).unwrap();
    assert_eq!(ix.name(), "qdrant");
    assert_eq!(cols.lock().unwrap()["items"].1.len(), n);
    assert_same(&ix, &exact, 10);

    // Present and matching: used as it is.
    let ix = QdrantIndex::connect(&url, "items", None, t, &data, dim).unwrap();
    assert_same(&ix, &exact, 3);

    // Present with other contents: refused, naming the setting; left alone.
    let err = QdrantIndex::connect(&url, "items", None, t, &data[..dim * 10], dim)
        .err()
        .unwrap();
    assert!(
        matches!(&err, Error::Config { field, .. } if field == "index.collection"),
        "{err}"
    );
    assert_eq!(cols.lock().unwrap()["items"].1.len(), n);
    assert!(QdrantIndex::connect(&url, "bad name", None, t, &data, dim).is_err());

    // Nobody listening: a clear error naming the address and the setting.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = QdrantIndex::connect(&dead, "items", None, t, &data, dim)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains(&dead) && err.contains("index.url"), "{err}");
}
