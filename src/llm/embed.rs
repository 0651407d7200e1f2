//! Text embeddings: one vector per input, from the loaded model's last
//! hidden layer, mean-pooled over the input's tokens and scaled to unit
//! length, as llama.cpp's `llama-embedding --pooling mean` and
//! `llama-server --embeddings` make them (their default `--embd-normalize
//! 2`, the Euclidean norm). A chat model is not trained for embeddings, but
//! llama.cpp pools any model's hidden states (llama.cpp PR #7477), so what
//! is served is what llama.cpp gives; a dedicated embedding model gives
//! better ones.
//!
//! Each call runs on a context of its own (embeddings on, no logits), sized
//! to the longest input, so a conversation's KV cache is left alone.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::llama_batch::LlamaBatch;

use super::{Engine, LlmError};

/// The most inputs one call takes (OpenAI's limit is 2048; a board's is
/// its patience).
pub const MAX_EMBED_INPUTS: usize = 64;

/// The most tokens one input may have. llama.cpp allocates logits for
/// every token of a pooled batch (`n_vocab` × tokens × 4 bytes: 100 MB for
/// 512 tokens of a 49k vocabulary), so this bounds what one request costs.
pub const MAX_EMBED_TOKENS: u32 = 512;

/// What `Engine::embed` returns.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One vector of `n_embd` values per input, in input order, each of
    /// Euclidean length 1 (or all zero for an input whose pooled state is
    /// zero).
    pub vectors: Vec<Vec<f32>>,
    /// Tokens evaluated, over all inputs (OpenAI's `usage.prompt_tokens`).
    pub tokens: usize,
}

impl Engine {
    /// The width of the model's embeddings (`n_embd`).
    pub fn n_embd(&self) -> usize {
        self.model.n_embd().max(0) as usize
    }

    /// Embed each of `inputs` (1 to `MAX_EMBED_INPUTS` non-empty texts, each
    /// at most `max_tokens`, `MAX_EMBED_TOKENS` and the model's trained
    /// context tokens) with
    /// `threads` CPU threads.
    ///
    /// # Errors
    /// `LlmError::Param` for an empty list, an empty input or too many;
    /// `LlmError::PromptTooLong` for an input over the limit (checked
    /// before llama.cpp sees it); context and decode errors from llama.cpp.
    pub fn embed(
        &self,
        inputs: &[String],
        max_tokens: u32,
        threads: i32,
    ) -> Result<Embeddings, LlmError> {
        if inputs.is_empty() || inputs.len() > MAX_EMBED_INPUTS {
            return Err(LlmError::Param(format!(
                "embeddings take 1 to {MAX_EMBED_INPUTS} inputs, not {}",
                inputs.len()
            )));
        }
        let train = self.n_ctx_train();
        let limit = if train > 0 {
            max_tokens.min(train)
        } else {
            max_tokens
        }
        .min(MAX_EMBED_TOKENS);
        let mut tokenized = Vec::with_capacity(inputs.len());
        for (i, text) in inputs.iter().enumerate() {
            if text.is_empty() {
                return Err(LlmError::Param(format!("input {i} is empty")));
            }
            // User text: special-token names stay text.
            let toks = self.model.vocab().tokenize(text.as_bytes(), true, false);
            if toks.len() > limit as usize {
                return Err(LlmError::PromptTooLong {
                    needed: toks.len(),
                    ctx_tokens: limit,
                });
            }
            tokenized.push(toks);
        }
        let longest = tokenized.iter().map(Vec::len).max().unwrap_or(1).max(1) as u32;
        // Pooling needs a sequence's tokens in one micro-batch.
        let params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(longest.max(16)))
            .with_n_batch(longest)
            .with_n_ubatch(longest)
            .with_n_threads(threads.max(1))
            .with_n_threads_batch(threads.max(1))
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::Mean);
        let mut ctx = self.context(params, longest)?;
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut batch = LlamaBatch::new(longest as usize, 1);
        for toks in &tokenized {
            ctx.clear_kv_cache();
            batch.clear();
            batch.add_sequence(toks, 0, false)?;
            ctx.decode(&mut batch)?;
            let v = ctx
                .embeddings_seq_ith(0)
                .map_err(|e| LlmError::Param(format!("llama.cpp gave no pooled embedding: {e}")))?;
            vectors.push(unit(v));
        }
        Ok(Embeddings {
            vectors,
            tokens: tokenized.iter().map(Vec::len).sum(),
        })
    }
}

/// `v` scaled to Euclidean length 1 (llama.cpp's `common_embd_normalize`
/// with norm 2); a zero vector stays zero.
pub fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|&x| (f64::from(x) / norm) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_scales_to_length_one_and_keeps_zero() {
        let u = unit(&[3.0, 4.0]);
        assert!(
            (u[0] - 0.6).abs() < 1e-7 && (u[1] - 0.8).abs() < 1e-7,
            "{u:?}"
        );
        assert_eq!(unit(&[0.0, 0.0]), vec![0.0, 0.0]);
    }
}
