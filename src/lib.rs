//! ferrite: an offline assistant runtime for small boards.
//!
//! The crate follows the data flow. A query arrives as a line on a `console`
//! link (serial port, pseudo-terminal, stdio) or from the CLI; the `assistant`
//! loop runs commands and conversations; the `llm` stage turns a conversation
//! into a stream of text pieces through llama.cpp, which flow back out to the
//! console. `gguf` validates every model file before C code sees it;
//! `models` pins, fetches and stores models; `board` holds per-device settings.
//! `finetune` trains LoRA adapters on the device and `eval` scores what they
//! changed; `adapter` is their file format, shared by the trainer and the
//! runtime that hot-swaps them.
//! `speech` turns WAV files and a microphone into text through whisper.cpp,
//! on the same ggml as llama.cpp; `tts` speaks answers with a Piper voice;
//! `hw` holds the GPIO seams; `rpc` splits a model across boards with
//! ggml's RPC backend.

pub mod adapter;
pub mod alsa;
pub mod assistant;
pub mod board;
pub mod chart;
pub mod console;
pub mod eval;
pub mod finetune;
pub mod gguf;
pub mod http;
pub mod hw;
pub mod llm;
pub mod models;
pub mod progress;
pub mod rpc;
pub mod speech;
pub mod tts;

/// An error and its causes on one line, `what: why: why`, as a person reads
/// it. Every error in ferrite says only its own level (what ferrite was
/// doing, which file) and keeps the lower-level error as its `source`, so
/// this prints each cause once; a cause that repeats its parent's text is
/// skipped.
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out.replace('\n', " ")
}

/// The version in banners and `--version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
