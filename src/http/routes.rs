//! The endpoints: `GET /health`, `GET /v1/models`, `POST
//! /v1/chat/completions` and `POST /v1/completions` (whole or streamed as
//! server-sent events ending in `data: [DONE]`). Each request is checked before it is queued: the API key
//! (`Authorization: Bearer`), the body (at most `max_body` bytes of JSON, no
//! unknown field), the model, and every sampling value's range. The queue
//! policy: one model, `parallel` answers at a time (batched), first come
//! first served; at most `queue` requests wait, and one more gets a 503 at
//! once rather than an unbounded wait.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::mpsc::TrySendError;
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
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::api::{
    self, ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, ResponseFormat, Sampling,
    Shape, Strings,
};
use super::job::{Job, Piece, Work};
use super::state::AppState;
use crate::llm::{Finish, GenParams, Grammar, Message, Role, TokenLogprob, MAX_TOP_LOGPROBS};

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
            Err(r) => Err(ApiError::invalid(
                match r.status() {
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY => {
                        axum::http::StatusCode::BAD_REQUEST
                    }
                    s => s,
                },
                r.body_text(),
            )),
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
        return Err(ApiError::invalid(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            format!("The request body is {n} bytes; at most {max}"),
        ));
    }
    Ok(next.run(req).await)
}

/// Seconds since the Unix epoch, OpenAI's `created`.
pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
        st.metrics
            .render(&st.served().map(|s| s.model).unwrap_or_default()),
    )
}

