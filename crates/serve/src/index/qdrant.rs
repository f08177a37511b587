//! A Qdrant server or cluster over its REST API: point `i` of a collection is
//! item `i`, searched by cosine with the point's own stored vector as the query.
//!
//! At startup the collection is checked (width and point count against the
//! embeddings); a missing collection is created and filled, a collection that
//! does not match is an error (it is never deleted from here).

use std::time::Duration;

use llmrec_core::{Error, ItemId, Result};
use serde_json::{Value, json};

use super::{VectorIndex, best_k, row_count};

/// Points sent per upload request.
const BATCH: usize = 256;

/// Cosine search in a Qdrant collection over HTTP.
pub struct QdrantIndex {
    agent: ureq::Agent,
    base: String,
    collection: String,
    api_key: Option<String>,
    items: usize,
}

impl QdrantIndex {
    /// Connects to `url` (`http://host:6333`), checks collection `collection`
    /// against `data` (row-major, `dim`-wide rows), and creates and fills it
    /// when it does not exist. `api_key` goes in the `api-key` header.
    pub fn connect(
        url: &str,
        collection: &str,
        api_key: Option<String>,
        timeout: Duration,
        data: &[f32],
        dim: usize,
    ) -> Result<QdrantIndex> {
        let items = row_count(data, dim)?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Error::config(
                "index.url",
                format!("`{url}` is not an http(s) URL"),
            ));
        }
        if collection.is_empty()
            || !collection
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::config(
                "index.collection",
                format!("`{collection}` is not a collection name (letters, digits, - _ .)"),
            ));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let idx = QdrantIndex {
            agent,
            base: url.trim_end_matches('/').to_string(),
            collection: collection.to_string(),
            api_key,
            items,
        };
        let path = format!("/collections/{collection}");
        match idx.call("GET", &path, None)? {
            (200, v) => idx.check(&v, dim)?,
            (404, _) => idx.create_and_fill(data, dim)?,
            (s, v) => return Err(idx.status_error(&path, s, &v)),
        }
        Ok(idx)
    }

    /// One request; `(status, parsed body)`; transport failures name the URL.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let fail = |e: ureq::Error| {
            Error::Network(format!("Qdrant at {url} (index.url) is unreachable: {e}"))
        };
        let mut resp = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(k) = &self.api_key {
                    r = r.header("api-key", k);
                }
                r.call().map_err(fail)?
            }
            (m, b) => {
                let mut r = if m == "PUT" {
                    self.agent.put(&url)
                } else {
                    self.agent.post(&url)
                };
                r = r.header("Content-Type", "application/json");
                if let Some(k) = &self.api_key {
                    r = r.header("api-key", k);
                }
                let text = b.map_or_else(|| "{}".to_string(), Value::to_string);
                r.send(text.as_str()).map_err(fail)?
            }
        };
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().map_err(fail)?;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, v))
    }

    fn status_error(&self, path: &str, status: u16, v: &Value) -> Error {
        let msg = v
            .pointer("/status/error")
            .and_then(Value::as_str)
            .map_or_else(|| v.to_string(), str::to_string);
        Error::Network(format!("Qdrant {}{path}: HTTP {status}: {msg}", self.base))
    }

    fn check(&self, info: &Value, dim: usize) -> Result<()> {
        let size = info
            .pointer("/result/config/params/vectors/size")
            .and_then(Value::as_u64);
        let points = info.pointer("/result/points_count").and_then(Value::as_u64);
        if size != Some(dim as u64) || points != Some(self.items as u64) {
            return Err(Error::config(
                "index.collection",
                format!(
                    "Qdrant collection `{}` holds {} points of width {}, but the embeddings are {} items of width {dim}; name another collection or delete it",
                    self.collection,
                    points.map_or_else(|| "?".into(), |p| p.to_string()),
                    size.map_or_else(|| "?".into(), |s| s.to_string()),
                    self.items
                ),
            ));
        }
        Ok(())
    }

    fn create_and_fill(&self, data: &[f32], dim: usize) -> Result<()> {
        let path = format!("/collections/{}", self.collection);
        let body = json!({"vectors": {"size": dim, "distance": "Cosine"}});
        match self.call("PUT", &path, Some(&body))? {
            (200, _) => {}
            (s, v) => return Err(self.status_error(&path, s, &v)),
        }
        let points_path = format!("{path}/points?wait=true");
        for (b, rows) in data.chunks(BATCH * dim).enumerate() {
            let points: Vec<Value> = rows
                .chunks_exact(dim)
                .enumerate()
                .map(|(j, r)| json!({"id": b * BATCH + j, "vector": r}))
                .collect();
            match self.call("PUT", &points_path, Some(&json!({ "points": points })))? {
                (200, _) => {}
                (s, v) => return Err(self.status_error(&points_path, s, &v)),
            }
        }
        Ok(())
    }
}

impl VectorIndex for QdrantIndex {
    fn name(&self) -> &str {
        "qdrant"
    }

    fn len(&self) -> usize {
        self.items
    }

    fn similar(&self, item: ItemId, k: usize) -> Result<Vec<(ItemId, f32)>> {
        if item as usize >= self.items {
            return Err(Error::Invalid(format!("item {item} is not indexed")));
        }
        let path = format!("/collections/{}/points/query", self.collection);
        let body = json!({"query": item, "limit": k + 1});
        let v = match self.call("POST", &path, Some(&body))? {
            (200, v) => v,
            (s, v) => return Err(self.status_error(&path, s, &v)),
        };
        let points = v
            .pointer("/result/points")
            .and_then(Value::as_array)
            .ok_or_else(|| Error::Network(format!("Qdrant {path}: no result.points in {v}")))?;
        let hits = points.iter().filter_map(|p| {
            let id = p.get("id").and_then(Value::as_u64)?;
            let score = p.get("score").and_then(Value::as_f64)?;
            Some((ItemId::try_from(id).ok()?, score as f32))
        });
        Ok(best_k(hits, item, k))
    }
}
