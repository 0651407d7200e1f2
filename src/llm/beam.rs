//! Beam search on llama.cpp's logits (llama.cpp itself removed it).
//!
//! Each live beam is a KV-cache sequence. Beams live in one of two banks of
//! sequence ids (0..N and N..2N) and every step copies the chosen parents into
//! the other bank, so a parent is never overwritten while another child still
//! needs it; with a unified KV cache such a copy only tags cells, it moves no
//! data. Hypotheses are ranked by summed log-probability, so search stops as
//! soon as the best finished answer beats every live beam (log-probabilities
//! only fall): this favours short, confident answers, which is what it is for.
//! With N = 1 the single candidate per step is the argmax, i.e. greedy.

use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;

use super::stats::Finish;
use super::{GenParams, LlmError};

struct Beam {
    tokens: Vec<LlamaToken>,
    logp: f64,
    seq: i32,
    /// Batch index of this beam's latest logits.
    idx: i32,
}

/// `(token, log-probability)` of the `k` most likely next tokens. Ties go to
/// the lower token id, as llama.cpp's greedy sampler does.
fn top_k_logprobs(logits: &[f32], k: usize) -> Vec<(i32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max as f64
        + logits
            .iter()
            .map(|&l| ((l - max) as f64).exp())
            .sum::<f64>()
            .ln();
    let mut best: Vec<(i32, f32)> = Vec::with_capacity(k + 1);
    for (i, &l) in logits.iter().enumerate() {
        if best.len() < k || l > best[best.len() - 1].1 {
            let pos = best.partition_point(|&(_, b)| b >= l);
            best.insert(pos, (i as i32, l));
            best.truncate(k);
        }
    }
    best.into_iter().map(|(i, l)| (i, l as f64 - lse)).collect()
}

/// The hypotheses of one search: the live beams, the best finished one,
/// and which bank of sequence ids the live beams occupy.
struct Search<'c, 'm> {
    ctx: &'c mut LlamaContext<'m>,
    width: usize,
    prompt_len: usize,
    live: Vec<Beam>,
    finished: Option<(Vec<LlamaToken>, f64)>,
    bank: i32,
    step: usize,
}

/// Beam search from the prompt's logits at batch index `first_idx`: the
/// prompt's `prompt_len` tokens are in the KV cache as sequence 0, which
/// is left holding the prompt only. Returns the best answer's tokens and why
/// the search ended.
pub(crate) fn search(
    ctx: &mut LlamaContext<'_>,
    model: &LlamaModel,
    prompt_len: usize,
    first_idx: i32,
    params: &GenParams,
) -> Result<(Vec<LlamaToken>, Finish), LlmError> {
    let n_ctx = ctx.n_ctx() as usize;
    let vocab = model.vocab();
    let mut s = Search {
        ctx,
        width: params.beams,
        prompt_len,
        live: vec![Beam {
            tokens: Vec::new(),
            logp: 0.0,
            seq: 0,
            idx: first_idx,
        }],
        finished: None,
        bank: 0,
        step: 0,
    };
    let mut batch = LlamaBatch::new(s.width, (2 * s.width) as i32);
    let finish = loop {
        if params.n_predict.is_some_and(|n| s.step >= n) {
            break Finish::Length;
        }
        if prompt_len + s.step + 1 >= n_ctx {
            break Finish::ContextFull;
        }
        let next = s.expand(|t| vocab.is_eog(t));
        let best_live = next.iter().map(|c| c.2).fold(f64::NEG_INFINITY, f64::max);
        if s.finished.as_ref().is_some_and(|(_, f)| *f >= best_live) {
            break Finish::EndOfGeneration;
        }
        s.advance(next, &mut batch)?;
    };
    s.finish(finish)
}

