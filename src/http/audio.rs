//! `POST /v1/audio/transcriptions`: a WAV upload to text with whisper.cpp,
//! as OpenAI's endpoint takes it (platform.openai.com/docs/api-reference/
//! audio/createTranscription): a `multipart/form-data` body with `file` and
//! `model`, and optionally `language`, `prompt`, `temperature` and
//! `response_format` (`json` → `{"text"}`, `text`, `verbose_json` with the
//! duration). The file is checked as `ferrite transcribe` checks one
//! (`speech::wav::parse`) before whisper sees a sample.
//!
//! Whisper runs on tokio's blocking pool, one upload at a time (the model
//! is behind a mutex), beside the LLM's worker: a board transcribes a
//! question while it answers the last one.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::api::ApiError;
use super::state::AppState;

/// The form fields OpenAI defines, read and bounded.
#[derive(Default)]
struct Form {
    file: Option<(String, axum::body::Bytes)>,
    model: Option<String>,
    language: Option<String>,
    format: Option<String>,
}

/// Fields OpenAI defines that change nothing here (whisper.cpp decodes
/// greedily with its own temperature fallback; no prompt conditioning).
const IGNORED: [&str; 5] = [
    "prompt",
    "temperature",
    "timestamp_granularities[]",
    "include[]",
    "chunking_strategy",
];

async fn read_form(mut m: Multipart) -> Result<Form, ApiError> {
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::invalid(
            e.status(),
            format!("cannot read the form: {}", e.body_text()),
        )
    };
    let mut f = Form::default();
    while let Some(field) = m.next_field().await.map_err(bad)? {
        let name = field.name().unwrap_or_default().to_string();
        match name.as_str() {
            "file" => {
                let file = field.file_name().unwrap_or("upload.wav").to_string();
                f.file = Some((file, field.bytes().await.map_err(bad)?));
            }
            "model" => f.model = Some(field.text().await.map_err(bad)?),
            "language" => f.language = Some(field.text().await.map_err(bad)?),
            "response_format" => f.format = Some(field.text().await.map_err(bad)?),
            "stream" => {
                if field.text().await.map_err(bad)? == "true" {
                    return Err(ApiError::bad_request(
                        "streamed transcriptions are not supported",
                        Some("stream"),
                    ));
                }
            }
            n if IGNORED.contains(&n) => {
                field.bytes().await.map_err(bad)?;
            }
            other => {
                return Err(ApiError::bad_request(
                    format!("unknown field `{other}`"),
                    None,
                ))
            }
        }
    }
    Ok(f)
}

pub async fn transcriptions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    form: Multipart,
) -> Result<Response, ApiError> {
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    st.authorize(&headers)?;
    let Some(stt) = st.stt.clone() else {
        return Err(ApiError::not_found(
            "this server has no speech model: pull one (`ferrite models pull whisper-tiny.en`) and restart it",
            Some("model"),
        ));
    };
    let form = read_form(form).await?;
    let model = form
        .model
        .ok_or_else(|| ApiError::bad_request("`model` is required", Some("model")))?;
    if model != stt.name && model != "whisper-1" {
        return Err(ApiError::model_not_found(&model, &stt.name));
    }
    if let Some(l) = form.language.filter(|l| *l != stt.language) {
        return Err(ApiError::bad_request(
            format!(
                "this server transcribes `{}`, not `{l}` (start it with --language {l} and a multilingual whisper model)",
                stt.language
            ),
            Some("language"),
        ));
    }
    let format = form.format.unwrap_or_else(|| "json".into());
    if !["json", "text", "verbose_json"].contains(&format.as_str()) {
        return Err(ApiError::bad_request(
            format!("response_format `{format}` is not supported: json, text or verbose_json"),
            Some("response_format"),
        ));
    }
    let (name, bytes) = form
        .file
        .ok_or_else(|| ApiError::bad_request("`file` is required", Some("file")))?;
    let wav = crate::speech::wav::parse(&bytes, Path::new(&name))
        .map_err(|e| ApiError::bad_request(crate::report(&e), Some("file")))?;
    let pcm = wav.to_pcm16k();
    let duration = pcm.seconds();
    let transcript = tokio::task::spawn_blocking(move || {
        let t = stt
            .transcriber
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.transcribe(&pcm).map(|t| (t.text, stt.language.clone()))
    })
    .await
    .map_err(|e| ApiError::internal(format!("the transcription failed: {e}")))?;
    let (text, language) = transcript.map_err(|e| ApiError::internal(crate::report(&e)))?;
    Ok(match format.as_str() {
        "text" => (StatusCode::OK, format!("{text}\n")).into_response(),
        "verbose_json" => Json(json!({
            "task": "transcribe",
            "language": language,
            "duration": duration,
            "text": text,
        }))
        .into_response(),
        _ => Json(json!({"text": text})).into_response(),
    })
}
