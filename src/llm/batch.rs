//! Several answers at once on one context: continuous batching over
//! llama.cpp sequences, as llama-server's slots do it.
//!
//! Each running answer has a slot (a sequence id in one context whose KV
//! cache is unified: the slots share its cells). Every `step` builds one
//! batch: first the last sampled token of each answer being generated, then
//! as many prompt tokens of answers still being read as fit in the batch,
//! and decodes it in one `llama_decode`; then every answer whose logits came
//! out samples its next token. On a board, generation is bound by reading
//! the weights, so four answers in one batch cost little more than one.
//!
//! A finished slot keeps what it evaluated in the KV cache: a new request
//! goes to the free slot whose cached tokens share the longest prefix with
//! its prompt (a client resending its conversation pays only for the new
//! turn). Room in the cache is reserved when an answer starts (its prompt
//! plus its `max_tokens`; idle slots' caches are evicted first); while
//! other answers run, one that does not fit waits for them rather than
//! starting short. So an answer never finds the cache full mid-way: at
//! most (alone, or without `max_tokens`) it ends with
//! `Finish::ContextFull` at its reservation.
//!
//! An adapter applies to the whole context, so it is changed only when no
//! answer is running (`set_adapter`), and the caches are emptied then.
//!
//! With a prompt cache (`set_prompt_cache`), a request's standing prefix
//! (the template's opening and its system prompt, `Request::prefix`) is
//! loaded from disk into its slot when the slot does not hold it, and when
//! no state is on disk yet, its prompt is cut at the prefix for one step so
//! the prefix's state alone can be saved: the next server start answers a
//! client with that system prompt without evaluating it again.
//!
//! Speculative decoding (`set_draft`): each slot has its own drafter (prompt
//! lookup, or a draft model's context of the slot's size). A generated
//! token goes into the batch with the drafter's guesses after it, all with
//! logits; the answer's sampler then picks position by position, as
//! `Session` does, keeping guesses while they are its picks. The cells of
//! refused guesses are removed from the slot's sequence. So every token is
//! still the sampler's pick, and a guess costs a batch slot, not a decode.

use std::ops::ControlFlow;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use super::adapters::{ActiveAdapter, AdapterId};
use super::logprobs::TokenLogprob;
use super::prompt_cache::{self, PromptCache};
use super::speculative::{DraftOptions, Drafter};
use super::stats::{Finish, GenStats, Reply};
use super::text::TextOut;
use super::{Engine, GenParams, LlmError, SessionOptions};

/// The least room (tokens to generate) an answer without `max_tokens`
/// starts with while others run.
const UNLIMITED_MIN: usize = 256;

/// What an answer hands its owner, in order: for each token its log
/// probability (when asked for) and its text, then the end.
pub enum Out<'t> {
    Logprob(TokenLogprob),
    /// Text that can be shown now (never empty).
    Text(&'t str),
    /// The answer is over (the last call).
    Done(Result<Reply, LlmError>),
}

/// Makes one slot's drafter (`Batcher::set_draft`).
pub type MakeDrafter<'a, 'm> = &'a mut dyn FnMut() -> Result<Drafter<'m>, LlmError>;

/// Where an answer's `Out`s go; `Break` on a token cancels the answer.
pub type BatchSink<'s> = Box<dyn FnMut(Out<'_>) -> ControlFlow<()> + 's>;

/// One answer to run: the prompt's tokens (template applied), its sampling
/// values, where it goes.
pub struct Request<'s> {
    pub tokens: Vec<LlamaToken>,
    /// How many of `tokens` every request with this system prompt starts
    /// with (`llm::standing_prefix`; 0 for none): what the prompt cache
    /// keeps.
    pub prefix: usize,
    pub params: GenParams,
    pub sink: BatchSink<'s>,
}

/// Why `Batcher::start` did not start a request now.
pub enum NotStarted<'s> {
    /// No free slot or no room in the cache yet: try again after a `step`.
    Wait(Box<Request<'s>>),
    /// It can never run here (its sink has been told, with `Out::Done`).
    Refused,
}

