//! The endpoints: `GET /health`, `GET /v1/models`, `POST
//! /v1/chat/completions` (whole or streamed as server-sent events ending in
//! `data: [DONE]`). Each request is checked before it is queued: the API key
//! (`Authorization: Bearer`), the body (at most `max_body` bytes of JSON, no
//! unknown field), the model, and every sampling value's range. The queue
//! policy: one model, one answer at a time, first come first served; at most
//! `queue` requests wait, and one more gets a 503 at once rather than an
//! unbounded wait.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;

use super::api::{self, ApiError, ChatRequest, ResponseFormat, Usage};
use super::metrics::Metrics;
use super::worker::{Job, Piece};
use crate::llm::{Finish, GenParams, Grammar, Message, Role};

/// What every handler shares.
pub struct AppState {
    pub model: String,
    pub api_key: Option<String>,
    pub defaults: GenParams,
    pub jobs: SyncSender<Job>,
    pub metrics: Arc<Metrics>,
    pub created: u64,
}

/// `Json`, with its rejections (bad JSON, an unknown field, a body over the
/// limit) in OpenAI's error shape and status.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            // OpenAI answers a body it cannot take with 400 (axum: 422 for
            // a well-formed body of the wrong shape); 413 and 415 stay.
            Err(r) => Err(ApiError {
                status: match r.status() {
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY => {
                        axum::http::StatusCode::BAD_REQUEST
                    }
                    s => s,
                },
                message: r.body_text(),
                kind: "invalid_request_error",
                param: None,
                code: None,
            }),
        }
    }
}

/// A body whose `Content-Length` is over `max` gets its 413 before a byte
/// of it is read (the limit on the body itself still holds for bodies sent
/// without a length).
pub async fn declared_size(
    State(max): State<usize>,
    req: Request,
    next: axum::middleware::Next,
) -> Result<Response, ApiError> {
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|&n| n > max as u64) {
        return Err(ApiError {
            status: axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            message: format!("The request body is {n} bytes; at most {max}"),
            kind: "invalid_request_error",
            param: None,
            code: None,
        });
    }
    Ok(next.run(req).await)
}

/// Seconds since the Unix epoch, OpenAI's `created`.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl AppState {
    fn authorize(&self, headers: &HeaderMap) -> Result<(), ApiError> {
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

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        st.metrics.render(&st.model),
    )
}

pub async fn models(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    st.authorize(&headers)?;
    Ok(Json(json!({
        "object": "list",
        "data": [{"id": st.model, "object": "model", "created": st.created, "owned_by": "ferrite"}],
    })))
}

/// The request's values over the server's defaults, each range-checked.
fn params(st: &AppState, req: &mut ChatRequest) -> Result<GenParams, ApiError> {
    let bad = |m: String, param| ApiError::bad_request(m, param);
    let mut p = st.defaults.clone();
    if req.n.is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is supported".into(), Some("n")));
    }
    if req.logprobs == Some(true) || req.top_logprobs.is_some() {
        return Err(bad(
            "logprobs are not supported yet".into(),
            Some("logprobs"),
        ));
    }
    if let Some(n) = req.max_completion_tokens.or(req.max_tokens) {
        if n == 0 {
            return Err(bad(
                "max_tokens must be at least 1".into(),
                Some("max_tokens"),
            ));
        }
        p.n_predict = Some(n as usize);
    }
    if let Some(t) = req.temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(bad(
                "temperature must be from 0 to 2".into(),
                Some("temperature"),
            ));
        }
        p.temperature = t;
    }
    if let Some(v) = req.top_p {
        if !(0.0..=1.0).contains(&v) {
            return Err(bad("top_p must be from 0 to 1".into(), Some("top_p")));
        }
        p.top_p = v;
    }
    for (v, name, slot) in [
        (
            req.presence_penalty,
            "presence_penalty",
            &mut p.presence_penalty,
        ),
        (
            req.frequency_penalty,
            "frequency_penalty",
            &mut p.frequency_penalty,
        ),
    ] {
        if let Some(v) = v {
            if !(-2.0..=2.0).contains(&v) {
                return Err(bad(format!("{name} must be from -2 to 2"), None));
            }
            *slot = v;
        }
    }
    if let Some(s) = req.seed {
        p.seed = u32::try_from(s)
            .map_err(|_| bad("seed must be from 0 to 4294967295".into(), Some("seed")))?;
    }
    if let Some(stop) = req.stop.take() {
        let stop = stop.into_vec();
        if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(bad(
                "stop takes up to 4 strings of 1 to 256 bytes".into(),
                Some("stop"),
            ));
        }
        p.stop = stop;
    }
    p.grammar = response_format(req.response_format.take())?;
    p.validate().map_err(|e| bad(crate::report(&e), None))?;
    Ok(p)
}

