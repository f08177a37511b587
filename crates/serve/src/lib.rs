//! llmrec's HTTP service (`llmrec serve`): a retriever (any model of the
//! registry), optionally reranked by an LLM (PALR), with LLM explanations, item
//! lookups and text-embedding neighbours; every LLM answer is cached and LLM work
//! waits in a bounded queue (503 with `Retry-After` when it is full).
//!
//! - [`config`]: the settings file `serve.toml`;
//! - [`state`]: what is loaded and validated at startup;
//! - [`api`]: the routes, their request and reply types and the OpenAPI document;
//! - [`gate`]: the bounded LLM queue; [`index`]: vector search;
//! - [`metrics`]: Prometheus counters and histograms; [`error`]: error replies.

#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod error;
pub mod gate;
pub mod index;
pub mod metrics;
pub mod state;

use std::future::Future;
use std::sync::Arc;

use llmrec_core::{Error, Result};

pub use config::ServeConfig;
pub use state::AppState;

/// The demo page served at `/` (plain HTML and script, no build step).
pub const DEMO_PAGE: &str = include_str!("demo.html");

/// Serves `state` on `listener` until `shutdown` resolves; requests in flight
/// then finish before this returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|e| Error::Invalid(format!("server: {e}")))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
