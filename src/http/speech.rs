//! `POST /v1/audio/speech`: text to audio with the server's voice (a Piper
//! voice on ONNX Runtime, or espeak-ng's own), as OpenAI's endpoint takes it
//! (platform.openai.com/docs/api-reference/audio/createSpeech): JSON with
//! `model`, `input` (1 to 4096 characters), `voice`, and optionally
//! `response_format` and `speed` (0.25 to 4).
//!
//! One voice is served: OpenAI's model names (`tts-1`, `tts-1-hd`,
//! `gpt-4o-mini-tts`) and voice names (`alloy`, ...) are taken as it, so an
//! unmodified client works. Formats: `wav` (16-bit mono at the voice's own
//! rate; the default here, where OpenAI's is mp3, which ferrite does not
//! encode) and `pcm` (OpenAI's raw format: 24 kHz, 16-bit little-endian
//! mono, resampled). Synthesis runs on tokio's blocking pool, one request at
//! a time (the voice is behind a mutex), beside the LLM's worker; the voice
//! is loaded on the first request.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::api::ApiError;
use super::routes::ApiJson;
use super::state::{AppState, Tts};
use crate::tts::SpeakOptions;

/// OpenAI's speech models, served as the one voice.
pub const OPENAI_MODELS: [&str; 3] = ["tts-1", "tts-1-hd", "gpt-4o-mini-tts"];

/// OpenAI's voice names, served as the one voice.
pub const OPENAI_VOICES: [&str; 13] = [
    "alloy", "ash", "ballad", "cedar", "coral", "echo", "fable", "marin", "nova", "onyx", "sage",
    "shimmer", "verse",
];

/// The longest `input`, in characters (OpenAI's limit).
pub const MAX_INPUT_CHARS: usize = 4096;

/// The rate of OpenAI's `pcm` format, in Hz.
pub const PCM_RATE: u32 = 24_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpeechRequest {
    pub model: String,
    pub input: String,
    pub voice: String,
    pub response_format: Option<String>,
    pub speed: Option<f32>,
    /// Refused when set: a Piper voice takes no instructions.
    pub instructions: Option<String>,
    /// `audio` only (no server-sent events).
    pub stream_format: Option<String>,
}

/// What a request asks for, checked.
struct Ask {
    input: String,
    pcm: bool,
    speed: Option<f32>,
}

fn check(tts: &Tts, req: SpeechRequest) -> Result<Ask, ApiError> {
    let bad = ApiError::bad_request;
    if req.model != tts.name && !OPENAI_MODELS.contains(&req.model.as_str()) {
        return Err(ApiError::model_not_found(&req.model, &tts.name));
    }
    if req.voice != tts.name && !OPENAI_VOICES.contains(&req.voice.as_str()) {
        return Err(bad(
            format!(
                "unknown voice `{}`: this server speaks with `{}` (OpenAI's voice names are taken as it)",
                req.voice, tts.name
            ),
            Some("voice"),
        ));
    }
    let chars = req.input.chars().count();
    if req.input.trim().is_empty() || chars > MAX_INPUT_CHARS {
        return Err(bad(
            format!("input takes 1 to {MAX_INPUT_CHARS} characters, not {chars}"),
            Some("input"),
        ));
    }
    let pcm = match req.response_format.as_deref() {
        None | Some("wav") => false,
        Some("pcm") => true,
        Some(other) => {
            return Err(bad(
                format!("response_format `{other}` is not supported: wav or pcm"),
                Some("response_format"),
            ))
        }
    };
    if let Some(s) = req.speed.filter(|s| !(0.25..=4.0).contains(s)) {
        return Err(bad(
            format!("speed must be from 0.25 to 4, not {s}"),
            Some("speed"),
        ));
    }
    if req.instructions.as_deref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::bad_request(
            "this voice takes no instructions",
            Some("instructions"),
        ));
    }
    if req.stream_format.as_deref().is_some_and(|f| f != "audio") {
        return Err(ApiError::bad_request(
            "stream_format takes `audio` only",
            Some("stream_format"),
        ));
    }
    Ok(Ask {
        input: req.input,
        pcm,
        speed: req.speed,
    })
}

pub async fn speech(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<SpeechRequest>,
) -> Result<Response, ApiError> {
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    st.authorize(&headers)?;
    let Some(tts) = st.tts.clone() else {
        return Err(ApiError::not_found(
            "this server has no voice: pull one (`ferrite models pull piper-joe-medium`) and restart it",
            Some("model"),
        ));
    };
    let ask = check(&tts, req)?;
    let pcm = ask.pcm;
    let audio = tokio::task::spawn_blocking(move || speak(&tts, &ask))
        .await
        .map_err(|e| ApiError::internal(format!("the synthesis failed: {e}")))??;
    let (kind, body) = if pcm {
        let at_24k = crate::speech::resample::resample(&audio.1, audio.0, PCM_RATE);
        let bytes: Vec<u8> = at_24k
            .iter()
            .flat_map(|&s| crate::speech::wav::to_i16(s).to_le_bytes())
            .collect();
        ("audio/pcm", bytes)
    } else {
        let bytes = crate::speech::wav::encode_mono(audio.0, &audio.1)
            .map_err(|e| ApiError::internal(format!("cannot write the WAV: {e}")))?;
        ("audio/wav", bytes)
    };
    Ok(([(header::CONTENT_TYPE, kind)], body).into_response())
}

/// The whole answer's audio: (rate in Hz, samples in [-1, 1]).
fn speak(tts: &Tts, ask: &Ask) -> Result<(u32, Vec<f32>), ApiError> {
    let mut slot = tts
        .voice
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if slot.is_none() {
        let loaded = (tts.load)().map_err(|e| {
            ApiError::internal(format!("cannot load the voice: {}", crate::report(&e)))
        })?;
        *slot = Some(loaded);
    }
    let voice = slot
        .as_mut()
        .ok_or_else(|| ApiError::internal("the voice did not load"))?;
    let opts = SpeakOptions {
        rate: ask.speed.unwrap_or(tts.opts.rate),
        ..tts.opts
    };
    let mut samples = Vec::new();
    voice
        .speak_each(&ask.input, &opts, &mut |a| {
            samples.extend_from_slice(&a.samples);
            true
        })
        .map_err(|e| ApiError::internal(crate::report(&e)))?;
    if samples.is_empty() {
        return Err(ApiError::bad_request(
            "the input holds no words to say",
            Some("input"),
        ));
    }
    Ok((voice.sample_rate(), samples))
}
