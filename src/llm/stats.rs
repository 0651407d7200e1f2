//! Figures of one generation, measured by the engine itself so every front end
//! (CLI, serial console, benchmarks) reports the same numbers.

use serde::Serialize;

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Finish {
    /// The model produced an end-of-generation token.
    #[default]
    EndOfGeneration,
    /// A user stop string appeared.
    StopString,
    /// The `-n` limit was reached.
    Length,
    /// The context window is full.
    ContextFull,
    /// The caller cancelled (Ctrl-C on the console).
    Cancelled,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GenStats {
    /// Tokens in the rendered prompt (the whole conversation).
    pub prompt_tokens: usize,
    /// Of those, how many were already in the KV cache from earlier turns.
    pub cached_tokens: usize,
    pub prompt_ms: f64,
    /// From the request to the first generated token.
    pub ttft_ms: f64,
    pub gen_tokens: usize,
    pub gen_ms: f64,
    /// Context cells in use after the answer, and the context size.
    pub ctx_used: usize,
    pub ctx_tokens: u32,
    /// How long the model took to load (the engine's figure).
    pub load_ms: f64,
    /// Speculative decoding: tokens the drafter proposed, and how many of
    /// them the target kept (0 and 0 without a drafter, and then left out
    /// of the JSON protocol, whose wire format is otherwise unchanged).
    #[serde(skip_serializing_if = "is_zero")]
    pub draft_tokens: usize,
    #[serde(skip_serializing_if = "is_zero")]
    pub draft_accepted: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl GenStats {
    /// Prompt processing speed over the tokens actually evaluated.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        let n = self.prompt_tokens.saturating_sub(self.cached_tokens);
        if self.prompt_ms > 0.0 {
            n as f64 * 1000.0 / self.prompt_ms
        } else {
            0.0
        }
    }

    /// Generation speed, counting the tokens decoded after the first.
    pub fn tokens_per_s(&self) -> f64 {
        if self.gen_ms > 0.0 {
            self.gen_tokens as f64 * 1000.0 / self.gen_ms
        } else {
            0.0
        }
    }
}

impl std::fmt::Display for GenStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "load {:.0} ms | prompt {} tok ({} cached) {:.1} tok/s | ttft {:.0} ms | gen {} tok {:.1} tok/s | ctx {}/{}",
            self.load_ms,
            self.prompt_tokens,
            self.cached_tokens,
            self.prompt_tokens_per_s(),
            self.ttft_ms,
            self.gen_tokens,
            self.tokens_per_s(),
            self.ctx_used,
            self.ctx_tokens
        )?;
        if self.draft_tokens > 0 {
            write!(
                f,
                " | draft {}/{} accepted ({:.0}%)",
                self.draft_accepted,
                self.draft_tokens,
                100.0 * self.draft_accepted as f64 / self.draft_tokens as f64
            )?;
        }
        Ok(())
    }
}

/// One finished answer.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    pub text: String,
    pub finish: Finish,
    pub stats: GenStats,
}
