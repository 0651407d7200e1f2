//! What every handler shares (`AppState`): the served model's name and
//! adapters, the key, the defaults, the queue to the model's worker, the
//! metrics, whisper and the voice; with the checks each request starts with (the
//! key, the model it names).

use std::collections::BTreeMap;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::HeaderMap;

use super::api::ApiError;
use super::job::Job;
use super::metrics::Metrics;
use crate::llm::{AdapterId, GenParams};
use crate::speech::Transcriber;
use crate::tts::{SpeakOptions, TtsError, Voice};

/// What every handler shares.
pub struct AppState {
    pub api_key: Option<String>,
    pub defaults: GenParams,
    /// `serve --system`: for chats without a system message.
    pub system: Option<String>,
    pub jobs: SyncSender<Job>,
    /// Requests that may wait while `parallel` are answered.
    pub queue: usize,
    pub parallel: usize,
    pub metrics: Arc<Metrics>,
    pub created: u64,
    /// Whisper, when the server has a speech model.
    pub stt: Option<Arc<Stt>>,
    /// The voice, when the server has one.
    pub tts: Option<Arc<Tts>>,
    /// The model being served, set by the worker that runs it; `None`
    /// while it loads (at start, or after the console's `/model`).
    pub served: RwLock<Option<Served>>,
}

/// The model a worker runs, as the handlers name it.
#[derive(Debug, Clone, Default)]
pub struct Served {
    pub model: String,
    /// `MODEL:ADAPTER` names and what each applies.
    pub adapters: BTreeMap<String, (AdapterId, f32)>,
    /// What the plain model name applies.
    pub default_adapter: Option<(AdapterId, f32)>,
    /// The width of its embeddings (set by the worker that runs it).
    pub n_embd: usize,
}

impl Served {
    /// `engine`'s name, with `adapters` (store name, id, scale) served as
    /// `MODEL:NAME`.
    pub fn new(
        model: &str,
        adapters: Vec<(String, AdapterId, f32)>,
        default_adapter: Option<(AdapterId, f32)>,
    ) -> Served {
        Served {
            model: model.to_string(),
            adapters: adapters
                .into_iter()
                .map(|(name, id, scale)| (format!("{model}:{name}"), (id, scale)))
                .collect(),
            default_adapter,
            n_embd: 0,
        }
    }

    /// The adapter a request's `model` names: the plain model (with
    /// `serve --lora`'s adapter, if any) or `MODEL:ADAPTER`; else a 404.
    pub fn pick(&self, model: &str) -> Result<Option<(AdapterId, f32)>, ApiError> {
        if model == self.model {
            return Ok(self.default_adapter);
        }
        match self.adapters.get(model) {
            Some(&a) => Ok(Some(a)),
            None => Err(ApiError::model_not_found(model, &self.model)),
        }
    }
}

/// The speech model the server was started with.
pub struct Stt {
    /// Its store name; OpenAI's `whisper-1` is taken as this model too, so
    /// an unmodified client works.
    pub name: String,
    /// The language it was loaded for (`en`, or `auto`).
    pub language: String,
    pub transcriber: Mutex<Transcriber>,
}

/// How the voice is loaded, on the first request.
pub type LoadVoice = Box<dyn Fn() -> Result<Box<dyn Voice>, TtsError> + Send + Sync>;

/// The voice the server was started with.
pub struct Tts {
    /// Its store name (or `espeak:VOICE`), also accepted as `model` and
    /// `voice`.
    pub name: String,
    /// How it speaks unless a request sets `speed`.
    pub opts: SpeakOptions,
    pub(super) voice: Mutex<Option<Box<dyn Voice>>>,
    pub(super) load: LoadVoice,
}

impl Tts {
    /// The voice `name`, loaded by `load` when it is first asked to speak.
    pub fn new(name: &str, opts: SpeakOptions, load: LoadVoice) -> Tts {
        Tts {
            name: name.to_string(),
            opts,
            voice: Mutex::new(None),
            load,
        }
    }
}

impl AppState {
    /// What is served now; a 503 while the model loads.
    pub fn served(&self) -> Result<Served, ApiError> {
        self.served
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(ApiError::loading)
    }

    /// Check that `model` is served now (a 404 if not, a 503 while loading).
    pub fn check_model(&self, model: &str) -> Result<(), ApiError> {
        // Under the read lock: no copy of the adapter map per request.
        let served = self
            .served
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let served = served.as_ref().ok_or_else(ApiError::loading)?;
        served.pick(model).map(|_| ())
    }

    pub fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(key) = &self.api_key else {
            return Ok(());
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        // Compared in constant time: the key's bytes do not leak through
        // how long a wrong guess takes.
        let same = given.is_some_and(|g| {
            g.len() == key.len()
                && g.bytes()
                    .zip(key.bytes())
                    .fold(0u8, |a, (x, y)| a | (x ^ y))
                    == 0
        });
        if same {
            Ok(())
        } else {
            Err(ApiError::unauthorized())
        }
    }
}
