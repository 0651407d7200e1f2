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

use super::session::Session;
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

pub(crate) fn search(
    sess: &mut Session<'_>,
    prompt_len: usize,
    first_idx: i32,
    params: &GenParams,
) -> Result<(Vec<LlamaToken>, Finish), LlmError> {
    let width = params.beams;
    let n_ctx = sess.n_ctx() as usize;
    let vocab = sess.engine.model.vocab();
    let decode_err = |e: String| LlmError::Decode(e);
    let mut live = vec![Beam {
        tokens: Vec::new(),
        logp: 0.0,
        seq: 0,
        idx: first_idx,
    }];
    let mut finished: Option<(Vec<LlamaToken>, f64)> = None;
    let mut bank = 0i32;
    let mut batch = LlamaBatch::new(width, (2 * width) as i32);
    let mut step = 0usize;
    let mut finish = loop {
        if params.n_predict.is_some_and(|n| step >= n) {
            break Finish::Length;
        }
        if prompt_len + step + 1 >= n_ctx {
            break Finish::ContextFull;
        }
        // Expand every live beam by its `width` best tokens.
        let mut cands: Vec<(usize, LlamaToken, f64)> = Vec::new();
        for (bi, b) in live.iter().enumerate() {
            let logits = sess.ctx.get_logits_ith(b.idx);
            for (tok, lp) in top_k_logprobs(logits, width) {
                cands.push((bi, LlamaToken(tok), b.logp + lp));
            }
        }
        // Stable sort: among equal scores the earlier beam and lower id win.
        cands.sort_by(|a, b| b.2.total_cmp(&a.2));
        cands.truncate(width);
        let mut next: Vec<(usize, LlamaToken, f64)> = Vec::new();
        for (bi, tok, lp) in cands {
            if vocab.is_eog(tok) {
                if finished.as_ref().is_none_or(|f| lp > f.1) {
                    finished = Some((live[bi].tokens.clone(), lp));
                }
            } else {
                next.push((bi, tok, lp));
            }
        }
        let best_live = next.iter().map(|c| c.2).fold(f64::NEG_INFINITY, f64::max);
        if let Some((_, f)) = &finished {
            if *f >= best_live {
                break Finish::EndOfGeneration;
            }
        }
        // Move the survivors into the other bank of sequence ids.
        let other = if bank == 0 { width as i32 } else { 0 };
        batch.clear();
        let mut new_live = Vec::with_capacity(next.len());
        for (j, (bi, tok, lp)) in next.into_iter().enumerate() {
            let dst = other + j as i32;
            let parent = &live[bi];
            sess.ctx
                .kv_cache_seq_rm(dst, None, None)
                .map_err(|e| decode_err(e.to_string()))?;
            sess.ctx
                .kv_cache_seq_cp(parent.seq, dst, None, None)
                .map_err(|e| decode_err(e.to_string()))?;
            batch
                .add(tok, (prompt_len + step) as i32, &[dst], true)
                .map_err(|e| decode_err(e.to_string()))?;
            let mut tokens = parent.tokens.clone();
            tokens.push(tok);
            new_live.push(Beam {
                tokens,
                logp: lp,
                seq: dst,
                idx: j as i32,
            });
        }
        for b in &live {
            sess.ctx
                .kv_cache_seq_rm(b.seq, None, None)
                .map_err(|e| decode_err(e.to_string()))?;
        }
        sess.ctx
            .decode(&mut batch)
            .map_err(|e| decode_err(e.to_string()))?;
        live = new_live;
        bank = other;
        step += 1;
    };
    let tokens = match (finish, finished) {
        (Finish::EndOfGeneration, Some((t, _))) => t,
        // Out of room: the best hypothesis so far, finished or not.
        (_, fin) => {
            let best_live = live.iter().max_by(|a, b| a.logp.total_cmp(&b.logp));
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
    // Leave the cache as "prompt only" in sequence 0; the answer is
    // re-evaluated as part of the next turn's prompt. Every live beam's
    // sequence still tags the prompt cells, so one of them hands them back.
    sess.ctx
        .kv_cache_seq_rm(-1, Some(prompt_len as u32), None)
        .map_err(|e| decode_err(e.to_string()))?;
    if let Some(b) = live.first().filter(|b| b.seq != 0) {
        sess.ctx
            .kv_cache_seq_cp(b.seq, 0, None, None)
            .map_err(|e| decode_err(e.to_string()))?;
    }
    sess.ctx.llama_kv_cache_seq_keep(0);
    sess.cached.truncate(prompt_len);
    Ok((tokens, finish))
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
