//! An OpenAI-compatible HTTP API (`ferrite serve --http ADDR:PORT`): what
//! scripts, Home Assistant and Open WebUI speak, as llama.cpp's
//! `llama-server` and Ollama serve it.
//!
//! The server is axum on a single-threaded tokio runtime on its own thread
//! (a board has few cores and the model wants them); the model runs on one
//! worker thread (`worker`) fed by a bounded queue. `Api` is the running
//! server: `serve` runs it alone on a model, and the console front end
//! (`assistant::serve`) runs it beside a console on the same engine,
//! starting a worker on each model it loads. A bind outside loopback needs
//! an API key unless the operator says otherwise (`insecure_no_auth`), so a
//! board on a network never serves its model to anyone by accident.

pub mod api;
mod audio;
mod job;
mod metrics;
mod page;
mod routes;
mod speech;
pub mod state;
mod worker;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::llm::{AdapterId, DraftOptions, Engine, GenParams, SessionOptions};
use crate::models::Store;

pub use state::{LoadVoice, Served, Stt, Tts};

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
    /// The sampling values a request does not set.
    pub defaults: GenParams,
    /// The system prompt of a chat request without a system message
    /// (`serve --system`).
    pub system: Option<String>,
    /// The model worker's context (its own KV cache, beside a console's).
    pub session: SessionOptions,
    /// Answers generated at once, batched on that context (llama.cpp's
    /// `--parallel`).
    pub parallel: usize,
    /// Whether they share all its cells (llama.cpp's `--kv-unified`) or
    /// each has `ctx / parallel` of its own.
    pub kv_unified: bool,
}

/// How the worker speeds answers up.
#[derive(Default)]
pub struct Speedups<'e> {
    /// Decode speculatively: with this draft model (one context per slot),
    /// or prompt lookup when it is `None`.
    pub draft: Option<(Option<&'e Engine>, DraftOptions)>,
    /// Keep system prompts' KV states on disk (`Batcher::set_prompt_cache`).
    pub prompt_cache: Option<crate::llm::PromptCache>,
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

/// The running server. Dropping it stops it (what is being sent finishes).
pub struct Api {
    state: Arc<state::AppState>,
    jobs: Mutex<Receiver<job::Job>>,
    session: SessionOptions,
    parallel: usize,
    kv_unified: bool,
    addr: SocketAddr,
    stop: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    finished: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<std::io::Result<()>>>>,
}

impl Api {
    /// Bind `opts.addr` and serve on a thread of its own. Until a worker
    /// runs (`work`), chat requests get a 503 `model_loading`. With
    /// `ctrl_c`, Ctrl-C stops the server (when it runs alone).
    ///
    /// # Errors
    /// `HttpError` when the address needs a key or cannot be bound.
    pub fn start(
        opts: &HttpOptions,
        (stt, tts): (Option<Stt>, Option<Tts>),
        ctrl_c: bool,
    ) -> Result<Api, HttpError> {
        if !opts.addr.ip().is_loopback() && opts.api_key.is_none() && !opts.insecure_no_auth {
            return Err(HttpError::NeedsKey { addr: opts.addr });
        }
        let bind_err = |source| HttpError::Bind {
            addr: opts.addr,
            source,
        };
        let listener = std::net::TcpListener::bind(opts.addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let addr = listener.local_addr().map_err(HttpError::Serve)?;
        // Room for every request the bound admits (`queue` waiting,
        // `parallel` running).
        let (jobs, queue) = std::sync::mpsc::sync_channel(opts.queue + opts.parallel);
        let state = Arc::new(state::AppState {
            api_key: opts.api_key.clone(),
            defaults: opts.defaults.clone(),
            system: opts.system.clone(),
            jobs,
            queue: opts.queue,
            parallel: opts.parallel,
            metrics: Arc::default(),
            created: routes::now(),
            stt: stt.map(Arc::new),
            tts: tts.map(Arc::new),
            served: std::sync::RwLock::new(None),
        });
        let app = router(state.clone(), opts);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let thread = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                let result = serve_until(listener, app, stop_rx, ctrl_c);
                done.store(true, Ordering::Relaxed);
                result
            })
            .map_err(HttpError::Serve)?;
        tracing::info!(%addr, "HTTP API listening");
        Ok(Api {
            state,
            jobs: Mutex::new(queue),
            session: opts.session.clone(),
            parallel: opts.parallel,
            kv_unified: opts.kv_unified,
            addr,
            stop: Mutex::new(Some(stop_tx)),
            finished,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// The address it listens on (the port, when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the server has stopped (Ctrl-C, or `stop`).
    pub fn finished(&self) -> bool {
        self.finished.load(Ordering::Relaxed)
    }

    /// Run the model for HTTP clients on `engine`, as `served` names it,
    /// until `quit` is set (checked between answers) or the server stops.
    /// `speed` says how answers are sped up (drafting, the prompt cache).
    /// One worker at a time; requests wait for the next while none runs.
    pub fn work(
        &self,
        engine: &Engine,
        speed: Speedups<'_>,
        mut served: Served,
        quit: &AtomicBool,
    ) {
        served.n_embd = engine.n_embd();
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        tracing::info!(model = %served.model, adapters = served.adapters.len(), "HTTP worker on the model");
        *self
            .state
            .served
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(served.clone());
        worker::run(
            (engine, speed),
            (self.session.clone(), self.parallel, self.kv_unified),
            &jobs,
            &served,
            &self.state.metrics,
            quit,
        );
        *self
            .state
            .served
            .write()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Stop serving (what is being sent finishes) and wait for it.
    ///
    /// # Errors
    /// `HttpError::Serve` when the server had failed.
    pub fn shutdown(&self) -> Result<(), HttpError> {
        if let Some(stop) = self
            .stop
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = stop.send(());
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match thread.map(JoinHandle::join) {
            Some(Ok(r)) => r.map_err(HttpError::Serve),
            Some(Err(_)) => Err(HttpError::Serve(std::io::Error::other(
                "the HTTP thread panicked",
            ))),
            None => Ok(()),
        }
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// The server's thread: axum until the stop (or Ctrl-C, with `ctrl_c`).
fn serve_until(
    listener: std::net::TcpListener,
    app: Router,
    stop: tokio::sync::oneshot::Receiver<()>,
    ctrl_c: bool,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                if ctrl_c {
                    tokio::select! {
                        _ = stop => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                } else {
                    let _ = stop.await;
                }
            })
            .await
    })
}

/// The adapters in `store` made for `engine`'s model, loaded into it to be
/// served as `MODEL:ADAPTER` (store name, id, scale 1); one made for
/// another model is left out (said at debug level). `base_sha256` is the
/// model file's hash.
pub fn load_store_adapters(
    engine: &mut Engine,
    store: &Store,
    base_sha256: &str,
) -> Vec<(String, AdapterId, f32)> {
    let mut out = Vec::new();
    for (name, path) in store.adapters() {
        match engine.load_adapter(&name, Path::new(&path), Some(base_sha256)) {
            Ok(id) => out.push((name, id, 1.0)),
            Err(e) => {
                tracing::debug!(adapter = %name, error = %crate::report(&e), "not served: made for another model");
            }
        }
    }
    out
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
        .route("/v1/completions", post(routes::completions))
        .route("/v1/embeddings", post(routes::embeddings))
        .route("/v1/audio/speech", post(speech::speech));
    let audio = Router::new().route("/v1/audio/transcriptions", post(audio::transcriptions));
    limit(json, opts.max_body)
        .merge(limit(audio, opts.max_audio))
        .with_state(state)
}