/// `response_format` as a grammar: `json_object` any JSON object,
/// `json_schema` its schema through llama.cpp's converter.
fn response_format(f: Option<ResponseFormat>) -> Result<Option<Grammar>, ApiError> {
    Ok(match f {
        None | Some(ResponseFormat::Text) => None,
        Some(ResponseFormat::JsonObject) => Some(Grammar::json_object()),
        Some(ResponseFormat::JsonSchema { json_schema }) => {
            let schema = json_schema.schema.unwrap_or_else(|| json!({}));
            Some(
                Grammar::from_schema_value(&schema, "response_format.json_schema.schema").map_err(
                    |e| ApiError::bad_request(crate::report(&e), Some("response_format")),
                )?,
            )
        }
    })
}

/// The conversation: an optional leading system message, turns, and the
/// user's question last.
fn conversation(req: &mut ChatRequest) -> Result<(Option<String>, Vec<Message>, String), ApiError> {
    let bad = |m: &str| ApiError::bad_request(m, Some("messages"));
    let mut msgs = std::mem::take(&mut req.messages).into_iter().peekable();
    let system = match msgs.peek() {
        Some(m) if m.role == "system" || m.role == "developer" => {
            msgs.next().map(|m| m.content.into_text())
        }
        _ => None,
    };
    let mut turns = Vec::new();
    for m in msgs {
        let role = match m.role.as_str() {
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "system" | "developer" => return Err(bad("a system message may only come first")),
            other => {
                return Err(ApiError::bad_request(
                    format!("unknown role `{other}`"),
                    Some("messages"),
                ))
            }
        };
        turns.push(Message::new(role, m.content.into_text()));
    }
    match turns.pop() {
        Some(Message {
            role: Role::User,
            content,
        }) => Ok((system, turns, content)),
        _ => Err(bad("the last message must be the user's")),
    }
}

pub async fn chat(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(mut req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    st.authorize(&headers)?;
    if req.model != st.model {
        return Err(ApiError::model_not_found(&req.model, &st.model));
    }
    let params = params(&st, &mut req)?;
    let (system, history, question) = conversation(&mut req)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let job = Job {
        system,
        history,
        question,
        params,
        out: tx,
    };
    let queued = st.metrics.waiting.fetch_add(1, Ordering::Relaxed);
    match st.jobs.try_send(job) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
            st.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ApiError::busy(queued));
        }
    }
    let id = format!("chatcmpl-{:016x}", rand_id());
    let created = now();
    if req.stream {
        let usage = req.stream_options.is_some_and(|o| o.include_usage);
        Ok(stream(rx, id, created, st.model.clone(), usage).into_response())
    } else {
        whole(rx, &id, created, &st.model)
            .await
            .map(|v| Json(v).into_response())
    }
}

fn finish_reason(f: Finish) -> &'static str {
    match f {
        Finish::Length | Finish::ContextFull => "length",
        _ => "stop",
    }
}

fn rand_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now());
    h.finish()
}

async fn whole(
    mut rx: tokio::sync::mpsc::Receiver<Piece>,
    id: &str,
    created: u64,
    model: &str,
) -> Result<Value, ApiError> {
    let mut text = String::new();
    while let Some(p) = rx.recv().await {
        match p {
            Piece::Token(t) => text.push_str(&t),
            Piece::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let usage = Usage {
                    prompt_tokens,
                    completion_tokens,
                    total_tokens: prompt_tokens + completion_tokens,
                };
                return Ok(api::completion(
                    id,
                    created,
                    model,
                    &text,
                    finish_reason(finish),
                    usage,
                ));
            }
            Piece::Error(e) => return Err(ApiError::bad_request(e, None)),
        }
    }
    Err(ApiError::internal("the model stopped without an answer"))
}

fn stream(
    rx: tokio::sync::mpsc::Receiver<Piece>,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>> + Send> {
    let first = api::chunk(
        &id,
        created,
        &model,
        json!({"role": "assistant", "content": ""}),
        None,
    );
    let head = futures_util::stream::once(std::future::ready(Ok(
        Event::default().data(first.to_string())
    )));
    let body = ReceiverStream::new(rx).flat_map(move |p| {
        let events: Vec<Value> = match p {
            Piece::Token(t) => vec![api::chunk(
                &id,
                created,
                &model,
                json!({"content": t}),
                None,
            )],
            Piece::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                let mut v = vec![api::chunk(
                    &id,
                    created,
                    &model,
                    json!({}),
                    Some(finish_reason(finish)),
                )];
                if include_usage {
                    v.push(api::usage_chunk(
                        &id,
                        created,
                        &model,
                        Usage {
                            prompt_tokens,
                            completion_tokens,
                            total_tokens: prompt_tokens + completion_tokens,
                        },
                    ));
                }
                v
            }
            Piece::Error(e) => vec![ApiError::bad_request(e, None).body()],
        };
        futures_util::stream::iter(
            events
                .into_iter()
                .map(|v| Ok(Event::default().data(v.to_string()))),
        )
    });
    let done = futures_util::stream::once(std::future::ready(Ok(Event::default().data("[DONE]"))));
    Sse::new(head.chain(body).chain(done))
}
