//! The HTTP API under `/v1`, the probes, `/metrics` and `/openapi.json`. Request
//! and reply types derive their OpenAPI schemas, and every handler carries its
//! path annotation, so the document is generated from the code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use llmrec_core::{ItemId, UserId};
use llmrec_pipelines::palr::parse::{TitleIndex, parse_ranking};
use llmrec_pipelines::palr::{
    PalrConfig, RankMode, clean_profile, item_description, item_title, profile_messages,
    ranking_messages,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::error::{ApiError, ErrorBody};
use crate::gate::Chat;
use crate::state::AppState;

/// Every route as `(method, path)`, as the OpenAPI document lists them.
pub const ROUTES: [(&str, &str); 11] = [
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("post", "/v1/recommend"),
    ("post", "/v1/rerank"),
    ("post", "/v1/explain"),
    ("get", "/v1/items/{id}"),
    ("get", "/v1/items/{id}/similar"),
    ("get", "/v1/users/{id}"),
    ("get", "/"),
];

type Shared = State<Arc<AppState>>;

/// An item named by its dataset (raw) id, as a string, or by its internal
/// (dense) id, as a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ItemRef {
    /// Internal id, `0..items` (see `/readyz`).
    Internal(u32),
    /// Raw id, as the dataset names the item.
    Raw(String),
}

/// How a recommendation is reranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Rerank {
    /// The retriever's order.
    #[default]
    None,
    /// PALR: an LLM profile of the history, then the LLM ranks the retriever's
    /// candidates.
    Palr,
}

/// `POST /v1/recommend`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecommendRequest {
    /// A known user (raw id); their whole history is used.
    #[serde(default)]
    pub user_id: Option<String>,
    /// Or a history, oldest first.
    #[serde(default)]
    pub history: Option<Vec<ItemRef>>,
    /// Items to return (1..=max_k). Default 10.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub k: Option<usize>,
    /// Retriever name (default: the first configured).
    #[serde(default)]
    pub model: Option<String>,
    /// Leave the history's items out. Default true.
    #[serde(default)]
    pub exclude_seen: Option<bool>,
    /// Reranking. Default none.
    #[serde(default)]
    pub rerank: Option<Rerank>,
}

/// One recommended item.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemOut {
    /// Internal id.
    pub id: u32,
    /// Raw id.
    pub raw_id: String,
    /// Title.
    pub title: String,
    /// The retriever's score (reranked lists keep it).
    pub score: f32,
}

/// Time spent, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Latency {
    /// Retrieval.
    pub retrieve_ms: f64,
    /// LLM reranking (0 without).
    pub rerank_ms: f64,
    /// The whole request.
    pub total_ms: f64,
}

/// How the LLM's ranking answer parsed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ValidityOut {
    /// Candidates named (first time).
    pub valid: usize,
    /// Names that are not candidates.
    pub hallucinated: usize,
    /// Candidates named again.
    pub duplicated: usize,
    /// Lines that could not be read.
    pub unparsable: usize,
    /// Whether both LLM answers came from the cache.
    pub cached: bool,
}

/// Reply of `POST /v1/recommend`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RecommendResponse {
    /// The retriever used.
    pub model: String,
    /// Its checkpoint.
    pub checkpoint: String,
    /// The reranking applied.
    pub rerank: Rerank,
    /// The items, best first.
    pub items: Vec<ItemOut>,
    /// The LLM answer's validity, when reranked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validity: Option<ValidityOut>,
    /// Latency breakdown.
    pub latency_ms: Latency,
}

/// `POST /v1/rerank`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerankRequest {
    /// The history, oldest first.
    pub history: Vec<ItemRef>,
    /// The candidates, in the retriever's order.
    pub candidates: Vec<ItemRef>,
    /// Items to return (1..=max_k; default: all candidates).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100)]
    pub k: Option<usize>,
    /// Only `palr`.
    #[serde(default)]
    pub mode: Option<Rerank>,
}

