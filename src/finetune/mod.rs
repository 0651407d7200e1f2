//! The offline fine-tune path: LoRA adapters trained on the device from a
//! local JSONL file, written as llama.cpp adapter GGUFs that the runtime
//! hot-swaps.
//!
//! Data flows `data` (JSONL → tokens with a loss mask, through the runtime's
//! own tokenizer and chat template) → `model` (a differentiable llama forward
//! in candle on the base weights as the GGUF quantizes them (`qweight`),
//! with `ops` supplying the fused kernels and their backward passes) →
//! `trainer` (AdamW on the `lora` variables only, checkpoints, validation,
//! progress; `memory` checks the run fits first) → `crate::adapter` (the
//! GGUF that llama.cpp loads), with `plot` drawing the run's loss.svg.

mod checkpoint;
mod config;
mod data;
mod lora;
mod memory;
mod model;
mod ops;
mod optim;
mod plot;
mod qweight;
mod rng;
mod trainer;

use std::path::PathBuf;

pub use checkpoint::TrainConfig;
pub use config::Target;
pub use data::{AUTO_VAL, MIN_AUTO_VAL};
pub use memory::TrainEstimate;
pub use trainer::{finetune, FinetuneOptions, OnStart, TrainSummary};

#[doc(hidden)]
pub mod testing;

#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("{path}:{line}: {msg}")]
    Data {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot resume: {what}")]
    Checkpoint { path: PathBuf, what: String },
    #[error("{0}")]
    Param(String),
    #[error("not enough memory to train: {0}")]
    Memory(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{path}: reading base weights{}", tensor.as_ref().map(|t| format!(" (`{t}`)")).unwrap_or_default())]
    Weights {
        path: PathBuf,
        tensor: Option<String>,
        /// Boxed: candle's error is large, and this enum is every
        /// fine-tuning function's error type.
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("training: {0}")]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error(transparent)]
    Adapter(#[from] crate::adapter::AdapterError),
    /// The caller's `on_start` (e.g. `--eval-data`'s first evaluation).
    #[error("before training")]
    Start(#[source] Box<dyn std::error::Error + Send + Sync>),
}