struct Running<'s> {
    params: GenParams,
    sink: BatchSink<'s>,
    sampler: LlamaSampler,
    /// Prompt tokens still to evaluate.
    pending: Vec<LlamaToken>,
    /// The sampled token not yet in the cache.
    last: Option<LlamaToken>,
    /// This answer's batch index whose logits are to be sampled.
    logits_at: Option<i32>,
    /// Draft tokens in the batch after `logits_at`'s token, to be checked.
    guesses: Vec<LlamaToken>,
    /// Draft tokens proposed and kept over this answer.
    drafted: usize,
    accepted: usize,
    /// Save the slot's state once its cache holds this many tokens (the
    /// standing prefix, not on disk yet) to these files.
    save_at: Option<(usize, (std::path::PathBuf, std::path::PathBuf))>,
    text: TextOut,
    prompt_tokens: usize,
    reused: usize,
    n_gen: usize,
    /// Cache cells this answer may fill, prompt included.
    reserved: usize,
    t0: Instant,
    prompt_ms: f64,
    ttft_ms: f64,
}

struct Slot<'m, 's> {
    seq: i32,
    /// Tokens in the KV cache for this sequence, at positions 0..len.
    cached: Vec<LlamaToken>,
    run: Option<Running<'s>>,
    /// This slot's drafter (`set_draft`).
    drafter: Option<Drafter<'m>>,
}

/// A context with `parallel` slots.
pub struct Batcher<'m, 's> {
    engine: &'m Engine,
    ctx: LlamaContext<'m>,
    slots: Vec<Slot<'m, 's>>,
    n_batch: usize,
    draft: DraftOptions,
    /// The adapter applied to the context (`set_adapter`).
    active: Option<ActiveAdapter>,
    kv: (crate::board::KvType, crate::board::KvType),
    prompt_cache: Option<PromptCache>,
    /// Each slot has its own `n_ctx / slots` cells (llama.cpp's
    /// `--kv-unified` off), instead of all sharing the whole cache.
    split: bool,
}

impl<'m, 's> Batcher<'m, 's> {
    /// One context of `opts.ctx_tokens` cells (cut to the model's trained
    /// context) for `parallel` (1 to 64) answers at a time: shared by all
    /// when `unified` (one answer may use them all), else split evenly
    /// (each slot's attention reads only its own cells: faster with many
    /// long answers at once; llama-server's layout with `-np`).
    ///
    /// # Errors
    /// `LlmError::Param` for a bad count; `LlmError::Context` from llama.cpp.
    pub fn new(
        engine: &'m Engine,
        opts: &SessionOptions,
        (parallel, unified): (usize, bool),
    ) -> Result<Self, LlmError> {
        if !(1..=64).contains(&parallel) {
            return Err(LlmError::Param(format!(
                "parallel takes 1 to 64 slots, not {parallel}"
            )));
        }
        let train = engine.n_ctx_train();
        let n_ctx = if train > 0 {
            opts.ctx_tokens.min(train)
        } else {
            opts.ctx_tokens
        }
        .max(16);
        let params = super::context::context_params(&SessionOptions {
            ctx_tokens: n_ctx,
            max_beams: 0,
            ..opts.clone()
        })
        .with_n_seq_max(parallel as u32)
        .with_kv_unified(unified);
        let ctx = engine.context(params, n_ctx)?;
        let n_batch = (ctx.n_batch() as usize).min(opts.batch_tokens as usize);
        let slots = (0..parallel)
            .map(|i| Slot {
                seq: i as i32,
                cached: Vec::new(),
                run: None,
                drafter: None,
            })
            .collect();
        Ok(Batcher {
            engine,
            ctx,
            slots,
            n_batch: n_batch.max(parallel),
            draft: DraftOptions::default(),
            active: None,
            kv: opts.kv,
            prompt_cache: None,
            split: !unified && parallel > 1,
        })
    }

    /// Cells in the context.
    pub fn n_ctx(&self) -> usize {
        self.ctx.n_ctx() as usize
    }

