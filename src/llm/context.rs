//! How a llama.cpp context is set up: the options every context in ferrite
//! (a session's, a draft model's, the bench's, perplexity's) is made from.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::{KvCacheType, LlamaContextParams};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::{default_threads, LlmError};
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

/// Make `ctx`'s KV cache hold exactly `tokens` at positions 0.., where
/// `cached` lists what it holds now: the common prefix is kept, the rest
/// removed, and the new tokens decoded `n_batch` at a time (logits only
/// for the last). The last token is evaluated again when everything was
/// cached, since its logits are needed. A session's prompt and a draft
/// model's history both come in here. `tokens` must not be empty.
///
/// Returns the tokens reused and the batch index of the last token's
/// logits.
///
/// # Errors
/// `LlmError::Decode`, `LlmError::Batch` from llama.cpp.
pub(crate) fn fill(
    ctx: &mut LlamaContext<'_>,
    cached: &mut Vec<LlamaToken>,
    tokens: &[LlamaToken],
    n_batch: usize,
) -> Result<(usize, i32), LlmError> {
    let mut keep = cached
        .iter()
        .zip(tokens)
        .take_while(|(a, b)| a == b)
        .count();
    if keep == tokens.len() {
        // The logits of the last token are needed again.
        keep -= 1;
    }
    if ctx.kv_cache_seq_rm(-1, Some(keep as u32), None).is_err() {
        ctx.clear_kv_cache();
        keep = 0;
    }
    cached.truncate(keep);
    let new = &tokens[keep..];
    let mut batch = LlamaBatch::new(n_batch, 1);
    for (ci, chunk) in new.chunks(n_batch).enumerate() {
        batch.clear();
        for (j, &tok) in chunk.iter().enumerate() {
            let i = ci * n_batch + j;
            batch.add(tok, (keep + i) as i32, &[0], i + 1 == new.len())?;
        }
        ctx.decode(&mut batch)?;
    }
    cached.extend_from_slice(new);
    Ok((keep, batch.n_tokens() - 1))
}
