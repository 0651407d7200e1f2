//! A conversation: one llama.cpp context, its KV cache and the turns so far.
//!
//! Each turn renders the whole conversation with the chat template, then
//! evaluates only the tokens after the longest prefix already in the KV cache,
//! so follow-up questions cost their own length, not the conversation's. When
//! the conversation no longer fits the context, the oldest turns are dropped
//! until it fills half the context (the system prompt stays), so a
//! long-running console never fails on length and re-evaluates the
//! conversation only once per half window.

use std::ops::ControlFlow;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;

use super::adapters::{ActiveAdapter, AdapterId};
use super::chat::{Message, Role};
use super::context::{context_params, SessionOptions};
use super::logprobs::Probe;
use super::speculative::{DraftCount, DraftOptions, Drafter};
use super::stats::{Finish, GenStats, Reply};
use super::text::TextOut;
use super::{beam, Engine, GenParams, LlmError};

/// Where the text of an answer goes, piece by piece. Called once per
/// generated token (with an empty string when the token completed no
/// character yet), so returning `Break` cancels within one token.
pub type Sink<'a> = &'a mut dyn FnMut(&str) -> ControlFlow<()>;

pub struct Session<'m> {
    pub(crate) engine: &'m Engine,
    pub(crate) ctx: LlamaContext<'m>,
    opts: SessionOptions,
    /// Tokens in the KV cache of sequence 0, at positions 0..len.
    pub(crate) cached: Vec<LlamaToken>,
    system: Option<String>,
    history: Vec<Message>,
    last: Option<GenStats>,
    pub(crate) adapter: Option<ActiveAdapter>,
    /// Speculative decoding, when set (`set_draft`).
    draft: Option<Speculation<'m>>,
}

