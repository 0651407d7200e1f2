//! ferrite: an offline assistant runtime for small boards.
//!
//! The crate follows the data flow. Text arrives from a front end (the CLI
//! today; the serial console and speech next), the `llm` stage turns a
//! conversation into a stream of text pieces through llama.cpp, and the front
//! end shows them. `gguf` validates every model file before C code sees it;
//! `models` pins, fetches and stores models; `board` holds per-device settings.

pub mod board;
pub mod gguf;
pub mod llm;
pub mod models;

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
}

/// The version in banners and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
