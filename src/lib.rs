//! ferrite: an offline assistant runtime for small boards.
//!
//! The crate follows the data flow. A query arrives as a line on a `console`
//! link (serial port, pseudo-terminal, stdio) or from the CLI; the `assistant`
//! loop runs commands and conversations; the `llm` stage turns a conversation
//! into a stream of text pieces through llama.cpp, which flow back out to the
//! console. `gguf` validates every model file before C code sees it;
//! `models` pins, fetches and stores models; `board` holds per-device settings.
//! `finetune` trains LoRA adapters on the device; `adapter` is their file
//! format, shared by the trainer and the runtime that hot-swaps them.
//! `speech` turns WAV files and a microphone into text through whisper.cpp,
//! on the same ggml as llama.cpp; `hw` holds the GPIO seams.

pub mod adapter;
pub mod assistant;
pub mod board;
pub mod console;
pub mod finetune;
pub mod gguf;
pub mod hw;
pub mod llm;
pub mod models;
pub mod progress;
pub mod speech;

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
    #[error(transparent)]
    Adapter(#[from] adapter::AdapterError),
    #[error(transparent)]
    Finetune(#[from] finetune::FinetuneError),
    #[error(transparent)]
    Speech(#[from] speech::SpeechError),
    #[error(transparent)]
    Hw(#[from] hw::HwError),
}

/// The version in banners and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
