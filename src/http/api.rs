//! OpenAI's completion wire formats, as the official clients send and read
//! them (platform.openai.com/docs/api-reference/chat and .../completions):
//! the requests with every field ferrite honours, the responses, the
//! streamed chunks, and the error object `{"error": {"message", "type",
//! "param", "code"}}`.
//!
//! Unknown request fields are refused (a 400 naming the field) rather than
//! silently ignored; fields OpenAI has but ferrite cannot honour yet (`n` > 1,
//! `logprobs`, `tools`) are refused by value in `routes`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::llm::{TokenLogprob, TokenText};

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Strings>,
    pub n: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub response_format: Option<ResponseFormat>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    /// An end-user id (OpenAI's abuse monitoring); accepted and unused.
    pub user: Option<String>,
}

impl ChatRequest {
    /// The sampling fields, taken out for `routes::params`.
    pub fn sampling(&mut self) -> Sampling {
        Sampling {
            n: self.n,
            logprobs: (self.logprobs == Some(true))
                .then(|| self.top_logprobs.unwrap_or(0) as usize),
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop.take(),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            response_format: self.response_format.take(),
        }
    }
}

/// `POST /v1/embeddings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingRequest {
    pub model: String,
    /// One text or a list of them (token-id lists are not taken).
    pub input: Strings,
    /// `float` (the default) or `base64` (little-endian f32s, what the
    /// official Python client asks for).
    pub encoding_format: Option<String>,
    /// Refused unless it is the model's own width.
    pub dimensions: Option<u32>,
    pub user: Option<String>,
}

/// The embeddings response: one `embedding` object per input, in order.
pub fn embeddings(model: &str, vectors: &[Vec<f32>], tokens: usize, base64: bool) -> Value {
    use base64::Engine as _;
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

/// `POST /v1/completions` (OpenAI's legacy text completions): the prompt
/// continued as is, without the chat template.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    pub model: String,
    /// One string, or a list of them (of which one is served).
    pub prompt: Strings,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Strings>,
    pub n: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Refused when true: the answer is not prefixed with the prompt.
    pub echo: Option<bool>,
    /// Refused when set: no fill-in-the-middle.
    pub suffix: Option<String>,
    /// Refused above 1.
    pub best_of: Option<u32>,
    /// Log probabilities with this many rivals per token (0 to 5).
    pub logprobs: Option<u32>,
    pub user: Option<String>,
}

impl CompletionRequest {
    /// The sampling fields, taken out for `routes::params`. OpenAI's
    /// default `max_tokens` here is 16.
    pub fn sampling(&mut self) -> Sampling {
        Sampling {
            n: self.n.or(self.best_of),
            logprobs: self.logprobs.map(|k| k as usize),
            max_tokens: Some(self.max_tokens.unwrap_or(16)),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            stop: self.stop.take(),
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            response_format: None,
        }
    }
}

/// The sampling fields both completion requests share.
#[derive(Debug)]
pub struct Sampling {
    pub n: Option<u32>,
    /// Log probabilities with this many rivals per token.
    pub logprobs: Option<usize>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Strings>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub response_format: Option<ResponseFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// One string or a list of them, as OpenAI takes `stop`, `prompt` and
/// `input`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Strings {
    One(String),
    Many(Vec<String>),
}

impl Strings {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Strings::One(s) => vec![s],
            Strings::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub schema: Option<Value>,
    #[serde(default)]
    pub strict: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
    /// A participant's name; accepted and unused.
    #[serde(default)]
    pub name: Option<String>,
}

/// `content`: a string, or parts of which only text is understood.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
}

impl Content {
    pub fn into_text(self) -> String {
        match self {
            Content::Text(s) => s,
            Content::Parts(p) => p
                .into_iter()
                .map(|ContentPart::Text { text }| text)
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// Token counts, as OpenAI reports them.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// OpenAI's `usage.prompt_tokens_details`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PromptTokensDetails {
    /// Prompt tokens not evaluated for this answer: already in the slot's
    /// cache, or loaded from the prompt cache on disk.
    pub cached_tokens: usize,
}

impl Usage {
    pub fn new(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Usage {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens },
        }
    }
}

/// Which of OpenAI's two completion formats a response takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `chat.completion`: a `message`, streamed as `delta`s.
    Chat,
    /// `text_completion` (the legacy `/v1/completions`): a `text`.
    Text,
}

impl Shape {
    fn object(self, chunk: bool) -> &'static str {
        match (self, chunk) {
            (Shape::Chat, false) => "chat.completion",
            (Shape::Chat, true) => "chat.completion.chunk",
            (Shape::Text, _) => "text_completion",
        }
    }
}

