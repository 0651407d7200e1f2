//! Generation parameters and the llama.cpp sampler chain built from them.
//!
//! The chain follows llama.cpp's own order (penalties, top-k, top-p, min-p,
//! temperature, then a seeded draw), so a seed and settings give the same
//! tokens here as in `llama-cli`. Temperature ≤ 0 means greedy.
//!
//! Defaults differ from llama.cpp's in one place: temperature 0.2 instead of
//! 0.8, because a 100M-class model on a board answers factual questions far
//! more reliably near-greedy, and an appliance should be predictable.

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;

use super::grammar::Grammar;
use super::LlmError;

/// Everything that shapes one answer.
#[derive(Debug, Clone, Serialize)]
pub struct GenParams {
    /// Maximum tokens to generate; `None` runs until end-of-generation or the
    /// context is full.
    pub n_predict: Option<usize>,
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    /// How many recent tokens the penalties look at; -1 is the whole
    /// context (llama.cpp's meaning), 0 turns the penalties off.
    pub repeat_last_n: i32,
    pub seed: u32,
    /// Beam width: 0 samples with the chain below; N ≥ 1 runs beam search
    /// (N = 1 is greedy by construction).
    pub beams: usize,
    pub stop: Vec<String>,
    /// Structured output: every token must fit this grammar (GBNF, or a
    /// JSON Schema made GBNF). `None`: free text.
    #[serde(skip)]
    pub grammar: Option<Grammar>,
    /// Report each generated token's log probability with this many of the
    /// most probable rivals (0 to `MAX_TOP_LOGPROBS`); `None`: off.
    #[serde(skip)]
    pub logprobs: Option<usize>,
}

impl Default for GenParams {
    fn default() -> Self {
        GenParams {
            n_predict: Some(256),
            temperature: 0.2,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repeat_last_n: 64,
            seed: 0xFFFF_FFFF,
            beams: 0,
            stop: Vec::new(),
            grammar: None,
            logprobs: None,
        }
    }
}

impl GenParams {
    /// Greedy decoding: always the most likely token.
    pub fn greedy() -> Self {
        GenParams {
            temperature: 0.0,
            ..Self::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }

    /// Check every value against what it means, before llama.cpp sees it:
    /// `n_ctx` is the context the answer runs in, `n_vocab` the model's
    /// vocabulary (llama.cpp would allocate a penalty window of any size it
    /// is given, gigabytes for a typo, and abort when that fails).
    pub fn validate_for(&self, n_ctx: u32, n_vocab: i32) -> Result<(), LlmError> {
        self.validate()?;
        if self.repeat_last_n < -1 || self.repeat_last_n as i64 > n_ctx as i64 {
            return Err(LlmError::Param(format!(
                "repeat-last-n must be from -1 (the whole context) to the context size {n_ctx}, not {}",
                self.repeat_last_n
            )));
        }
        if self.top_k > n_vocab {
            return Err(LlmError::Param(format!(
                "top-k {} is more than the vocabulary's {n_vocab} tokens",
                self.top_k
            )));
        }
        Ok(())
    }

    /// The checks that need no model (see `validate_for`).
    pub fn validate(&self) -> Result<(), LlmError> {
        let bad = |m: &str| Err(LlmError::Param(m.to_string()));
        if !self.temperature.is_finite() {
            return bad("temperature must be a number");
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top-p must be between 0 and 1");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min-p must be between 0 and 1");
        }
        if self.repeat_penalty <= 0.0 || !self.repeat_penalty.is_finite() {
            return bad("repeat-penalty must be > 0 (1.0 = off)");
        }
        if !self.frequency_penalty.is_finite() || !self.presence_penalty.is_finite() {
            return bad("penalties must be numbers");
        }
        if self.top_k < 0 {
            return bad("top-k must be ≥ 0 (0 = off)");
        }
        if self.beams > 16 {
            return bad("at most 16 beams");
        }
        if self.beams > 0 && self.grammar.is_some() {
            // Beam search ranks raw logits; it would ignore the grammar.
            return bad("beam search cannot follow a grammar or JSON schema: drop --beams");
        }
        if self.beams > 0 && self.logprobs.is_some() {
            return bad("beam search does not report log probabilities");
        }
        if self
            .logprobs
            .is_some_and(|k| k > super::logprobs::MAX_TOP_LOGPROBS)
        {
            return bad("at most 20 top log probabilities per token");
        }
        Ok(())
    }

    /// The random seed actually used: `0xFFFFFFFF` (the default) draws one.
    pub fn effective_seed(&self) -> u32 {
        if self.seed == 0xFFFF_FFFF {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            (t as u32) ^ std::process::id()
        } else {
            self.seed
        }
    }

    /// The sampler chain, with `prompt` already seen by the penalties (as
    /// in llama-cli); call `validate_for` with the same `n_ctx` and the
    /// model's vocabulary size first. A grammar goes in front, as in
    /// llama.cpp's common sampler, so every later stage sees only the tokens
    /// it allows; it never sees the prompt (whose tokens, an end-of-turn
    /// among them, it would refuse: llama.cpp aborts on that).
    ///
    /// # Errors
    /// `LlmError::Grammar` when llama.cpp's parser refuses the grammar.
    pub(crate) fn sampler(
        &self,
        model: &LlamaModel,
        n_ctx: u32,
        prompt: &[LlamaToken],
    ) -> Result<LlamaSampler, LlmError> {
        let grammar = self
            .grammar
            .as_ref()
            .map(|g| g.sampler(model))
            .transpose()?;
        let mut chain = self.sampling_chain(model.n_vocab(), n_ctx);
        chain.accept_many(prompt.iter());
        Ok(match grammar {
            Some(g) => LlamaSampler::chain(vec![g, chain], true),
            None => chain,
        })
    }

    /// Penalties, truncation, temperature and the draw (or greedy).
    fn sampling_chain(&self, n_vocab: i32, n_ctx: u32) -> LlamaSampler {
        let mut chain = Vec::new();
        if self.repeat_penalty != 1.0
            || self.frequency_penalty != 0.0
            || self.presence_penalty != 0.0
        {
            let last_n = match self.repeat_last_n {
                -1 => n_ctx as i32,
                n => n,
            };
            chain.push(LlamaSampler::penalties(
                n_vocab,
                last_n,
                self.repeat_penalty,
                self.frequency_penalty,
                self.presence_penalty,
            ));
        }
        if self.is_greedy() {
            chain.push(LlamaSampler::greedy());
        } else {
            if self.top_k > 0 {
                chain.push(LlamaSampler::top_k(self.top_k));
            }
            if self.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(self.top_p, 1));
            }
            if self.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(self.min_p, 1));
            }
            chain.push(LlamaSampler::temp(self.temperature));
            chain.push(LlamaSampler::dist(self.effective_seed()));
        }
        LlamaSampler::chain(chain, true)
    }
}
