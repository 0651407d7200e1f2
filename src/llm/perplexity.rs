//! Perplexity over a text file, computed the way llama.cpp's
//! `llama-perplexity` does so the figures compare one to one: the text is
//! tokenized once, cut into chunks of `n_ctx` tokens, each chunk evaluated from
//! an empty cache (first token replaced by BOS when the model adds one), and
//! only the second half of each chunk is scored.

use std::time::Instant;

use llama_cpp_2::llama_batch::LlamaBatch;

use super::context::{context_params, SessionOptions};
use super::{Engine, LlmError};

#[derive(Debug, Clone, serde::Serialize)]
pub struct PerplexityResult {
    pub ppl: f64,
    /// llama-perplexity's `+/-` figure.
    pub ppl_err: f64,
    /// The running estimate after each chunk (`[1]x,[2]y,...`).
    pub chunks: Vec<f64>,
    pub n_tokens: usize,
    pub n_ctx: u32,
    pub seconds: f64,
}

/// `-log p(token)` under `logits`.
fn nll_of(logits: &[f32], token: usize) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    -((logits[token] - max) as f64 - sum.ln())
}

/// `base` gives the threads and the KV cache types (`-ctk`/`-ctv`: what
/// a quantized cache costs shows here); the context is `ctx_tokens`;
/// `adapter` a loaded LoRA adapter and its scale (llama-perplexity's
/// `--lora-scaled`), applied to every chunk.
///
/// Errors: `Param` for a context under 16 tokens or a text shorter than
/// two contexts; llama.cpp's decode and adapter errors.
pub fn perplexity(
    engine: &Engine,
    text: &str,
    (ctx_tokens, adapter): (u32, Option<(super::AdapterId, f32)>),
    base: &SessionOptions,
    on_chunk: &mut dyn FnMut(usize, usize, f64),
) -> Result<PerplexityResult, LlmError> {
    let t0 = Instant::now();
    // Each chunk scores its second half: fewer than 16 tokens scores nothing
    // useful (and 0 would divide by zero).
    if ctx_tokens < 16 {
        return Err(LlmError::Param(format!(
            "perplexity needs a context of at least 16 tokens (-c), not {ctx_tokens}"
        )));
    }
    let n_ctx = ctx_tokens as usize;
    let tokens = engine.model.vocab().tokenize(text.as_bytes(), true, false);
    if tokens.len() < 2 * n_ctx {
        return Err(LlmError::Param(format!(
            "perplexity needs at least {} tokens for a context of {n_ctx}; the file has {}",
            2 * n_ctx,
            tokens.len()
        )));
    }
    let opts = SessionOptions {
        ctx_tokens,
        batch_tokens: ctx_tokens,
        max_beams: 0,
        ..base.clone()
    };
    let params = context_params(&opts).with_n_ubatch(ctx_tokens.min(512));
    let mut ctx = engine.context(params, ctx_tokens)?;
    engine.apply_adapter(&mut ctx, adapter)?;
    let n_chunk = tokens.len() / n_ctx;
    let mut sum = Nll::default();
    let mut chunks = Vec::with_capacity(n_chunk);
    let mut batch = LlamaBatch::new(n_ctx, 1);
    let _span = tracing::info_span!("perplexity", chunks = n_chunk, n_ctx).entered();
    for (i, chunk) in tokens.chunks_exact(n_ctx).enumerate() {
        score_chunk(engine, &mut ctx, &mut batch, chunk, &mut sum)?;
        let est = sum.ppl();
        chunks.push(est);
        on_chunk(i + 1, n_chunk, est);
    }
    Ok(PerplexityResult {
        ppl: sum.ppl(),
        ppl_err: sum.ppl_err(),
        chunks,
        n_tokens: tokens.len(),
        n_ctx: ctx_tokens,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Running sums of the negative log-likelihoods scored so far.
#[derive(Default)]
struct Nll {
    sum: f64,
    sum2: f64,
    count: usize,
}

impl Nll {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.sum2 += v * v;
        self.count += 1;
    }

    fn ppl(&self) -> f64 {
        (self.sum / self.count as f64).exp()
    }

    /// llama-perplexity's `+/-`: the standard error of the mean NLL,
    /// carried through `exp`.
    fn ppl_err(&self) -> f64 {
        let n = self.count as f64;
        let mean = self.sum / n;
        let var = self.sum2 / n - mean * mean;
        if var > 0.0 {
            (var / (n - 1.0)).sqrt() * self.ppl()
        } else {
            0.0
        }
    }
}

/// Evaluate one chunk from an empty cache (its first token replaced by BOS
/// when the model adds one) and score the second half.
fn score_chunk(
    engine: &Engine,
    ctx: &mut llama_cpp_2::context::LlamaContext<'_>,
    batch: &mut LlamaBatch,
    chunk: &[llama_cpp_2::token::LlamaToken],
    sum: &mut Nll,
) -> Result<(), LlmError> {
    let vocab = engine.model.vocab();
    let n_ctx = chunk.len();
    let first = n_ctx / 2;
    ctx.clear_kv_cache();
    batch.clear();
    for (k, &tok) in chunk.iter().enumerate() {
        let tok = if k == 0 && vocab.should_add_bos() {
            vocab.bos()
        } else {
            tok
        };
        batch.add(tok, k as i32, &[0], k >= first)?;
    }
    ctx.decode(batch)?;
    for k in first..n_ctx - 1 {
        sum.add(nll_of(
            ctx.get_logits_ith(k as i32),
            chunk[k + 1].0 as usize,
        ));
    }
    Ok(())
}