    /// The most cells one answer may fill, its prompt included.
    pub fn slot_ctx(&self) -> usize {
        if self.split {
            self.n_ctx() / self.slots.len()
        } else {
            self.n_ctx()
        }
    }

    /// No answer is running.
    pub fn idle(&self) -> bool {
        self.slots.iter().all(|s| s.run.is_none())
    }

    /// Answers running now.
    pub fn running(&self) -> usize {
        self.slots.iter().filter(|s| s.run.is_some()).count()
    }

    pub fn adapter(&self) -> Option<(AdapterId, f32)> {
        self.active.as_ref().map(|a| (a.id, a.scale))
    }

    /// Apply a loaded adapter (or none) to the context; only while idle.
    /// Every slot's cache is emptied (it was computed with other weights).
    ///
    /// # Errors
    /// `LlmError::Param` while answers run; llama.cpp's adapter errors.
    pub fn set_adapter(&mut self, adapter: Option<(AdapterId, f32)>) -> Result<(), LlmError> {
        if !self.idle() {
            return Err(LlmError::Param(
                "the adapter cannot change while answers run".into(),
            ));
        }
        self.active = self.engine.apply_adapter(&mut self.ctx, adapter)?;
        self.ctx.clear_kv_cache();
        for s in &mut self.slots {
            s.cached.clear();
        }
        Ok(())
    }

    /// Decode speculatively: `make` gives each slot its drafter (called
    /// once per slot; a draft model's context of `slot_ctx` cells), or
    /// `None` turns drafting off. Only while idle.
    ///
    /// # Errors
    /// `LlmError::Param` while answers run, for options out of range or a
    /// recurrent or hybrid model; what `make` returns.
    pub fn set_draft(
        &mut self,
        draft: Option<(MakeDrafter<'_, 'm>, DraftOptions)>,
    ) -> Result<(), LlmError> {
        if !self.idle() {
            return Err(LlmError::Param(
                "drafting cannot change while answers run".into(),
            ));
        }
        let Some((make, opts)) = draft else {
            self.slots.iter_mut().for_each(|s| s.drafter = None);
            return Ok(());
        };
        super::speculative::check_draftable(self.engine, &opts)?;
        let drafters = (0..self.slots.len())
            .map(|_| make())
            .collect::<Result<Vec<_>, _>>()?;
        for (s, d) in self.slots.iter_mut().zip(drafters) {
            s.drafter = Some(d);
        }
        self.draft = opts;
        Ok(())
    }

    /// Keep standing prefixes' states in `cache` (or stop).
    pub fn set_prompt_cache(&mut self, cache: Option<PromptCache>) {
        self.prompt_cache = cache;
    }

    /// Whether a prompt cache is kept (requests' `prefix` is worth finding).
    pub fn caches_prompts(&self) -> bool {
        self.prompt_cache.is_some()
    }

    /// The drafter in use, as `--stats` names it.
    pub fn draft_name(&self) -> Option<String> {
        self.slots[0].drafter.as_ref().map(Drafter::describe)
    }