pub async fn models(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    st.authorize(&headers)?;
    // `capabilities` is ferrite's own field (clients ignore fields they do
    // not know): which endpoint takes the model.
    let entry = |id: &str, what: &[&str]| json!({"id": id, "object": "model", "created": st.created, "owned_by": "ferrite", "capabilities": what});
    let served = st.served()?;
    let mut data = vec![entry(&served.model, &["chat", "completions", "embeddings"])];
    data.extend(
        served
            .adapters
            .keys()
            .map(|id| entry(id, &["chat", "completions"])),
    );
    if let Some(stt) = &st.stt {
        data.push(entry(&stt.name, &["transcription"]));
    }
    if let Some(tts) = &st.tts {
        data.push(entry(&tts.name, &["speech"]));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

/// The request's values over the server's defaults, each range-checked.
fn params(st: &AppState, req: Sampling) -> Result<GenParams, ApiError> {
    let bad = |m: String, param| ApiError::bad_request(m, param);
    let mut p = st.defaults.clone();
    if req.n.is_some_and(|n| n != 1) {
        return Err(bad("only n = 1 is supported".into(), Some("n")));
    }
    p.logprobs = req.logprobs;
    if let Some(n) = req.max_tokens {
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
    if let Some(stop) = req.stop {
        let stop = stop.into_vec();
        if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(bad(
                "stop takes up to 4 strings of 1 to 256 bytes".into(),
                Some("stop"),
            ));
        }
        p.stop = stop;
    }
    p.grammar = response_format(req.response_format)?;
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
    st.check_model(&req.model)?;
    if let Some(k) = req.top_logprobs {
        if req.logprobs != Some(true) {
            return Err(ApiError::bad_request(
                "top_logprobs needs logprobs: true",
                Some("top_logprobs"),
            ));
        }
        if k as usize > MAX_TOP_LOGPROBS {
            return Err(ApiError::bad_request(
                format!("top_logprobs takes 0 to {MAX_TOP_LOGPROBS}"),
                Some("top_logprobs"),
            ));
        }
    }
    let params = params(&st, req.sampling())?;
    let (system, history, question) = conversation(&mut req)?;
    let work = Work::Chat {
        system: system.or_else(|| st.system.clone()),
        history,
        question,
    };
    let usage = req.stream_options.is_some_and(|o| o.include_usage);
    let model = std::mem::take(&mut req.model);
    let job = (work, params);
    submit(&st, job, model, Shape::Chat, req.stream.then_some(usage)).await
}

/// `POST /v1/completions`: the prompt continued as is.
pub async fn completions(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(mut req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    st.authorize(&headers)?;
    st.check_model(&req.model)?;
    let bad = ApiError::bad_request;
    if req.echo == Some(true) {
        return Err(bad("echo is not supported", Some("echo")));
    }
    if req.logprobs.is_some_and(|k| k > 5) {
        return Err(bad("logprobs takes 0 to 5", Some("logprobs")));
    }
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(bad(
            "suffix (fill-in-the-middle) is not supported",
            Some("suffix"),
        ));
    }
    let params = params(&st, req.sampling())?;
    let mut prompts = std::mem::replace(&mut req.prompt, Strings::Many(Vec::new())).into_vec();
    if prompts.len() != 1 {
        return Err(bad(
            "prompt takes one string here (a list of one)",
            Some("prompt"),
        ));
    }
    let prompt = prompts.remove(0);
    if prompt.is_empty() {
        return Err(bad("prompt is empty", Some("prompt")));
    }
    let usage = req.stream_options.is_some_and(|o| o.include_usage);
    let model = std::mem::take(&mut req.model);
    let job = (Work::Text { prompt }, params);
    submit(&st, job, model, Shape::Text, req.stream.then_some(usage)).await
}

/// Queue the work (a 503 when the queue is full) and answer, under the
/// `model` name the client asked for: whole, or streamed when `stream` is
/// `Some(include_usage)`.
async fn submit(
    st: &AppState,
    (work, params): (Work, GenParams),
    model: String,
    shape: Shape,
    stream: Option<bool>,
) -> Result<Response, ApiError> {
    let logprobs = params.logprobs.is_some();
    let rx = enqueue(st, (work, params), model.clone())?;
    let prefix = match shape {
        Shape::Chat => "chatcmpl",
        Shape::Text => "cmpl",
    };
    let head = Head {
        shape,
        id: format!("{prefix}-{:016x}", rand_id()),
        created: now(),
        model,
        logprobs,
    };
    match stream {
        Some(usage) => Ok(self::stream(rx, head, usage).into_response()),
        None => whole(rx, &head).await.map(|v| Json(v).into_response()),
    }
}

/// Hand the work to the model's worker: its pieces come back on the
/// receiver; a 503 when the queue is full.
fn enqueue(
    st: &AppState,
    (work, params): (Work, GenParams),
    model: String,
) -> Result<tokio::sync::mpsc::UnboundedReceiver<Piece>, ApiError> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let job = Job {
        work,
        params,
        model,
        out: tx,
    };
    // The bound counts requests accepted and not finished, not what the
    // channel holds: whether the worker has taken the running job off the
    // channel yet must not decide who gets the 503.
    let before = st.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
    if before >= st.queue + st.parallel {
        st.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::busy(st.queue));
    }
    st.metrics.waiting.fetch_add(1, Ordering::Relaxed);
    if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = st.jobs.try_send(job) {
        st.metrics.waiting.fetch_sub(1, Ordering::Relaxed);
        st.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        return Err(ApiError::busy(st.queue));
    }
    Ok(rx)
}

/// What every chunk of one response repeats.
struct Head {
    shape: Shape,
    id: String,
    created: u64,
    model: String,
    /// Log probabilities were asked for (`null` in the answer when not).
    logprobs: bool,
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
    mut rx: tokio::sync::mpsc::UnboundedReceiver<Piece>,
    h: &Head,
) -> Result<Value, ApiError> {
    let mut text = String::new();
    let mut lps: Vec<TokenLogprob> = Vec::new();
    while let Some(p) = rx.recv().await {
        match p {
            Piece::Logprob(lp) => lps.push(lp),
            Piece::Token(t) => text.push_str(&t),
            Piece::Done { finish, usage } => {
                return Ok(api::completion(
                    h.shape,
                    &h.id,
                    h.created,
                    &h.model,
                    &text,
                    finish_reason(finish),
                    (
                        usage,
                        h.logprobs.then(|| api::logprobs(h.shape, &lps, &mut 0)),
                    ),
                ));
            }
            Piece::Embeddings { .. } => break,
            Piece::Error(e) => return Err(ApiError::bad_request(e, None)),
            Piece::Unavailable(e) => return Err(ApiError::unavailable(e)),
        }
    }
    Err(ApiError::internal("the model stopped without an answer"))
}