impl<'m> Session<'m> {
    pub(crate) fn new(engine: &'m Engine, opts: SessionOptions) -> Result<Session<'m>, LlmError> {
        if opts.ctx_tokens < 16 {
            return Err(LlmError::Param("context must be at least 16 tokens".into()));
        }
        if opts.threads < 1 {
            return Err(LlmError::Param("threads must be at least 1".into()));
        }
        // llama.cpp runs past the trained context only with RoPE scaling,
        // which ferrite does not set: the answers would degrade silently. A
        // default (the board's) is cut to what the model was trained on; an
        // explicit -c larger than that is refused by the front end
        // (`Engine::check_ctx`).
        let mut opts = opts;
        let train = engine.n_ctx_train();
        if train > 0 && opts.ctx_tokens > train {
            tracing::info!(
                ctx = opts.ctx_tokens,
                train,
                "context cut to the model's trained context"
            );
            opts.ctx_tokens = train.max(16);
        }
        let ctx = engine.context(context_params(&opts), opts.ctx_tokens)?;
        if ctx.n_ctx() != opts.ctx_tokens {
            // llama.cpp pads the context to its KV cache's block (256 cells
            // in llama-context.cpp), so -c 16 runs with 256.
            tracing::warn!(
                asked = opts.ctx_tokens,
                got = ctx.n_ctx(),
                "llama.cpp rounded the context size up to its KV cache's block"
            );
        }
        if let Some(cores) = std::thread::available_parallelism()
            .ok()
            .filter(|n| opts.threads as usize > n.get())
        {
            // Threads beyond the cores contend for them at every barrier of
            // ggml's graph: measured 40x slower with -t 64 on 2 cores.
            tracing::warn!(
                threads = opts.threads,
                cores = cores.get(),
                "more threads than CPU cores: generation slows down sharply; use -t {} or fewer",
                cores.get()
            );
        }
        Ok(Session {
            engine,
            ctx,
            opts,
            cached: Vec::new(),
            system: None,
            history: Vec::new(),
            last: None,
            adapter: None,
            draft: None,
        })
    }

    /// Decode speculatively with `drafter` (or stop): every token is still
    /// the sampler's pick, so answers stay what they are without it up to
    /// the rounding of batched evaluation (see `speculative`).
    ///
    /// # Errors
    /// `LlmError::Param` for options out of range, or a recurrent or hybrid
    /// model (its cache cannot drop refused guesses).
    pub fn set_draft(
        &mut self,
        draft: Option<(Drafter<'m>, DraftOptions)>,
    ) -> Result<(), LlmError> {
        if let Some((_, o)) = &draft {
            super::speculative::check_draftable(self.engine, o)?;
        }
        self.draft = draft.map(|(drafter, opts)| Speculation { drafter, opts });
        Ok(())
    }

    /// The drafter in use, as `--stats` names it.
    pub fn draft_name(&self) -> Option<String> {
        self.draft.as_ref().map(|s| s.drafter.describe())
    }

    pub fn engine(&self) -> &'m Engine {
        self.engine
    }

    /// The context size llama.cpp actually allocated.
    pub fn n_ctx(&self) -> u32 {
        self.ctx.n_ctx()
    }

    pub fn threads(&self) -> i32 {
        self.opts.threads
    }

    /// The KV cache's element types, K and V.
    pub fn kv_types(&self) -> (crate::board::KvType, crate::board::KvType) {
        self.opts.kv
    }

    pub fn set_system(&mut self, system: Option<String>) {
        self.system = system.filter(|s| !s.trim().is_empty());
    }

    pub fn system(&self) -> Option<&str> {
        self.system.as_deref()
    }

    pub fn history(&self) -> &[Message] {
        &self.history
    }

    /// Continue an earlier conversation (e.g. after an adapter swap): the
    /// turns are re-evaluated on the next question.
    pub fn restore(&mut self, history: Vec<Message>) {
        self.history = history;
        self.invalidate_cache();
    }

    /// Replace the conversation but keep the KV cache: the next question
    /// re-evaluates only from where the new conversation's tokens differ
    /// from what is cached (a client that resends its whole conversation,
    /// as OpenAI's API has it, pays only for the new turn).
    pub fn set_history(&mut self, history: Vec<Message>) {
        self.history = history;
    }

    /// Statistics of the last answer.
    pub fn last_stats(&self) -> Option<&GenStats> {
        self.last.as_ref()
    }

    /// Forget the conversation and empty the KV cache.
    pub fn reset(&mut self) {
        self.history.clear();
        self.cached.clear();
        self.ctx.clear_kv_cache();
    }

    /// Change the CPU threads (thermal throttling). llama-cpp-2 exposes no
    /// per-context thread setter, so the context is rebuilt; the conversation
    /// is kept and re-evaluated on the next turn.
    pub fn set_threads(&mut self, threads: i32) -> Result<(), LlmError> {
        if threads == self.opts.threads {
            return Ok(());
        }
        let mut opts = self.opts.clone();
        opts.threads = threads.max(1);
        self.ctx = self
            .engine
            .context(context_params(&opts), opts.ctx_tokens)?;
        self.opts = opts;
        self.cached.clear();
        // A new context starts without the adapter.
        if let Some(a) = self.adapter.clone() {
            self.set_adapter(Some((a.id, a.scale)))?;
        }
        Ok(())
    }

    /// Tokens per `llama_decode`: the batch asked for, as llama.cpp cut it
    /// (to the context size asked for, before it pads the context: -c 16
    /// makes a 16-token batch in a 256-cell context, and a longer batch
    /// trips `GGML_ASSERT(n_tokens_all <= cparams.n_batch)`).
    pub(crate) fn opts_batch(&self) -> usize {
        (self.ctx.n_batch() as usize).min(self.opts.batch_tokens as usize)
    }

    /// Empty the KV cache but keep the conversation (it is re-evaluated on the
    /// next turn); needed whenever the weights change, e.g. a LoRA swap.
    pub fn invalidate_cache(&mut self) {
        self.cached.clear();
        self.ctx.clear_kv_cache();
    }

    /// One chat turn: `user` is answered in the context of the conversation,
    /// and both are added to it. A cancelled answer is kept as far as it went.
    pub fn ask(
        &mut self,
        user: &str,
        params: &GenParams,
        sink: Sink<'_>,
    ) -> Result<Reply, LlmError> {
        self.ask_probed(user, params, sink, None)
    }

    /// `ask`, handing each generated token's log probability to `probe`
    /// (when `params.logprobs` is set) before its text reaches `sink`.
    pub fn ask_probed(
        &mut self,
        user: &str,
        params: &GenParams,
        sink: Sink<'_>,
        probe: Option<Probe<'_>>,
    ) -> Result<Reply, LlmError> {
        params.validate_for(self.n_ctx(), self.engine.model.n_vocab())?;
        let n_ctx = self.n_ctx() as usize;
        let reserve = params.n_predict.unwrap_or(256).min(n_ctx / 2);
        let user_msg = Message::new(Role::User, user);
        // Once the conversation overflows, drop down to half the context so
        // the re-evaluation that dropping forces happens once per half
        // window, not on every turn.
        let mut limit = n_ctx;
        let tokens = loop {
            let mut msgs = Vec::with_capacity(self.history.len() + 2);
            if let Some(s) = &self.system {
                msgs.push(Message::new(Role::System, s.clone()));
            }
            msgs.extend(self.history.iter().cloned());
            msgs.push(user_msg.clone());
            let prompt = self.engine.template.render(&self.engine.model, &msgs)?;
            let tokens = self.engine.tokenize(&prompt);
            if tokens.len() + reserve <= limit || self.history.is_empty() {
                break tokens;
            }
            limit = n_ctx / 2;
            // Drop the oldest exchange (a user turn and its answer).
            let drop_n = if self.history.len() >= 2 && self.history[1].role == Role::Assistant {
                2
            } else {
                1
            };
            self.history.drain(..drop_n);
            tracing::info!(
                remaining_turns = self.history.len(),
                "context budget: dropped the oldest turn"
            );
        };
        let reply = self.generate(&tokens, params, sink, probe)?;
        self.history.push(user_msg);
        self.history
            .push(Message::new(Role::Assistant, reply.text.clone()));
        Ok(reply)
    }

    /// Continue raw text without any chat template or history.
    pub fn complete(
        &mut self,
        prompt: &str,
        params: &GenParams,
        sink: Sink<'_>,
    ) -> Result<Reply, LlmError> {
        self.complete_probed(prompt, params, sink, None)
    }

    /// `complete`, with log probabilities as `ask_probed` has them.
    pub fn complete_probed(
        &mut self,
        prompt: &str,
        params: &GenParams,
        sink: Sink<'_>,
        probe: Option<Probe<'_>>,
    ) -> Result<Reply, LlmError> {
        params.validate_for(self.n_ctx(), self.engine.model.n_vocab())?;
        let tokens = self.engine.tokenize(prompt);
        self.generate(&tokens, params, sink, probe)
    }

    /// Evaluate `tokens` into sequence 0, reusing the cached prefix. Returns
    /// the batch index whose logits predict the next token.
    pub(super) fn prefill(&mut self, tokens: &[LlamaToken]) -> Result<(usize, i32), LlmError> {
        let n_ctx = self.n_ctx() as usize;
        if tokens.is_empty() {
            return Err(LlmError::Param("empty prompt".into()));
        }
        if tokens.len() >= n_ctx {
            return Err(LlmError::PromptTooLong {
                needed: tokens.len(),
                ctx_tokens: self.n_ctx(),
            });
        }
        let n_batch = self.opts_batch();
        let _span = tracing::debug_span!("prefill", tokens = tokens.len()).entered();
        let filled = super::context::fill(&mut self.ctx, &mut self.cached, tokens, n_batch)?;
        self.engine.check_remote(&mut self.ctx)?;
        Ok(filled)
    }

    fn generate(
        &mut self,
        tokens: &[LlamaToken],
        params: &GenParams,
        sink: Sink<'_>,
        probe: Option<Probe<'_>>,
    ) -> Result<Reply, LlmError> {
        let t0 = Instant::now();
        let (reused, logits_idx) = self.prefill(tokens)?;
        let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t_gen = Instant::now();
        let mut out = Output::new(&params.stop, sink);
        let Decoded {
            n_gen,
            finish,
            ttft_ms,
            draft,
        } = if params.beams >= 1 {
            self.beam_loop(tokens.len(), params, logits_idx, &mut out, t0)?
        } else {
            self.sample_loop(params, logits_idx, (&mut out, probe), t0)?
        };
        if matches!(
            finish,
            Finish::EndOfGeneration | Finish::Length | Finish::ContextFull
        ) {
            out.flush();
        }
        let stats = GenStats {
            prompt_tokens: tokens.len(),
            cached_tokens: reused,
            prompt_ms,
            ttft_ms,
            gen_tokens: n_gen,
            gen_ms: t_gen.elapsed().as_secs_f64() * 1e3,
            ctx_used: self.cached.len(),
            ctx_tokens: self.n_ctx(),
            load_ms: self.engine.load_ms(),
            draft_tokens: draft.drafted,
            draft_accepted: draft.accepted,
        };
        tracing::debug!(%stats, ?finish, "answer done");
        self.last = Some(stats.clone());
        Ok(Reply {
            text: out.text.text,
            finish,
            stats,
        })
    }

    /// Beam search (`params.beams` ≥ 1) from the prompt's last logits, the
    /// best beam's text shown once it is known.
    fn beam_loop(
        &mut self,
        n_prompt: usize,
        params: &GenParams,
        logits_idx: i32,
        out: &mut Output<'_>,
        t0: Instant,
    ) -> Result<Decoded, LlmError> {
        if params.beams > self.opts.max_beams {
            return Err(LlmError::Param(format!(
                "this session was set up for at most {} beams",
                self.opts.max_beams
            )));
        }
        let _span = tracing::debug_span!("beam", width = params.beams).entered();
        let (toks, finish) = beam::search(
            &mut self.ctx,
            &self.engine.model,
            n_prompt,
            logits_idx,
            params,
        )?;
        self.cached.truncate(n_prompt);
        let ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut finish = finish;
        for &t in &toks {
            match out.token(&self.engine.model, t) {
                Step::Go => {}
                Step::Stop => {
                    finish = Finish::StopString;
                    break;
                }
                Step::Cancel => {
                    finish = Finish::Cancelled;
                    break;
                }
            }
        }
        Ok(Decoded {
            n_gen: toks.len(),
            finish,
            ttft_ms,
            draft: DraftCount::default(),
        })
    }

    fn sample_loop(
        &mut self,
        params: &GenParams,
        logits_idx: i32,
        (out, probe): (&mut Output<'_>, Option<Probe<'_>>),
        t0: Instant,
    ) -> Result<Decoded, LlmError> {
        // The penalties look at the prompt too, as in llama-cli.
        let mut sampler = params.sampler(&self.engine.model, self.n_ctx(), &self.cached)?;
        let mut draft = self.draft.take();
        let r = self.decode_loop(
            params,
            logits_idx,
            &mut sampler,
            (out, probe),
            t0,
            draft.as_mut(),
        );
        self.draft = draft;
        // Draft tokens the target did not keep leave its cache.
        if r.as_ref().is_ok_and(|d| d.draft.drafted > 0) {
            self.ctx
                .kv_cache_seq_rm(0, Some(self.cached.len() as u32), None)?;
        }
        r
    }

    /// Pick, show and decode token by token; with a drafter, each decode
    /// also evaluates the draft's guesses for the tokens after, and a pick
    /// that equals the next guess is already in the cache (see
    /// `speculative`). Either way every token is the sampler's pick from
    /// the target's logits at its position.
    fn decode_loop(
        &mut self,
        params: &GenParams,
        mut idx: i32,
        sampler: &mut llama_cpp_2::sampling::LlamaSampler,
        (out, mut probe): (&mut Output<'_>, Option<Probe<'_>>),
        t0: Instant,
        mut spec: Option<&mut Speculation<'m>>,
    ) -> Result<Decoded, LlmError> {
        let n_ctx = self.n_ctx() as usize;
        let mut batch = LlamaBatch::new(spec.as_ref().map_or(1, |s| s.opts.max + 1), 1);
        // Guesses evaluated after the last kept token, in order.
        let mut pending = std::collections::VecDeque::new();
        let mut d = Decoded::default();
        // The last proposal: its length, and the accepted count before it.
        let mut round = (0, 0);
        let _span = tracing::debug_span!("decode").entered();
        d.finish = loop {
            if params.n_predict.is_some_and(|n| d.n_gen >= n) {
                break Finish::Length;
            }
            let tok = super::grammar::pick(sampler, &self.ctx, idx, params.grammar.as_ref())?;
            if d.n_gen == 0 {
                d.ttft_ms = t0.elapsed().as_secs_f64() * 1e3;
            }
            if let Some(f) = self.emit(tok, idx, params, out, &mut probe, &mut d.n_gen) {
                break f;
            }
            if self.cached.len() + 1 >= n_ctx {
                break Finish::ContextFull;
            }
            if pending.front() == Some(&tok) {
                // Guessed right: in the cache already, the next logits out.
                pending.pop_front();
                self.cached.push(tok);
                d.draft.accepted += 1;
                idx += 1;
                continue;
            }
            if !pending.is_empty() {
                self.ctx
                    .kv_cache_seq_rm(0, Some(self.cached.len() as u32), None)?;
                pending.clear();
            }
            let guesses = match spec.as_deref_mut() {
                Some(s) => {
                    s.drafter
                        .observe(round.0, d.draft.accepted - round.1, &s.opts);
                    let left = params.n_predict.map_or(usize::MAX, |n| n - d.n_gen);
                    self.guesses(s, tok, left)?
                }
                None => Vec::new(),
            };
            let pos = self.cached.len();
            batch.clear();
            for (j, &t) in std::iter::once(&tok).chain(&guesses).enumerate() {
                batch
                    .add(t, (pos + j) as i32, &[0], true)
                    .map_err(LlmError::from)?;
            }
            self.ctx.decode(&mut batch).map_err(LlmError::from)?;
            self.engine.check_remote(&mut self.ctx)?;
            self.cached.push(tok);
            round = (guesses.len(), d.draft.accepted);
            d.draft.drafted += guesses.len();
            pending.extend(guesses);
            idx = 0;
        };
        Ok(d)
    }

    /// The drafter's guesses for the tokens after `tok` (not yet in the
    /// cache): as many as fit the context, one llama.cpp batch (a longer
    /// one trips `GGML_ASSERT(n_tokens <= n_batch)`) and the `left` tokens
    /// of `-n`; none when fewer than `--draft-min`.
    fn guesses(
        &mut self,
        s: &mut Speculation<'m>,
        tok: LlamaToken,
        left: usize,
    ) -> Result<Vec<LlamaToken>, LlmError> {
        let room = (self.n_ctx() as usize)
            .saturating_sub(self.cached.len() + 2)
            .min(self.opts_batch() - 1);
        self.cached.push(tok);
        let g = s
            .drafter
            .draft(&self.cached, s.opts.max.min(room).min(left), &s.opts);
        self.cached.pop();
        g
    }

    /// A picked token's way out: end of generation, its log probability,
    /// its text. `Some` ends the answer.
    fn emit(
        &self,
        tok: LlamaToken,
        idx: i32,
        params: &GenParams,
        out: &mut Output<'_>,
        probe: &mut Option<Probe<'_>>,
        n_gen: &mut usize,
    ) -> Option<Finish> {
        let model = &self.engine.model;
        if model.vocab().is_eog(tok) {
            return Some(Finish::EndOfGeneration);
        }
        *n_gen += 1;
        if let (Some(k), Some(probe)) = (params.logprobs, probe.as_mut()) {
            probe(super::logprobs::of(
                model,
                self.ctx.get_logits_ith(idx),
                tok,
                k,
            ));
        }
        match out.token(model, tok) {
            Step::Go => None,
            Step::Stop => Some(Finish::StopString),
            Step::Cancel => Some(Finish::Cancelled),
        }
    }
}

/// What one decode loop did.
#[derive(Default)]
struct Decoded {
    n_gen: usize,
    finish: Finish,
    ttft_ms: f64,
    draft: DraftCount,
}

/// A session's drafter and its limits.
pub(crate) struct Speculation<'m> {
    pub(crate) drafter: Drafter<'m>,
    pub(crate) opts: DraftOptions,
}

