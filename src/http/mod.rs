//! An OpenAI-compatible HTTP API (`ferrite serve --http ADDR:PORT`): what
//! scripts, Home Assistant and Open WebUI speak, as llama.cpp's
//! `llama-server` and Ollama serve it.
//!
//! The server is axum on a single-threaded tokio runtime (a board has few
//! cores and the model wants them); the model runs on one worker thread
//! (`worker`) fed by a bounded queue. A bind outside loopback needs an API
//! key unless the operator says otherwise (`insecure_no_auth`), so a board
//! on a network never serves its model to anyone by accident.

pub mod api;
mod metrics;
mod routes;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::assistant::Service;
use crate::llm::{Engine, GenParams, SessionOptions};

/// How the HTTP API is served.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    pub addr: SocketAddr,
    /// Required as `Authorization: Bearer KEY` on `/v1/*` when set.
    pub api_key: Option<String>,
    /// Serve a non-loopback address without a key (the operator's choice).
    pub insecure_no_auth: bool,
    /// Requests that may wait for the model; one more gets a 503.
    pub queue: usize,
    /// The largest request body, in bytes (a bigger one gets a 413).
    pub max_body: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{addr} is not a loopback address: pass --api-key KEY (or --insecure-no-auth to serve it to anyone who can reach it)")]
    NeedsKey { addr: SocketAddr },
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the HTTP server failed")]
    Serve(#[source] std::io::Error),
}

/// Serve `engine` until the service stops (SIGTERM) or Ctrl-C. `ready` is
/// called with the bound address once clients can connect.
///
/// # Errors
/// `HttpError` when the address needs a key, cannot be bound, or the server
/// fails.
pub fn serve(
    opts: &HttpOptions,
    engine: &Engine,
    session: SessionOptions,
    defaults: GenParams,
    service: &(dyn Service + Sync),
    ready: &mut dyn FnMut(SocketAddr),
) -> Result<(), HttpError> {
    if !opts.addr.ip().is_loopback() && opts.api_key.is_none() && !opts.insecure_no_auth {
        return Err(HttpError::NeedsKey { addr: opts.addr });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(HttpError::Serve)?;
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(opts.addr))
        .map_err(|source| HttpError::Bind {
            addr: opts.addr,
            source,
        })?;
    let bound = listener.local_addr().map_err(HttpError::Serve)?;
    let metrics = Arc::new(metrics::Metrics::default());
    let (jobs, queue) = std::sync::mpsc::sync_channel(opts.queue);
    let state = Arc::new(routes::AppState {
        model: engine.name().to_string(),
        api_key: opts.api_key.clone(),
        defaults,
        jobs,
        metrics: metrics.clone(),
        created: routes::now(),
    });
    let app = router(state, opts.max_body);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let served = AtomicBool::new(false);
    std::thread::scope(|s| {
        let metrics = &metrics;
        s.spawn(move || worker::run(engine, session, queue, metrics));
        let served = &served;
        s.spawn(move || watch_service(service, served, stop_tx));
        tracing::info!(addr = %bound, model = engine.name(), "HTTP API listening");
        service.status(&format!("serving the HTTP API on {bound}"));
        ready(bound);
        // The app (and with it the queue's sender) is dropped when the
        // server returns, which ends the worker.
        let result = rt
            .block_on(async {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        tokio::select! {
                            _ = stop_rx => {}
                            _ = tokio::signal::ctrl_c() => {}
                        }
                    })
                    .await
            })
            .map_err(HttpError::Serve);
        served.store(true, Ordering::Relaxed);
        result
    })
}

fn router(state: Arc<routes::AppState>, max_body: usize) -> Router {
    Router::new()
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(routes::chat))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            max_body,
            routes::declared_size,
        ))
        .with_state(state)
}

/// systemd's side, until the server is done: the watchdog fed, SIGTERM
/// turned into a stop.
fn watch_service(
    service: &(dyn Service + Sync),
    served: &AtomicBool,
    stop: tokio::sync::oneshot::Sender<()>,
) {
    while !served.load(Ordering::Relaxed) {
        service.heartbeat();
        if service.stopping() {
            let _ = stop.send(());
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