fn stream(
    rx: tokio::sync::mpsc::UnboundedReceiver<Piece>,
    h: Head,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>> + Send> {
    // A chat stream opens with the role; a text stream with the first piece.
    let first = (h.shape == Shape::Chat).then(|| {
        let v = api::chunk(
            h.shape,
            &h.id,
            h.created,
            &h.model,
            (json!({"role": "assistant", "content": ""}), None),
            None,
        );
        Ok(Event::default().data(v.to_string()))
    });
    let head = futures_util::stream::iter(first);
    // Log probabilities wait for the text of their token, and go out with it.
    let mut pending: Vec<TokenLogprob> = Vec::new();
    let mut offset = 0;
    let body = UnboundedReceiverStream::new(rx).flat_map(move |p| {
        let mut lps = |pending: &mut Vec<TokenLogprob>| {
            let v = h
                .logprobs
                .then(|| api::logprobs(h.shape, pending, &mut offset));
            pending.clear();
            v
        };
        let chunk = |delta, finish| api::chunk(h.shape, &h.id, h.created, &h.model, delta, finish);
        let events: Vec<Value> = match p {
            Piece::Logprob(lp) => {
                pending.push(lp);
                Vec::new()
            }
            // Text held back (a possible stop string, a partial character)
            // comes as an empty piece: its log probabilities wait on.
            Piece::Token(t) if t.is_empty() => Vec::new(),
            Piece::Token(t) => vec![chunk((json!({"content": t}), lps(&mut pending)), None)],
            Piece::Done { finish, usage } => {
                let last = (json!({}), lps(&mut pending));
                let mut v = vec![chunk(last, Some(finish_reason(finish)))];
                if include_usage {
                    v.push(api::usage_chunk(h.shape, &h.id, h.created, &h.model, usage));
                }
                v
            }
            Piece::Embeddings { .. } => Vec::new(),
            Piece::Error(e) => vec![ApiError::bad_request(e, None).body()],
            Piece::Unavailable(e) => vec![ApiError::unavailable(e).body()],
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

/// `POST /v1/embeddings`: one unit vector per input, mean-pooled from the
/// base model (an adapter does not apply).
pub async fn embeddings(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    st.metrics.requests.fetch_add(1, Ordering::Relaxed);
    st.authorize(&headers)?;
    let served = st.served()?;
    if req.model != served.model {
        served.pick(&req.model)?;
        return Err(ApiError::bad_request(
            format!(
                "embeddings come from the base model: ask for `{}`",
                served.model
            ),
            Some("model"),
        ));
    }
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                format!("encoding_format is `float` or `base64`, not `{other}`"),
                Some("encoding_format"),
            ))
        }
    };
    let inputs = req.input.into_vec();
    if inputs.is_empty() || inputs.len() > crate::llm::MAX_EMBED_INPUTS {
        return Err(ApiError::bad_request(
            format!("input takes 1 to {} strings", crate::llm::MAX_EMBED_INPUTS),
            Some("input"),
        ));
    }
    if inputs.iter().any(String::is_empty) {
        return Err(ApiError::bad_request("an input is empty", Some("input")));
    }
    if let Some(d) = req.dimensions.filter(|&d| d as usize != served.n_embd) {
        return Err(ApiError::bad_request(
            format!(
                "this model's embeddings have {} dimensions, not {d}",
                served.n_embd
            ),
            Some("dimensions"),
        ));
    }
    let model = req.model;
    let mut rx = enqueue(
        &st,
        (Work::Embed { inputs }, st.defaults.clone()),
        model.clone(),
    )?;
    while let Some(p) = rx.recv().await {
        match p {
            Piece::Embeddings { vectors, tokens } => {
                return Ok(Json(api::embeddings(&model, &vectors, tokens, base64)).into_response());
            }
            Piece::Error(e) => return Err(ApiError::bad_request(e, None)),
            Piece::Unavailable(e) => return Err(ApiError::unavailable(e)),
            _ => {}
        }
    }
    Err(ApiError::internal("the model stopped without an answer"))
}