enum Step {
    Go,
    Stop,
    Cancel,
}

/// An answer's text (`TextOut`) going to the sink.
struct Output<'s> {
    text: TextOut,
    sink: Sink<'s>,
}

impl<'s> Output<'s> {
    fn new(stops: &[String], sink: Sink<'s>) -> Self {
        Output {
            text: TextOut::new(stops),
            sink,
        }
    }

    fn token(&mut self, model: &llama_cpp_2::model::LlamaModel, tok: LlamaToken) -> Step {
        let (shown, stopped) = self.text.token(model, tok);
        let flow = (self.sink)(&shown);
        if stopped {
            Step::Stop
        } else if flow.is_break() {
            Step::Cancel
        } else {
            Step::Go
        }
    }

    /// End of a normal answer: release held-back text.
    fn flush(&mut self) {
        let shown = self.text.finish();
        if !shown.is_empty() {
            let _ = (self.sink)(&shown);
        }
    }
}

impl Engine {
    /// A new conversation with its own context and KV cache.
    pub fn session(&self, opts: SessionOptions) -> Result<Session<'_>, LlmError> {
        Session::new(self, opts)
    }

    /// Apply a loaded adapter at `scale` to `ctx` (or take the applied one
    /// off). The caller empties the context's KV cache.
    /// The name, file and scale of `adapter` (one this engine loaded).
    pub(crate) fn adapter_file(
        &self,
        adapter: Option<&ActiveAdapter>,
    ) -> Option<(String, std::path::PathBuf, f32)> {
        let a = adapter?;
        let list = self.adapters.0.lock().expect("adapter list");
        list.get(a.id.0)
            .map(|l| (l.name.clone(), l.path.clone(), a.scale))
    }

    pub(crate) fn apply_adapter(
        &self,
        ctx: &mut LlamaContext<'_>,
        adapter: Option<(AdapterId, f32)>,
    ) -> Result<Option<ActiveAdapter>, LlmError> {
        if !adapter.is_none_or(|(_, s)| s.is_finite()) {
            return Err(LlmError::Param(
                "adapter scale must be a finite number".into(),
            ));
        }
        let mut list = self.adapters.0.lock().expect("adapter list");
        match adapter {
            Some((id, scale)) => {
                let a = list
                    .get_mut(id.0)
                    .ok_or_else(|| LlmError::Param("no such adapter loaded".into()))?;
                let name = a.name.clone();
                ctx.lora_adapter_set(&mut a.handle, scale)
                    .map_err(|e| LlmError::Adapter {
                        name,
                        source: e.into(),
                    })?;
                Ok(Some(ActiveAdapter {
                    id,
                    name: a.name.clone(),
                    scale,
                }))
            }
            None => {
                if let Some(a) = list.first_mut() {
                    let name = a.name.clone();
                    ctx.lora_adapter_remove(&mut a.handle)
                        .map_err(|e| LlmError::Adapter {
                            name,
                            source: e.into(),
                        })?;
                }
                Ok(None)
            }
        }
    }
}