/// The whole answer (`stream: false`).
pub fn completion(
    shape: Shape,
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish: &str,
    (usage, logprobs): (Usage, Option<Value>),
) -> Value {
    let mut choice = json!({"index": 0, "logprobs": logprobs, "finish_reason": finish});
    match shape {
        Shape::Chat => choice["message"] = json!({"role": "assistant", "content": text}),
        Shape::Text => choice["text"] = json!(text),
    }
    json!({
        "id": id,
        "object": shape.object(false),
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
    })
}

/// One streamed chunk: a `delta` (chat) or `text` piece, or, with
/// `finish`, the finish reason. A chat stream's first chunk (the role) is
/// `delta` `{"role": "assistant", "content": ""}`.
pub fn chunk(
    shape: Shape,
    id: &str,
    created: u64,
    model: &str,
    (delta, logprobs): (Value, Option<Value>),
    finish: Option<&str>,
) -> Value {
    let mut choice = json!({"index": 0, "logprobs": logprobs, "finish_reason": finish});
    match shape {
        Shape::Chat => choice["delta"] = delta,
        Shape::Text => choice["text"] = delta.get("content").cloned().unwrap_or(json!("")),
    }
    json!({
        "id": id,
        "object": shape.object(true),
        "created": created,
        "model": model,
        "choices": [choice],
    })
}

/// Log probabilities in `shape`'s format: chat's `{"content": [{"token",
/// "logprob", "bytes", "top_logprobs": [...]}]}`, or the legacy
/// completions' parallel lists `tokens`, `token_logprobs`, `top_logprobs`
/// (token → logprob) and `text_offset` (characters into the answer, counted
/// on from `offset`, which is advanced).
pub fn logprobs(shape: Shape, entries: &[TokenLogprob], offset: &mut usize) -> Value {
    match shape {
        Shape::Chat => {
            let one =
                |t: &TokenText, lp: f32| json!({"token": t.text, "logprob": lp, "bytes": t.bytes});
            let content: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let mut v = one(&e.token, e.logprob);
                    v["top_logprobs"] = e.top.iter().map(|(t, lp)| one(t, *lp)).collect();
                    v
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Shape::Text => {
            let mut offsets = Vec::with_capacity(entries.len());
            for e in entries {
                offsets.push(*offset);
                *offset += e.token.text.chars().count();
            }
            let top: Vec<Value> = entries
                .iter()
                .map(|e| {
                    let m: serde_json::Map<String, Value> = e
                        .top
                        .iter()
                        .map(|(t, lp)| (t.text.clone(), json!(lp)))
                        .collect();
                    Value::Object(m)
                })
                .collect();
            json!({
                "tokens": entries.iter().map(|e| &e.token.text).collect::<Vec<_>>(),
                "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
                "top_logprobs": top,
                "text_offset": offsets,
            })
        }
    }
}

/// The last chunk under `stream_options.include_usage`: no choices, usage.
pub fn usage_chunk(shape: Shape, id: &str, created: u64, model: &str, usage: Usage) -> Value {
    json!({
        "id": id,
        "object": shape.object(true),
        "created": created,
        "model": model,
        "choices": [],
        "usage": usage,
    })
}

/// An error as OpenAI returns it; the official clients map the status to
/// their exception (401 `AuthenticationError`, 404 `NotFoundError`, ...).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param,
            code: None,
        }
    }

    /// An `invalid_request_error` with another status (413, 415, ...).
    pub fn invalid(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            ..ApiError::bad_request(message, None)
        }
    }

    /// A 404 for something this server does not have.
    pub fn not_found(message: impl Into<String>, param: Option<&'static str>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: Some("model_not_found"),
            ..ApiError::bad_request(message, param)
        }
    }

    pub fn unauthorized() -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: "Incorrect API key provided (send it as `Authorization: Bearer KEY`)".into(),
            kind: "invalid_request_error",
            param: None,
            code: Some("invalid_api_key"),
        }
    }

    pub fn model_not_found(model: &str, served: &str) -> Self {
        ApiError::not_found(
            format!("The model `{model}` does not exist: this server runs `{served}`"),
            Some("model"),
        )
    }

    pub fn busy(queued: usize) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!("The server is busy: {queued} requests are waiting; retry shortly"),
            kind: "server_error",
            param: None,
            code: Some("server_busy"),
        }
    }

    /// A 503 while the model loads (at start, or after a `/model` switch).
    pub fn loading() -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "The model is loading; retry shortly".into(),
            kind: "server_error",
            param: None,
            code: Some("model_loading"),
        }
    }

    /// A 503 when a board holding some of the model's layers (`--rpc`)
    /// stopped answering: the answer is lost, the model is loaded again.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: Some("rpc_server_lost"),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