impl Search<'_, '_> {
    /// The `width` best continuations over all live beams, as (beam, token,
    /// score); finished ones are kept aside in `finished`.
    fn expand(&mut self, is_eog: impl Fn(LlamaToken) -> bool) -> Vec<(usize, LlamaToken, f64)> {
        let mut cands: Vec<(usize, LlamaToken, f64)> = Vec::new();
        for (bi, b) in self.live.iter().enumerate() {
            let logits = self.ctx.get_logits_ith(b.idx);
            for (tok, lp) in top_k_logprobs(logits, self.width) {
                cands.push((bi, LlamaToken(tok), b.logp + lp));
            }
        }
        // Stable sort: among equal scores the earlier beam and lower id win.
        cands.sort_by(|a, b| b.2.total_cmp(&a.2));
        cands.truncate(self.width);
        let mut next = Vec::new();
        for (bi, tok, lp) in cands {
            if is_eog(tok) {
                if self.finished.as_ref().is_none_or(|f| lp > f.1) {
                    self.finished = Some((self.live[bi].tokens.clone(), lp));
                }
            } else {
                next.push((bi, tok, lp));
            }
        }
        next
    }

    /// Move the survivors into the other bank of sequence ids and decode
    /// their new tokens.
    fn advance(
        &mut self,
        next: Vec<(usize, LlamaToken, f64)>,
        batch: &mut LlamaBatch,
    ) -> Result<(), LlmError> {
        let other = if self.bank == 0 { self.width as i32 } else { 0 };
        batch.clear();
        let mut new_live = Vec::with_capacity(next.len());
        for (j, (bi, tok, lp)) in next.into_iter().enumerate() {
            let dst = other + j as i32;
            let parent = &self.live[bi];
            self.ctx.kv_cache_seq_rm(dst, None, None)?;
            self.ctx.kv_cache_seq_cp(parent.seq, dst, None, None)?;
            batch.add(tok, (self.prompt_len + self.step) as i32, &[dst], true)?;
            let mut tokens = parent.tokens.clone();
            tokens.push(tok);
            new_live.push(Beam {
                tokens,
                logp: lp,
                seq: dst,
                idx: j as i32,
            });
        }
        for b in &self.live {
            self.ctx.kv_cache_seq_rm(b.seq, None, None)?;
        }
        self.ctx.decode(batch)?;
        self.live = new_live;
        self.bank = other;
        self.step += 1;
        Ok(())
    }

    /// The answer, and the cache back to "prompt only" in sequence 0 (the
    /// answer is re-evaluated as part of the next turn's prompt).
    fn finish(self, mut finish: Finish) -> Result<(Vec<LlamaToken>, Finish), LlmError> {
        let tokens = match (finish, self.finished) {
            (Finish::EndOfGeneration, Some((t, _))) => t,
            // Out of room: the best hypothesis so far, finished or not.
            (_, fin) => {
                let best_live = self.live.iter().max_by(|a, b| a.logp.total_cmp(&b.logp));
                match (fin, best_live) {
                    (Some((t, f)), Some(b)) if f >= b.logp => {
                        finish = Finish::EndOfGeneration;
                        t
                    }
                    (_, Some(b)) => b.tokens.clone(),
                    (Some((t, _)), None) => t,
                    (None, None) => Vec::new(),
                }
            }
        };
        // Every live beam's sequence still tags the prompt cells, so one of
        // them hands them back.
        self.ctx
            .kv_cache_seq_rm(-1, Some(self.prompt_len as u32), None)?;
        if let Some(b) = self.live.first().filter(|b| b.seq != 0) {
            self.ctx.kv_cache_seq_cp(b.seq, 0, None, None)?;
        }
        self.ctx.llama_kv_cache_seq_keep(0);
        Ok((tokens, finish))
    }
}

#[cfg(test)]
mod tests {
    use super::top_k_logprobs;

    #[test]
    fn top_k_is_sorted_and_normalised() {
        let l = [0.0f32, 2.0, 1.0, 2.0];
        let t = top_k_logprobs(&l, 3);
        assert_eq!(t.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 2]);
        let lse = l.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        assert!((t[0].1 - (2.0 - lse)).abs() < 1e-9);
        assert_eq!(t[0].1, t[1].1);
    }
}