impl Session<'_> {
    /// Apply a loaded adapter at `scale` (or none), emptying the KV cache;
    /// the conversation is kept and re-evaluated with the new weights.
    pub fn set_adapter(&mut self, adapter: Option<(AdapterId, f32)>) -> Result<(), LlmError> {
        self.adapter = self.engine.apply_adapter(&mut self.ctx, adapter)?;
        self.invalidate_cache();
        Ok(())
    }

    pub fn adapter(&self) -> Option<&ActiveAdapter> {
        self.adapter.as_ref()
    }

    /// llama.cpp's logits at every position of `tokens`, evaluated from an
    /// empty cache with the current adapter (tests hold them against the
    /// trainer's forward pass). The cache is left empty.
    pub fn logits_all(&mut self, tokens: &[u32]) -> Result<Vec<Vec<f32>>, LlmError> {
        use llama_cpp_2::llama_batch::LlamaBatch;
        use llama_cpp_2::token::LlamaToken;
        if tokens.len() > self.n_ctx() as usize || tokens.len() > self.opts_batch() {
            return Err(LlmError::PromptTooLong {
                needed: tokens.len(),
                ctx_tokens: self.n_ctx(),
            });
        }
        self.invalidate_cache();
        let mut batch = LlamaBatch::new(tokens.len(), 1);
        for (i, &t) in tokens.iter().enumerate() {
            batch
                .add(LlamaToken(t as i32), i as i32, &[0], true)
                .map_err(LlmError::from)?;
        }
        self.ctx.decode(&mut batch).map_err(LlmError::from)?;
        self.engine.check_remote(&mut self.ctx)?;
        let out = (0..tokens.len())
            .map(|i| self.ctx.get_logits_ith(i as i32).to_vec())
            .collect();
        self.invalidate_cache();
        Ok(out)
    }

    /// Teacher forcing with the current adapter: the natural-log probability
    /// of each token of `forced` after `prompt` and the tokens of `forced`
    /// before it (log-softmax of llama.cpp's logits, in f64). `prompt` must
    /// not be empty. Evaluated from an empty cache in `opts_batch`-token
    /// decodes, logits kept only where a forced token is predicted; the cache
    /// is left empty.
    ///
    /// Errors: `PromptTooLong` when both do not fit the context; llama.cpp
    /// failures as `Decode`.
    pub fn forced_logprobs(
        &mut self,
        prompt: &[LlamaToken],
        forced: &[LlamaToken],
    ) -> Result<Vec<f64>, LlmError> {
        let all: Vec<LlamaToken> = prompt.iter().chain(forced).copied().collect();
        if prompt.is_empty() || all.len() > self.n_ctx() as usize {
            return Err(LlmError::PromptTooLong {
                needed: all.len(),
                ctx_tokens: self.n_ctx(),
            });
        }
        self.invalidate_cache();
        let first_out = prompt.len() - 1;
        let step = self.opts_batch().max(1);
        let mut out = Vec::with_capacity(forced.len());
        for (c, chunk) in all[..all.len() - 1].chunks(step).enumerate() {
            let start = c * step;
            let mut batch = LlamaBatch::new(chunk.len(), 1);
            for (i, &t) in chunk.iter().enumerate() {
                let pos = start + i;
                batch
                    .add(t, pos as i32, &[0], pos >= first_out)
                    .map_err(LlmError::from)?;
            }
            self.ctx.decode(&mut batch).map_err(LlmError::from)?;
            self.engine.check_remote(&mut self.ctx)?;
            for (i, pos) in (start..start + chunk.len()).enumerate() {
                if pos >= first_out {
                    let logits = self.ctx.get_logits_ith(i as i32);
                    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
                    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
                    let target = all[pos + 1].0 as usize;
                    out.push(logits[target] as f64 - max - sum.ln());
                }
            }
        }
        self.invalidate_cache();
        Ok(out)
    }
}
