//! How a llama.cpp context is set up: the options every context in ferrite
//! (a session's, a draft model's, the bench's, perplexity's) is made from.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};

use super::default_threads;
use crate::board::KvType;

/// llama.cpp's type for a KV cache type.
fn cache_type(t: KvType) -> KvCacheType {
    match t {
        KvType::F16 => KvCacheType::F16,
        KvType::Q8_0 => KvCacheType::Q8_0,
        KvType::Q4_0 => KvCacheType::Q4_0,
    }
}

/// How a session's context is set up.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Context window in tokens (`-c`).
    pub ctx_tokens: u32,
    /// CPU threads for generation and prompt processing (`-t`).
    pub threads: i32,
    /// Tokens evaluated per llama.cpp decode call during prompt processing.
    pub batch_tokens: u32,
    /// The widest beam search this session will run (0: none).
    pub max_beams: usize,
    /// The KV cache's element types, K and V (`-ctk`, `-ctv`).
    pub kv: (KvType, KvType),
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            ctx_tokens: 2048,
            threads: default_threads(),
            batch_tokens: 512,
            max_beams: 0,
            kv: (KvType::F16, KvType::F16),
        }
    }
}

/// Context parameters for `opts`. Beam search keeps two generations of beams
/// alive while copying, so it needs 2 × the widest beam sequences. A
/// quantized V cache turns flash attention on (llama.cpp refuses one
/// without it); otherwise llama.cpp's default (auto) stands.
pub(crate) fn context_params(opts: &SessionOptions) -> LlamaContextParams {
    let n_seq = (2 * opts.max_beams).max(1) as u32;
    let mut p = LlamaContextParams::default();
    if opts.kv.1 != KvType::F16 {
        p = p.with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_ENABLED);
    }
    p.with_type_k(cache_type(opts.kv.0))
        .with_type_v(cache_type(opts.kv.1))
        .with_n_ctx(NonZeroU32::new(opts.ctx_tokens))
        .with_n_batch(opts.batch_tokens)
        .with_n_ubatch(opts.batch_tokens)
        .with_n_threads(opts.threads)
        .with_n_threads_batch(opts.threads)
        .with_n_seq_max(n_seq)
        .with_kv_unified(n_seq > 1)
}