    /// Start `req` in a free slot, or say why not.
    pub fn start(&mut self, mut req: Request<'s>) -> Result<(), NotStarted<'s>> {
        let n_ctx = self.slot_ctx();
        let model = &self.engine.model;
        let checked = req
            .params
            .validate_for(n_ctx as u32, model.n_vocab())
            .and_then(|()| {
                if req.tokens.is_empty() {
                    Err(LlmError::Param("empty prompt".into()))
                } else if req.tokens.len() >= n_ctx {
                    Err(LlmError::PromptTooLong {
                        needed: req.tokens.len(),
                        ctx_tokens: n_ctx as u32,
                    })
                } else if req.params.beams > 0 {
                    Err(LlmError::Param("beam search is not batched".into()))
                } else {
                    Ok(())
                }
            });
        if let Err(e) = checked {
            let _ = (req.sink)(Out::Done(Err(e)));
            return Err(NotStarted::Refused);
        }
        let Some(i) = self.pick_slot(&req.tokens) else {
            return Err(NotStarted::Wait(Box::new(req)));
        };
        let mut keep = self.reuse(i, &req.tokens);
        let save_at = self.cached_prefix(i, &req, &mut keep);
        let prompt = req.tokens.len();
        let want = (prompt + req.params.n_predict.unwrap_or(n_ctx)).min(n_ctx);
        let room = keep + self.free_cells(i, prompt - keep);
        // An answer is not started short of its max_tokens while others
        // run (it would end early for want of room they will free); one
        // without a limit starts with at least UNLIMITED_MIN tokens of room.
        let enough = room >= want
            || self.running() == 0
            || (req.params.n_predict.is_none() && room >= prompt + UNLIMITED_MIN);
        if !enough || room <= prompt {
            return Err(NotStarted::Wait(Box::new(req)));
        }
        let reserved = want.min(room);
        let sampler = match req.params.sampler(model, n_ctx as u32, &req.tokens) {
            Ok(s) => s,
            Err(e) => {
                let _ = (req.sink)(Out::Done(Err(e)));
                return Err(NotStarted::Refused);
            }
        };
        let slot = &mut self.slots[i];
        slot.run = Some(Running {
            text: TextOut::new(&req.params.stop),
            pending: req.tokens[keep..].to_vec(),
            prompt_tokens: req.tokens.len(),
            params: req.params,
            sink: req.sink,
            sampler,
            last: None,
            logits_at: None,
            guesses: Vec::new(),
            drafted: 0,
            accepted: 0,
            save_at,
            reused: keep,
            n_gen: 0,
            reserved,
            t0: Instant::now(),
            prompt_ms: 0.0,
            ttft_ms: 0.0,
        });
        Ok(())
    }

    /// End every running answer now (`Finish::Cancelled`, what it wrote
    /// so far kept): the server is stopping.
    pub fn cancel_all(&mut self) {
        for i in 0..self.slots.len() {
            if self.slots[i].run.is_some() {
                self.finish(i, Ok(Finish::Cancelled));
            }
        }
    }

    /// With a prompt cache, bring `req`'s standing prefix into slot `i`
    /// from disk when the slot holds less of it (`keep` becomes its
    /// length), or say where to save it once evaluated. Files that fail
    /// their check are logged and replaced.
    fn cached_prefix(
        &mut self,
        i: usize,
        req: &Request<'_>,
        keep: &mut usize,
    ) -> Option<(usize, (std::path::PathBuf, std::path::PathBuf))> {
        let cache = self.prompt_cache.as_ref()?;
        let n = req.prefix;
        if n < prompt_cache::MIN_TOKENS || n >= req.tokens.len() || *keep >= n {
            return None;
        }
        let label = prompt_cache::context_label(
            self.engine,
            self.active.as_ref(),
            self.slot_ctx() as u32,
            self.kv,
        );
        let files = cache.paths(&cache.key(&label, &req.tokens[..n]));
        if !files.0.exists() {
            return Some((n, files));
        }
        let slot = &mut self.slots[i];
        match prompt_cache::load_seq(
            &mut self.ctx,
            slot.seq,
            (&files.0, &files.1),
            &req.tokens[..n],
        ) {
            Ok(()) => {
                slot.cached = req.tokens[..n].to_vec();
                *keep = n;
                tracing::info!(tokens = n, "prompt cache: standing prefix loaded");
                None
            }
            Err(why) => {
                tracing::warn!(file = %files.0.display(), %why, "prompt cache: ignored a saved state");
                slot.cached.clear();
                *keep = 0;
                Some((n, files))
            }
        }
    }

    /// The free slot whose cache shares the longest prefix with `tokens`.
    fn pick_slot(&self, tokens: &[LlamaToken]) -> Option<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.run.is_none())
            .max_by_key(|(i, s)| (common_prefix(&s.cached, tokens), usize::MAX - i))
            .map(|(i, _)| i)
    }

    /// Keep slot `i`'s cached prefix of `tokens` (at least one token is
    /// evaluated again: its logits are needed); drop the rest. Returns how
    /// many tokens are kept.
    fn reuse(&mut self, i: usize, tokens: &[LlamaToken]) -> usize {
        let slot = &mut self.slots[i];
        let mut keep = common_prefix(&slot.cached, tokens);
        if keep == tokens.len() {
            keep -= 1;
        }
        if self
            .ctx
            .kv_cache_seq_rm(slot.seq, Some(keep as u32), None)
            .is_err()
        {
            let _ = self.ctx.kv_cache_seq_rm(slot.seq, None, None);
            keep = 0;
        }
        slot.cached.truncate(keep);
        keep
    }

    /// Cells free for slot `i` beyond what it keeps, after evicting idle
    /// slots' caches if `need` cells are not free otherwise.
    fn free_cells(&mut self, i: usize, need: usize) -> usize {
        if self.split {
            return self.slot_ctx() - self.slots[i].cached.len();
        }
        let n_ctx = self.n_ctx();
        let used = |slots: &[Slot<'_, '_>]| -> usize {
            slots
                .iter()
                .map(|s| s.run.as_ref().map_or(s.cached.len(), |r| r.reserved))
                .sum()
        };
        if n_ctx.saturating_sub(used(&self.slots)) < need + 1 {
            for (j, s) in self.slots.iter_mut().enumerate() {
                if j != i && s.run.is_none() && !s.cached.is_empty() {
                    let _ = self.ctx.kv_cache_seq_rm(s.seq, None, None);
                    s.cached.clear();
                }
            }
        }
        n_ctx.saturating_sub(used(&self.slots))
    }

    /// One decode of every running answer's next token and of as many
    /// prompt tokens as fit; then each answer with logits samples, and the
    /// answers that end are told (`Out::Done`) and free their slots.
    ///
    /// # Errors
    /// llama.cpp's decode errors (every running answer is ended with it).
    pub fn step(&mut self) -> Result<(), LlmError> {
        let mut batch = LlamaBatch::new(self.n_batch, 1);
        if let Err(e) = self.fill(&mut batch) {
            self.fail_all(&e);
            return Err(e);
        }
        if batch.n_tokens() == 0 {
            return Ok(());
        }
        let decoded = self.ctx.decode(&mut batch).map_err(LlmError::from);
        if let Err(e) = decoded.and_then(|()| self.engine.check_remote(&mut self.ctx)) {
            self.fail_all(&e);
            return Err(e);
        }
        self.save_prefixes();
        for i in 0..self.slots.len() {
            self.sample(i);
        }
        Ok(())
    }

    /// Save the slots whose caches now hold exactly their standing prefix.
    fn save_prefixes(&mut self) {
        for slot in &mut self.slots {
            let Some(run) = slot.run.as_mut() else {
                continue;
            };
            let Some((at, files)) = run.save_at.take_if(|(at, _)| *at == slot.cached.len()) else {
                continue;
            };
            match prompt_cache::save_seq(&self.ctx, slot.seq, (&files.0, &files.1), &slot.cached) {
                Ok(()) => tracing::info!(tokens = at, "prompt cache: standing prefix saved"),
                Err(e) => tracing::warn!(error = %e, "prompt cache: could not save the state"),
            }
        }
    }

    /// Generated tokens first (one per answer, each with its drafter's
    /// guesses), then prompt chunks.
    fn fill(&mut self, batch: &mut LlamaBatch<'_>) -> Result<(), LlmError> {
        // Batch places the generated tokens still to come need.
        let mut to_come = self
            .slots
            .iter()
            .filter(|s| s.run.as_ref().is_some_and(|r| r.last.is_some()))
            .count();
        for slot in &mut self.slots {
            let Some(run) = slot.run.as_mut() else {
                continue;
            };
            if let Some(tok) = run.last.take() {
                to_come -= 1;
                run.logits_at = Some(batch.n_tokens());
                batch.add(tok, slot.cached.len() as i32, &[slot.seq], true)?;
                slot.cached.push(tok);
                let room = self.n_batch - batch.n_tokens() as usize - to_come;
                let guesses = guess(slot, room, &self.draft);
                for &g in &guesses {
                    batch.add(g, slot.cached.len() as i32, &[slot.seq], true)?;
                    slot.cached.push(g);
                }
                if let Some(run) = slot.run.as_mut() {
                    run.guesses = guesses;
                }
            }
        }
        for slot in &mut self.slots {
            let room = self.n_batch - batch.n_tokens() as usize;
            let Some(run) = slot.run.as_mut() else {
                continue;
            };
            if run.pending.is_empty() || room == 0 {
                continue;
            }
            let mut take = run.pending.len().min(room);
            if let Some((at, _)) = &run.save_at {
                // Stop at the standing prefix, so it can be saved alone.
                if slot.cached.len() < *at {
                    take = take.min(at - slot.cached.len());
                }
            }
            let chunk: Vec<LlamaToken> = run.pending.drain(..take).collect();
            let done = run.pending.is_empty();
            for (j, &tok) in chunk.iter().enumerate() {
                let last = done && j + 1 == chunk.len();
                if last {
                    run.logits_at = Some(batch.n_tokens());
                }
                batch.add(tok, slot.cached.len() as i32, &[slot.seq], last)?;
                slot.cached.push(tok);
            }
        }
        Ok(())
    }

    /// Slot `i`'s next tokens, if its logits are out: the pick after the
    /// generated token, then after each guess while the guesses were the
    /// picks. Refused guesses leave the cache; an answer that ends is told.
    fn sample(&mut self, i: usize) {
        let Some(run) = self.slots[i].run.as_mut() else {
            return;
        };
        let Some(idx) = run.logits_at.take() else {
            return;
        };
        let guesses = std::mem::take(&mut run.guesses);
        // Cells holding the generated token and what is before it.
        let base = self.slots[i].cached.len() - guesses.len();
        let mut kept = 0;
        let mut ended = None;
        for j in 0..=guesses.len() {
            if let Some(how) = self.pick(i, idx + j as i32, base + j) {
                ended = Some(how);
                break;
            }
            let Some(run) = self.slots[i].run.as_mut() else {
                break;
            };
            if j < guesses.len() && run.last == Some(guesses[j]) {
                // Guessed right: in the cache already, its logits out.
                run.last = None;
                kept += 1;
            } else {
                break;
            }
        }
        let slot = &mut self.slots[i];
        if slot.cached.len() > base + kept {
            let _ = self
                .ctx
                .kv_cache_seq_rm(slot.seq, Some((base + kept) as u32), None);
            slot.cached.truncate(base + kept);
        }
        if let Some(run) = slot.run.as_mut() {
            run.drafted += guesses.len();
            run.accepted += kept;
        }
        if let Some(d) = slot.drafter.as_mut() {
            d.observe(guesses.len(), kept, &self.draft);
        }
        if let Some(how) = ended {
            self.finish(i, how);
        }
    }

    /// Slot `i`'s pick from the logits at batch index `idx`, with `valid`
    /// cells of its cache meaning what they hold: `Some` when the answer
    /// ends here, else the pick is shown and left in `last`.
    fn pick(&mut self, i: usize, idx: i32, valid: usize) -> Option<Result<Finish, LlmError>> {
        let model = &self.engine.model;
        let ctx = &self.ctx;
        let slot = &mut self.slots[i];
        let run = slot.run.as_mut()?;
        if run.n_gen == 0 {
            run.prompt_ms = run.t0.elapsed().as_secs_f64() * 1e3;
        }
        let picked = super::grammar::pick(&mut run.sampler, ctx, idx, run.params.grammar.as_ref());
        let tok = match picked.map_err(LlmError::from) {
            Ok(t) => t,
            Err(e) => return Some(Err(e)),
        };
        if run.n_gen == 0 {
            run.ttft_ms = run.t0.elapsed().as_secs_f64() * 1e3;
        }
        if model.vocab().is_eog(tok) {
            return Some(Ok(Finish::EndOfGeneration));
        }
        run.n_gen += 1;
        if let Some(k) = run.params.logprobs {
            let lp = super::logprobs::of(model, ctx.get_logits_ith(idx), tok, k);
            let _ = (run.sink)(Out::Logprob(lp));
        }
        let (shown, stopped) = run.text.token(model, tok);
        let flow = if shown.is_empty() {
            ControlFlow::Continue(())
        } else {
            (run.sink)(Out::Text(&shown))
        };
        let finish = if stopped {
            Some(Finish::StopString)
        } else if flow.is_break() {
            Some(Finish::Cancelled)
        } else if run.params.n_predict.is_some_and(|n| run.n_gen >= n) {
            Some(Finish::Length)
        } else if valid + 1 > run.reserved {
            Some(Finish::ContextFull)
        } else {
            None
        };
        if finish.is_none() {
            run.last = Some(tok);
        }
        finish.map(Ok)
    }

    /// End slot `i`'s answer: the rest of its text, its statistics, `Done`.
    fn finish(&mut self, i: usize, how: Result<Finish, LlmError>) {
        let n_ctx = self.n_ctx() as u32;
        let load_ms = self.engine.load_ms();
        let slot = &mut self.slots[i];
        let Some(mut run) = slot.run.take() else {
            return;
        };
        let reply = how.map(|finish| {
            if matches!(
                finish,
                Finish::EndOfGeneration | Finish::Length | Finish::ContextFull
            ) {
                let rest = run.text.finish();
                if !rest.is_empty() {
                    let _ = (run.sink)(Out::Text(&rest));
                }
            }
            let gen_ms = run.t0.elapsed().as_secs_f64() * 1e3 - run.prompt_ms;
            Reply {
                text: std::mem::take(&mut run.text.text),
                finish,
                stats: GenStats {
                    prompt_tokens: run.prompt_tokens,
                    cached_tokens: run.reused,
                    prompt_ms: run.prompt_ms,
                    ttft_ms: run.ttft_ms,
                    gen_tokens: run.n_gen,
                    gen_ms,
                    ctx_used: slot.cached.len(),
                    ctx_tokens: n_ctx,
                    load_ms,
                    draft_tokens: run.drafted,
                    draft_accepted: run.accepted,
                },
            }
        });
        if reply.is_err() {
            // What it evaluated may be half a batch: start it over next time.
            let _ = self.ctx.kv_cache_seq_rm(slot.seq, None, None);
            slot.cached.clear();
        }
        let _ = (run.sink)(Out::Done(reply));
    }

    fn fail_all(&mut self, e: &LlmError) {
        for i in 0..self.slots.len() {
            if self.slots[i].run.is_some() {
                // A lost --rpc board keeps its kind (the HTTP API answers
                // 503, not 400); other errors as their text.
                let each = match e {
                    LlmError::Rpc(crate::rpc::RpcError::Lost { endpoint, why }) => {
                        crate::rpc::RpcError::Lost {
                            endpoint: endpoint.clone(),
                            why: why.clone(),
                        }
                        .into()
                    }
                    _ => LlmError::Param(crate::report(e)),
                };
                self.finish(i, Err(each));
            }
        }
    }
}

/// `slot`'s drafter's guesses after the generated token its cache ends
/// with: at most `room` (the batch's places left), the cells its
/// reservation has left, and the tokens its `max_tokens` has left; none
/// below `--draft-min` (`Drafter::draft`). A drafter that fails drafts
/// nothing (logged).
fn guess(slot: &mut Slot<'_, '_>, room: usize, opts: &DraftOptions) -> Vec<LlamaToken> {
    let (Some(run), Some(d)) = (slot.run.as_ref(), slot.drafter.as_mut()) else {
        return Vec::new();
    };
    let cells = run.reserved.saturating_sub(slot.cached.len() + 1);
    let left = run
        .params
        .n_predict
        .map_or(usize::MAX, |n| n.saturating_sub(run.n_gen));
    let limit = opts.max.min(room).min(cells).min(left);
    if limit == 0 || limit < opts.min {
        return Vec::new();
    }
    match d.draft(&slot.cached, limit, opts) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %crate::report(&e), "drafting failed; decoding without");
            Vec::new()
        }
    }
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
