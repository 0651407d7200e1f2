//! What the assistant core says: a typed event for everything a front end
//! shows. Front ends only render these (the serial text console, the JSON
//! line protocol, `chat`, next the HTTP API and the speaker); no event knows
//! which front end listens. Serialized with serde as `{"event": "token",
//! ...}` for front ends that want a generic form; the JSON line protocol
//! keeps its own wire format (`render::json`).

use serde::Serialize;

use crate::llm::{Finish, GenStats};

/// One thing the assistant has to say.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A conversation starts on `model` with a context of `ctx` tokens.
    Ready {
        version: &'static str,
        model: String,
        ctx: u32,
    },
    /// Spoken input, as whisper heard it (seconds of audio, seconds of
    /// compute).
    Heard {
        text: String,
        audio_s: f64,
        stt_s: f64,
    },
    /// A piece of the answer (whole UTF-8 characters; may be empty when a
    /// token ended inside a character).
    Token { text: String },
    /// The answer ended.
    Done { finish: Finish, stats: GenStats },
    /// A command's result: which command, and what it says.
    Info { command: &'static str, text: String },
    /// `/stats`.
    Stats(Box<StatsReport>),
    /// A request that could not be done; the conversation goes on.
    Error { message: String },
}

impl Event {
    pub fn info(command: &'static str, text: impl Into<String>) -> Event {
        Event::Info {
            command,
            text: text.into(),
        }
    }

    pub fn error(message: impl Into<String>) -> Event {
        Event::Error {
            message: message.into(),
        }
    }
}

/// What `/stats` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsReport {
    /// The last answer's figures.
    pub last: Option<GenStats>,
    pub ctx_tokens: u32,
    /// Question-and-answer exchanges in the conversation.
    pub turns: usize,
    pub rss_bytes: Option<u64>,
    pub soc_temp_c: Option<f64>,
    pub throttled: bool,
    pub threads: i32,
    /// The LoRA adapter in use and its scale.
    pub adapter: Option<(String, f32)>,
    /// The speculative drafter in use (`--draft`, `--lookup`); the last
    /// answer's drafted and accepted tokens are in `last`. Left out of the
    /// JSON protocol without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<String>,
    /// Output the link dropped for a terminal that stopped reading (the
    /// console fills this in; the core cannot see the link).
    pub output_dropped_bytes: Option<u64>,
}
