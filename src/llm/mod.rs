//! The LLM stage: llama.cpp through `llama-cpp-2`, wrapped so the rest of
//! ferrite deals in prompts, messages and a stream of text pieces.
//!
//! `Engine` owns a loaded model (validated by our GGUF reader first, then
//! memory-mapped by llama.cpp); `Session` owns a context with its KV cache and
//! the conversation, and reuses the cached prefix between turns so a follow-up
//! question only pays for its new tokens. Sampling, beam search, the UTF-8 and
//! stop-string handling of the output stream, perplexity and the benchmark each
//! live in their own file.

mod adapters;
mod batch;
mod beam;
mod bench;
mod chat;
mod context;
mod embed;
mod engine;
mod grammar;
mod logprobs;
mod params;
mod perplexity;
mod prompt_cache;
mod score;
mod session;
mod spec_bench;
mod speculative;
mod stats;
mod text;

use std::sync::OnceLock;

use llama_cpp_2::llama_backend::LlamaBackend;

pub use adapters::{parse_adapter_spec, ActiveAdapter, AdapterId};
pub use batch::{BatchSink, Batcher, NotStarted, Out, Request};
pub use bench::{run_bench, BenchOptions, BenchResult};
pub use chat::{render_template, Message, Role, TemplateKind};
pub use context::SessionOptions;
pub use embed::{unit, Embeddings, MAX_EMBED_INPUTS};
pub use engine::{Engine, LoadOptions};
pub use grammar::{Grammar, GrammarError, MAX_GRAMMAR_BYTES};
pub use logprobs::{Probe, TokenLogprob, TokenText, MAX_TOP_LOGPROBS};
pub use params::GenParams;
pub use perplexity::{perplexity, PerplexityResult};
pub use prompt_cache::{standing_prefix, PromptCache, Warmed};
pub use score::{score_answer, TokenScore};
pub use session::Session;
pub use spec_bench::{run_spec_bench, SpecBenchOptions, SpecResult, SPEC_PROMPTS};
pub use speculative::{
    check_vocab, lookup, DraftModel, DraftOptions, Drafter, LOOKUP_NGRAM, MAX_DRAFT,
};
pub use stats::{Finish, GenStats, Reply};
pub use text::{StopMatcher, Utf8Stream};

/// A cause from a library that has several error types for one step.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

/// What went wrong in the LLM stage. Each message says what ferrite was
/// doing; the cause (llama.cpp's own error) is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
    #[error("llama.cpp could not initialise its backend")]
    Backend(#[source] std::sync::Arc<llama_cpp_2::LlamaCppError>),
    #[error("{path}: llama.cpp refused to load the model (run with -v to see its log)")]
    Load {
        path: std::path::PathBuf,
        #[source]
        source: llama_cpp_2::LlamaModelLoadError,
    },
    #[error("cannot create a context of {ctx_tokens} tokens (try a smaller -c)")]
    Context {
        ctx_tokens: u32,
        #[source]
        source: llama_cpp_2::LlamaContextLoadError,
    },
    #[error("the prompt needs {needed} tokens but the context holds {ctx_tokens}: shorten it or raise -c")]
    PromptTooLong { needed: usize, ctx_tokens: u32 },
    #[error("llama.cpp decode failed")]
    Decode(#[from] llama_cpp_2::DecodeError),
    #[error("a token batch for llama.cpp overflowed")]
    Batch(#[from] llama_cpp_2::llama_batch::BatchAddError),
    #[error("llama.cpp's KV cache")]
    KvCache(#[from] llama_cpp_2::context::kv_cache::KvCacheConversionError),
    #[error("chat template")]
    Template(#[source] Cause),
    #[error("LoRA adapter `{name}`")]
    Adapter {
        name: String,
        #[source]
        source: Cause,
    },
    #[error(transparent)]
    AdapterFile(#[from] crate::adapter::AdapterError),
    #[error("invalid parameter: {0}")]
    Param(String),
    #[error(transparent)]
    Grammar(#[from] grammar::GrammarError),
    #[error(transparent)]
    Rpc(#[from] crate::rpc::RpcError),
}

static BACKEND: OnceLock<Result<LlamaBackend, std::sync::Arc<llama_cpp_2::LlamaCppError>>> =
    OnceLock::new();

/// llama.cpp's backend is process-wide and initialised exactly once; its and
/// ggml's logs go to `tracing` (target `llama_cpp_2`), silent unless `-v`.
pub(crate) fn backend() -> Result<&'static LlamaBackend, LlmError> {
    BACKEND
        .get_or_init(|| {
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(std::sync::Arc::new)
        })
        .as_ref()
        .map_err(|e| LlmError::Backend(e.clone()))
}

/// ggml's own report of the CPU features and backends compiled in and seen
/// at run time (`NEON = 1 | DOTPROD = 1 | ...`), as llama.cpp prints it.
pub fn system_info() -> Result<String, LlmError> {
    backend()?;
    // SAFETY: returns a pointer to a static, NUL-terminated buffer.
    let p = unsafe { llama_cpp_sys_2::llama_print_system_info() };
    if p.is_null() {
        return Ok(String::new());
    }
    // SAFETY: checked non-null; the buffer lives for the process.
    Ok(unsafe { std::ffi::CStr::from_ptr(p) }
        .to_string_lossy()
        .trim()
        .to_string())
}

/// GPU devices ggml can offload to (empty on CPU-only builds).
pub fn gpu_devices() -> Result<Vec<String>, LlmError> {
    backend()?;
    Ok(llama_cpp_2::list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| {
            d.backend != "RPC"
                && matches!(
                    d.device_type,
                    llama_cpp_2::LlamaBackendDeviceType::Gpu
                        | llama_cpp_2::LlamaBackendDeviceType::IntegratedGpu
                )
        })
        .map(|d| {
            format!(
                "{} {} ({} MiB free of {})",
                d.backend,
                d.description,
                d.memory_free / (1 << 20),
                d.memory_total / (1 << 20)
            )
        })
        .collect())
}

pub use crate::board::default_threads;