/// Reply of `POST /v1/rerank`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RerankResponse {
    /// The reranked candidates (score: 0, the LLM gives an order only).
    pub items: Vec<ItemOut>,
    /// How the answer parsed.
    pub validity: ValidityOut,
    /// Milliseconds.
    pub latency_ms: f64,
}

/// `POST /v1/explain`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainRequest {
    /// The history, oldest first.
    pub history: Vec<ItemRef>,
    /// The item to explain.
    pub item: ItemRef,
}

/// Reply of `POST /v1/explain`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExplainResponse {
    /// The item.
    pub item: ItemOut,
    /// The LLM's explanation.
    pub explanation: String,
    /// Whether it came from the cache.
    pub cached: bool,
    /// The LLM.
    pub model: String,
}

/// Reply of `GET /v1/items/{id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ItemDetail {
    /// Internal id.
    pub id: u32,
    /// Raw id.
    pub raw_id: String,
    /// Title.
    pub title: String,
    /// Genres or categories.
    pub categories: Vec<String>,
    /// Brand.
    pub brand: Option<String>,
    /// Users who had the item.
    pub interactions: usize,
}

/// Query of `GET /v1/items/{id}/similar`.
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SimilarQuery {
    /// Items to return (1..=max_k). Default 10.
    #[param(minimum = 1, maximum = 100)]
    pub k: Option<usize>,
}

/// Reply of `GET /v1/items/{id}/similar`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SimilarResponse {
    /// The item.
    pub item: ItemOut,
    /// Its nearest items by text embedding (score: cosine).
    pub similar: Vec<ItemOut>,
    /// The vector index.
    pub index: String,
}

/// Reply of `GET /readyz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Ready {
    /// Always true once serving (startup validates everything first).
    pub ready: bool,
    /// The dataset.
    pub dataset: String,
    /// Its fingerprint.
    pub fingerprint: String,
    /// Items in the catalogue.
    pub items: usize,
    /// Retrievers.
    pub models: Vec<String>,
    /// The LLM, if configured.
    pub llm: Option<String>,
    /// A user id to try (the dataset's first user).
    pub example_user: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "llmrec",
        description = "Retrieval, LLM reranking and explanations."
    ),
    paths(
        healthz,
        readyz,
        metrics,
        openapi_json,
        recommend,
        rerank,
        explain,
        item,
        similar,
        user,
        demo
    ),
    components(schemas(ErrorBody, ItemRef, Rerank))
)]
struct ApiDoc;

/// The OpenAPI document, as generated (`k` at most 100, the default `max_k`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The OpenAPI document of a service whose requests take `k` up to `max_k`:
/// every `k` (request fields and the query parameter) states that maximum, and
/// an item reference is an internal id >= 0 or a non-empty raw id.
pub fn openapi_for(max_k: usize) -> serde_json::Value {
    fn patch(v: &mut serde_json::Value, max_k: usize) {
        match v {
            serde_json::Value::Object(m) => {
                let is_k_param = m.get("name").and_then(|n| n.as_str()) == Some("k");
                if let Some(serde_json::Value::Object(k)) = m.get_mut("k")
                    && k.contains_key("maximum")
                {
                    k.insert("maximum".into(), max_k.into());
                }
                if is_k_param && let Some(serde_json::Value::Object(s)) = m.get_mut("schema") {
                    s.insert("maximum".into(), max_k.into());
                }
                m.values_mut().for_each(|x| patch(x, max_k));
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(|x| patch(x, max_k)),
            _ => {}
        }
    }
    let mut doc = serde_json::to_value(openapi()).unwrap_or_default();
    patch(&mut doc, max_k);
    if let Some(serde_json::Value::Array(forms)) =
        doc.pointer_mut("/components/schemas/ItemRef/oneOf")
    {
        for f in forms.iter_mut().filter_map(|f| f.as_object_mut()) {
            match f.get("type").and_then(|t| t.as_str()) {
                Some("integer") => {
                    f.insert("minimum".into(), 0.into());
                }
                Some("string") => {
                    f.insert("minLength".into(), 1.into());
                }
                _ => {}
            }
        }
    }
    doc
}

/// The router over `state`, with the metrics and time-limit middleware and the
/// body size limit.
pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.cfg.max_body_bytes;
    // Built once: the document depends only on the settings.
    let doc = Bytes::from(serde_json::to_vec(&openapi_for(state.cfg.max_k)).unwrap_or_default());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(move || openapi_json(doc.clone())))
        .route("/v1/recommend", post(recommend))
        .route("/v1/rerank", post(rerank))
        .route("/v1/explain", post(explain))
        .route("/v1/items/{id}", get(item))
        .route("/v1/items/{id}/similar", get(similar))
        .route("/v1/users/{id}", get(user))
        .route("/", get(demo))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .fallback(fallback)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

