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
mod audio;
mod metrics;
mod page;
mod routes;
pub mod state;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::assistant::Service;
use crate::llm::{AdapterId, Engine, GenParams, SessionOptions};

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
    /// The largest audio upload, in bytes (OpenAI's limit is 25 MB).
    pub max_audio: usize,
}

/// What the server offers beside the model itself.
#[derive(Default)]
pub struct Offer {
    /// Whisper for `/v1/audio/transcriptions`.
    pub stt: Option<state::Stt>,
    /// Adapters loaded into the engine, each served as `MODEL:NAME` at the
    /// scale given.
    pub adapters: Vec<(String, AdapterId, f32)>,
    /// The adapter requests for the plain model name get (`serve --lora`).
    pub default_adapter: Option<(AdapterId, f32)>,
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
    offer: Offer,
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
    // Room for every request the bound admits (`queue` waiting, one running).
    let (jobs, queue) = std::sync::mpsc::sync_channel(opts.queue + 1);
    let state = Arc::new(state::AppState {
        model: engine.name().to_string(),
        api_key: opts.api_key.clone(),
        defaults,
        jobs,
        queue: opts.queue,
        metrics: metrics.clone(),
        created: routes::now(),
        stt: offer.stt.map(Arc::new),
        adapters: offer
            .adapters
            .into_iter()
            .map(|(name, id, scale)| (format!("{}:{name}", engine.name()), (id, scale)))
            .collect(),
        default_adapter: offer.default_adapter,
    });
    let app = router(state, opts);
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

fn router(state: Arc<state::AppState>, opts: &HttpOptions) -> Router {
    // Each route's body limit, and its 413 from `Content-Length` before a
    // byte is read.
    let limit = |r: Router<Arc<state::AppState>>, max: usize| {
        r.layer(DefaultBodyLimit::max(max))
            .layer(axum::middleware::from_fn_with_state(
                max,
                routes::declared_size,
            ))
    };
    let json = Router::new()
        .route("/", get(page::chat_page))
        .route("/health", get(routes::health))
        .route("/metrics", get(routes::metrics))
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(routes::chat))
        .route("/v1/completions", post(routes::completions));
    let audio = Router::new().route("/v1/audio/transcriptions", post(audio::transcriptions));
    limit(json, opts.max_body)
        .merge(limit(audio, opts.max_audio))
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
