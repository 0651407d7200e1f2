//! ferrite: an offline assistant runtime for small boards.
//!
//! The crate follows the data flow. A query arrives as a line on a `console`
//! link (serial port, pseudo-terminal, stdio) or from the CLI; the `assistant`
//! loop runs commands and conversations; the `llm` stage turns a conversation
//! into a stream of text pieces through llama.cpp, which flow back out to the
//! console. `gguf` validates every model file before C code sees it;
//! `models` pins, fetches and stores models; `board` holds per-device settings.

pub mod assistant;
pub mod board;
pub mod console;
pub mod gguf;
pub mod llm;
pub mod models;
pub mod systemd;

/// Any error from any stage, for front ends that handle them alike.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Gguf(#[from] gguf::GgufError),
    #[error(transparent)]
    Models(#[from] models::ModelsError),
    #[error(transparent)]
    Llm(#[from] llm::LlmError),
    #[error(transparent)]
    Board(#[from] board::BoardError),
    #[error(transparent)]
    Assistant(#[from] assistant::AssistantError),
}

/// The version in banners and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