async fn track(State(st): Shared, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let t0 = Instant::now();
    let limit = Duration::from_millis(st.cfg.request_timeout_ms);
    let resp = match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::overloaded(format!(
            "the request took longer than {} ms",
            st.cfg.request_timeout_ms
        ))
        .into_response(),
    };
    st.metrics
        .observe(&route, resp.status().as_u16(), t0.elapsed().as_secs_f64());
    resp
}

fn parse<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        // serde names the field for missing, unknown and mistyped fields.
        let field = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.contains("field"))
            .unwrap_or("body");
        ApiError::bad(field, format!("malformed JSON body: {msg}"))
    })
}

fn resolve(st: &AppState, r: &ItemRef, field: &str) -> Result<ItemId, ApiError> {
    match r {
        ItemRef::Internal(i) if (*i as usize) < st.ds.n_items() => Ok(*i),
        ItemRef::Internal(i) => Err(ApiError::bad(
            field,
            format!("internal item id {i} is outside 0..{}", st.ds.n_items()),
        )),
        ItemRef::Raw(s) => st
            .ds
            .items
            .get(s)
            .ok_or_else(|| ApiError::bad(field, format!("unknown item id `{s}`"))),
    }
}

fn resolve_all(st: &AppState, refs: &[ItemRef], field: &str) -> Result<Vec<ItemId>, ApiError> {
    refs.iter()
        .enumerate()
        .map(|(i, r)| resolve(st, r, &format!("{field}[{i}]")))
        .collect()
}

fn item_out(st: &AppState, i: ItemId, score: f32) -> ItemOut {
    ItemOut {
        id: i,
        raw_id: st.ds.items.raw(i).to_string(),
        title: st
            .ds
            .item_text
            .get(i as usize)
            .map(|t| t.title.clone())
            .unwrap_or_default(),
        score,
    }
}

fn check_k(st: &AppState, k: Option<usize>, default: usize) -> Result<usize, ApiError> {
    let k = k.unwrap_or(default);
    if k == 0 || k > st.cfg.max_k {
        return Err(ApiError::bad(
            "k",
            format!("k = {k} is outside 1..={}", st.cfg.max_k),
        ));
    }
    Ok(k)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "alive", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the catalogue, models and LLM loaded.
#[utoipa::path(get, path = "/readyz", responses((status = 200, body = Ready)))]
async fn readyz(State(st): Shared) -> axum::Json<Ready> {
    axum::Json(Ready {
        ready: true,
        dataset: st.ds.name.clone(),
        fingerprint: st.ds.fingerprint(),
        items: st.ds.n_items(),
        models: st.models.iter().map(|m| m.name.clone()).collect(),
        llm: st.gate.as_ref().map(|g| g.model()),
        example_user: st.ds.users.raw_ids().first().cloned(),
    })
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String)))]
async fn metrics(State(st): Shared) -> Response {
    let (depth, cap) = st
        .gate
        .as_ref()
        .map_or((0, 0), |g| (g.depth(), g.capacity()));
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        st.metrics.render(depth, cap),
    )
        .into_response()
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "the OpenAPI document", body = Object)))]
async fn openapi_json(doc: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc).into_response()
}

