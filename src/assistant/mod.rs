//! The assistant: one conversation engine (`core`) and the front ends that
//! drive it. The core takes typed requests (`protocol::Request`: a question
//! or a console command) and says typed events (`event::Event`); front ends
//! only parse and render. `serve` is the serial console (text or JSON lines
//! over a UART, a pseudo-terminal or stdio: line editing, reconnecting,
//! model switches); `render` holds the console's two renderings. `ferrite
//! chat` is another front end of the same core, and the HTTP API and the
//! speaker are next.

mod commands;
mod core;
mod event;
mod protocol;
pub mod render;
mod serve;
mod status;

use std::path::{Path, PathBuf};

pub use self::core::{Carry, Core, Emit, Outcome};
pub use commands::{Command, Setting, HELP};
pub use event::{Event, StatsReport};
pub use protocol::{parse_json_line, Request};
pub use serve::{load_engine, serve};

pub use status::rss_bytes;

use crate::board::{Board, BoardError};
use crate::hw::StatusCell;
use crate::llm::{GenParams, LlmError, LoadOptions, SessionOptions};
use crate::models::ModelsError;
use crate::speech::listen::Heard;

/// What runs the assistant as a service hears from it, and how it asks the
/// assistant to stop. `ferrite serve` answers systemd's protocol with it;
/// elsewhere `NoService`.
pub trait Service {
    /// The model is loaded and the loop runs: questions will be answered as
    /// soon as the console is there (it may still be missing).
    fn ready(&self) {}
    /// The loop is alive: called on every turn of the loop and every
    /// generated token, so it must be cheap.
    fn heartbeat(&self) {}
    /// One line on what the assistant is doing ("waiting for /dev/serial0").
    fn status(&self, _line: &str) {}
    /// Whether the assistant should end (a SIGTERM): checked with every
    /// heartbeat; an answer in progress is cancelled and `serve` returns.
    fn stopping(&self) -> bool {
        false
    }
}

/// No service manager.
pub struct NoService;

impl Service for NoService {}

/// Spoken queries for the loop (`serve --listen`, `listen`): what the ear
/// heard, and the status it shares with the LED.
pub struct Ear {
    pub heard: std::sync::mpsc::Receiver<Heard>,
    pub status: StatusCell,
    /// Answers to spoken questions are spoken too (`--speak`).
    pub mouth: Option<crate::tts::speaker::Speaker>,
}

/// What `ferrite serve` was asked to do.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `--lora NAME|PATH[:SCALE]` applied from the start.
    pub lora: Option<String>,
    /// Model name or path; `None` is the board's/manifest's default.
    pub model: Option<String>,
    pub load: LoadOptions,
    pub session: SessionOptions,
    pub params: GenParams,
    pub system: Option<String>,
    /// Echo typed characters (serial terminals do not echo locally).
    pub echo: bool,
    /// One JSON object per line in and out, for machines.
    pub json: bool,
    /// Longest accepted input line in bytes.
    pub max_line_bytes: usize,
    /// The board profile: memory budget and thermal limits.
    pub board: Board,
    /// Root of the filesystem to read `/proc` and `/sys` from (tests use a
    /// fake tree).
    pub sys_root: PathBuf,
    /// Speculative decoding in every conversation (`--draft`, `--lookup`).
    pub draft: Option<DraftSetting>,
    /// Keep the system prompt's KV state in the store's `prompt-cache/`
    /// and load it when a conversation starts (`--prompt-cache`).
    pub prompt_cache: bool,
}

/// `--draft MODEL` or `--lookup`, with the draft limits.
#[derive(Debug, Clone)]
pub struct DraftSetting {
    /// The draft model's name and file; `None`: prompt lookup.
    pub model: Option<(String, PathBuf)>,
    pub opts: crate::llm::DraftOptions,
}

#[derive(Debug, thiserror::Error)]
pub enum AssistantError {
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Models(#[from] ModelsError),
    #[error(transparent)]
    Board(#[from] BoardError),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Adapter(#[from] crate::adapter::AdapterError),
    #[error("{what}")]
    Link {
        what: String,
        source: std::io::Error,
    },
}

/// The thermal root used outside tests.
pub fn default_sys_root() -> PathBuf {
    Path::new("/").to_path_buf()
}