/// Recommendations for a known user or a history, optionally reranked by PALR.
#[utoipa::path(post, path = "/v1/recommend", request_body = RecommendRequest,
    responses((status = 200, body = RecommendResponse), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn recommend(
    State(st): Shared,
    body: Bytes,
) -> Result<axum::Json<RecommendResponse>, ApiError> {
    let t0 = Instant::now();
    let req: RecommendRequest = parse(&body)?;
    let k = check_k(&st, req.k, 10)?;
    let served = st.model(req.model.as_deref()).ok_or_else(|| {
        ApiError::bad(
            "model",
            format!(
                "unknown model `{}`; this service has {}",
                req.model.clone().unwrap_or_default(),
                st.models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let (user, history): (Option<UserId>, Vec<ItemId>) = match (&req.user_id, &req.history) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad(
                "user_id",
                "give user_id or history, not both",
            ));
        }
        (Some(u), None) => {
            let id = st
                .ds
                .users
                .get(u)
                .ok_or_else(|| ApiError::bad("user_id", format!("unknown user `{u}`")))?;
            (Some(id), st.histories[id as usize].clone())
        }
        (None, Some(h)) => (None, resolve_all(&st, h, "history")?),
        (None, None) => return Err(ApiError::bad("history", "give user_id or history")),
    };
    if history.is_empty() {
        return Err(ApiError::bad("history", "the history is empty"));
    }
    let rerank = req.rerank.unwrap_or_default();
    if rerank == Rerank::Palr && st.gate.is_none() {
        return Err(ApiError::unavailable(
            "rerank palr needs an LLM: set [llm] backend in serve.toml",
        ));
    }
    let exclude = req.exclude_seen.unwrap_or(true);
    let pool = match rerank {
        Rerank::None => k,
        Rerank::Palr => k.max(st.cfg.palr.candidates),
    };
    let t1 = Instant::now();
    let name = served.name.clone();
    let st2 = st.clone();
    let h2 = history.clone();
    let top = tokio::task::spawn_blocking(move || {
        let served = st2
            .model(Some(&name))
            .ok_or_else(|| ApiError::internal("model vanished"))?;
        let q = llmrec_core::Query { user, history: &h2 };
        served
            .model
            .recommend(&q, pool, exclude)
            .map_err(|e| match e {
                // Ids are checked above; what a model still refuses is the
                // history's shape, the rest is a fault of the model.
                llmrec_core::Error::Invalid(m) => ApiError::bad("history", m),
                e => ApiError::internal(e.to_string()),
            })
    })
    .await
    .map_err(|e| ApiError::internal(format!("retrieval task failed: {e}")))??;
    let retrieve_ms = ms(t1);
    let t2 = Instant::now();
    let (items, validity) = match rerank {
        Rerank::None => (
            top.iter().map(|&(i, s)| item_out(&st, i, s)).collect(),
            None,
        ),
        Rerank::Palr => {
            let cands: Vec<ItemId> = top.iter().map(|x| x.0).collect();
            let (order, v) = llm_rerank(&st, history, cands).await?;
            let score = |i: ItemId| top.iter().find(|x| x.0 == i).map_or(0.0, |x| x.1);
            (
                order
                    .into_iter()
                    .take(k)
                    .map(|i| item_out(&st, i, score(i)))
                    .collect(),
                Some(v),
            )
        }
    };
    Ok(axum::Json(RecommendResponse {
        model: served.name.clone(),
        checkpoint: served.checkpoint.clone(),
        rerank,
        items,
        validity,
        latency_ms: Latency {
            retrieve_ms,
            rerank_ms: if rerank == Rerank::None { 0.0 } else { ms(t2) },
            total_ms: ms(t0),
        },
    }))
}

/// PALR through the gate: the candidates in the LLM's order, then any it left
/// out in the retriever's order.
async fn llm_rerank(
    st: &Arc<AppState>,
    history: Vec<ItemId>,
    cands: Vec<ItemId>,
) -> Result<(Vec<ItemId>, ValidityOut), ApiError> {
    let gate = st.gate.as_ref().ok_or_else(|| {
        ApiError::unavailable("reranking needs an LLM: set [llm] backend in serve.toml")
    })?;
    let st2 = st.clone();
    gate.run(move |chat| palr_order(chat, &st2, &history, &cands))
        .await
}

fn palr_order(
    chat: &Chat<'_>,
    st: &AppState,
    history: &[ItemId],
    cands: &[ItemId],
) -> Result<(Vec<ItemId>, ValidityOut), ApiError> {
    let p = &st.cfg.palr;
    let cfg = PalrConfig {
        history_items: p.history_items,
        profile_items: p.history_items,
        rank_count: cands.len(),
        ..PalrConfig::default()
    };
    let (g, c1) = chat.chat(
        profile_messages(&st.ds, history, &cfg),
        p.profile_max_tokens,
    )?;
    let profile = clean_profile(&g.text);
    let titles: Vec<String> = cands
        .iter()
        .map(|&i| item_title(&st.ds, i, cfg.title_chars))
        .collect();
    let msgs = ranking_messages(&st.ds, history, &profile, &titles, RankMode::Generate, &cfg);
    let (g, c2) = chat.chat(msgs, p.rank_max_tokens)?;
    let parsed = parse_ranking(&g.text, &titles, &TitleIndex::new(&titles));
    let mut order: Vec<ItemId> = parsed.order.iter().map(|&j| cands[j]).collect();
    for &c in cands {
        if !order.contains(&c) {
            order.push(c);
        }
    }
    let v = parsed.validity;
    Ok((
        order,
        ValidityOut {
            valid: v.valid,
            hallucinated: v.hallucinated,
            duplicated: v.duplicated,
            unparsable: v.unparsable,
            cached: c1 && c2,
        },
    ))
}

/// Rerank given candidates with the LLM (PALR).
#[utoipa::path(post, path = "/v1/rerank", request_body = RerankRequest,
    responses((status = 200, body = RerankResponse), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn rerank(State(st): Shared, body: Bytes) -> Result<axum::Json<RerankResponse>, ApiError> {
    let t0 = Instant::now();
    let req: RerankRequest = parse(&body)?;
    if req.mode == Some(Rerank::None) {
        return Err(ApiError::bad("mode", "the only reranking mode is `palr`"));
    }
    let history = resolve_all(&st, &req.history, "history")?;
    if history.is_empty() {
        return Err(ApiError::bad("history", "the history is empty"));
    }
    let cands = resolve_all(&st, &req.candidates, "candidates")?;
    if cands.is_empty() || cands.len() > st.cfg.max_k {
        return Err(ApiError::bad(
            "candidates",
            format!("give 1..={} candidates", st.cfg.max_k),
        ));
    }
    let k = check_k(&st, req.k, cands.len())?;
    let (order, validity) = llm_rerank(&st, history, cands).await?;
    Ok(axum::Json(RerankResponse {
        items: order
            .into_iter()
            .take(k)
            .map(|i| item_out(&st, i, 0.0))
            .collect(),
        validity,
        latency_ms: ms(t0),
    }))
}

/// A short LLM explanation of why a history leads to an item (cached).
#[utoipa::path(post, path = "/v1/explain", request_body = ExplainRequest,
    responses((status = 200, body = ExplainResponse), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn explain(State(st): Shared, body: Bytes) -> Result<axum::Json<ExplainResponse>, ApiError> {
    let req: ExplainRequest = parse(&body)?;
    let history = resolve_all(&st, &req.history, "history")?;
    if history.is_empty() {
        return Err(ApiError::bad("history", "the history is empty"));
    }
    let item = resolve(&st, &req.item, "item")?;
    let gate = st.gate.as_ref().ok_or_else(|| {
        ApiError::unavailable("explanations need an LLM: set [llm] backend in serve.toml")
    })?;
    let st2 = st.clone();
    let max_tokens = st.cfg.llm.explain_max_tokens;
    let (text, cached) = gate
        .run(move |chat| {
            let recent = &history[history.len().saturating_sub(10)..];
            let mut p = String::from("Someone enjoyed these, oldest first:\n");
            for &i in recent {
                p.push_str(&format!("- {}\n", item_description(&st2.ds, i, 80)));
            }
            p.push_str(&format!(
                "\nIn one or two sentences, explain why they might enjoy: {}",
                item_description(&st2.ds, item, 80)
            ));
            let (g, cached) = chat.chat(vec![llmrec_llm::Message::user(p)], max_tokens)?;
            Ok((g.text.trim().to_string(), cached))
        })
        .await?;
    Ok(axum::Json(ExplainResponse {
        item: item_out(&st, item, 0.0),
        explanation: text,
        cached,
        model: gate.model(),
    }))
}

fn path_item(st: &AppState, id: &str) -> Result<ItemId, ApiError> {
    st.ds
        .items
        .get(id)
        .ok_or_else(|| ApiError::not_found("id", format!("unknown item id `{id}`")))
}

/// One item by raw id.
#[utoipa::path(get, path = "/v1/items/{id}", params(("id" = String, Path, description = "raw item id")),
    responses((status = 200, body = ItemDetail), (status = 404, body = ErrorBody)))]
async fn item(
    State(st): Shared,
    Path(id): Path<String>,
) -> Result<axum::Json<ItemDetail>, ApiError> {
    let i = path_item(&st, &id)?;
    let t = st.ds.item_text.get(i as usize).cloned().unwrap_or_default();
    let interactions = st.popularity[i as usize];
    Ok(axum::Json(ItemDetail {
        id: i,
        raw_id: id,
        title: t.title,
        categories: t.categories,
        brand: t.brand,
        interactions,
    }))
}

/// The items nearest to one item by text embedding.
#[utoipa::path(get, path = "/v1/items/{id}/similar",
    params(("id" = String, Path, description = "raw item id"), SimilarQuery),
    responses((status = 200, body = SimilarResponse), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn similar(
    State(st): Shared,
    Path(id): Path<String>,
    q: Result<Query<SimilarQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<SimilarResponse>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad("k", e.body_text()))?;
    let i = path_item(&st, &id)?;
    let k = check_k(&st, q.k, 10)?;
    let index = st.index.as_ref().ok_or_else(|| {
        ApiError::not_found(
            "id",
            "this service has no item embeddings (set `embeddings` in serve.toml)",
        )
    })?;
    let near = index
        .similar(i, k)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(axum::Json(SimilarResponse {
        item: item_out(&st, i, 1.0),
        similar: near.into_iter().map(|(j, s)| item_out(&st, j, s)).collect(),
        index: index.name().to_string(),
    }))
}

/// Reply of `GET /v1/users/{id}`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserDetail {
    /// Raw user id.
    pub user_id: String,
    /// The user's items, oldest first.
    pub history: Vec<ItemOut>,
}

/// A user's history by raw id (score: 0).
#[utoipa::path(get, path = "/v1/users/{id}", params(("id" = String, Path, description = "raw user id")),
    responses((status = 200, body = UserDetail), (status = 404, body = ErrorBody)))]
async fn user(
    State(st): Shared,
    Path(id): Path<String>,
) -> Result<axum::Json<UserDetail>, ApiError> {
    let u = st
        .ds
        .users
        .get(&id)
        .ok_or_else(|| ApiError::not_found("id", format!("unknown user `{id}`")))?;
    Ok(axum::Json(UserDetail {
        history: st.histories[u as usize]
            .iter()
            .map(|&i| item_out(&st, i, 0.0))
            .collect(),
        user_id: id,
    }))
}

/// The demo page.
#[utoipa::path(get, path = "/", responses((status = 200, description = "HTML page", body = String)))]
async fn demo() -> Html<&'static str> {
    Html(crate::DEMO_PAGE)
}

/// 404 for everything else, as JSON.
pub async fn fallback() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such route; see /openapi.json".into(),
        field: None,
    }
}
