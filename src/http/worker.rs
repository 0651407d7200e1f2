//! The one thread that runs the model for HTTP clients: jobs arrive on a
//! bounded queue (full: the request gets a 503 at once, the policy
//! `routes` states) and up to `parallel` are answered at once, batched on
//! one context (`llm::Batcher`: llama.cpp sequences, one decode per step for
//! all of them), first come first served. A finished answer's tokens stay
//! in its slot's cache, so a client resending its growing conversation pays
//! only for the new turn.
//!
//! A job names its model (`MODEL` or `MODEL:ADAPTER`), resolved when it
//! starts. An adapter applies to the whole context: a job for another
//! adapter than the running answers' waits (and the jobs behind it) until
//! they finish, then the adapter is swapped. Beside a console the worker
//! stops between steps when the console needs the engine to itself
//! (`/model`, loading an adapter), after the running answers finish, and a
//! new one starts on the engine that follows; jobs wait meanwhile.
//!
//! Each answer streams back as `Piece`s on the job's own channel; when the
//! client goes away its receiver is dropped, the next token's send fails,
//! and its generation stops within that token.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long answers running when the worker is stopped (SIGTERM, a
/// console's `/model`) may go on before they are cut.
const QUIT_GRACE: Duration = Duration::from_secs(5);

use super::job::{Job, Piece, Work};
use super::metrics::Metrics;
use super::state::Served;
use crate::llm::{
    AdapterId, Batcher, DraftOptions, Drafter, Engine, Finish, LlmError, Message, NotStarted, Out,
    Request, Role, SessionOptions,
};

/// Run jobs on `engine`, `parallel` at a time, until `quit` is set (the
/// running answers finish first) or the queue's senders are gone, counting
/// in `metrics` (`waiting`: jobs queued; `in_flight`: jobs accepted and not
/// finished, which the handlers hold to the queue's bound). With `speed`'s
/// draft, speculatively (`Batcher::set_draft`): a draft model's contexts
/// that cannot be made leave drafting off, with a warning.
pub fn run(
    (engine, speed): (&Engine, super::Speedups<'_>),
    (opts, parallel, unified): (SessionOptions, usize, bool),
    jobs: &Receiver<Job>,
    served: &Served,
    metrics: &Metrics,
    quit: &AtomicBool,
) {
    let mut batcher = batcher(engine, speed, &opts, (parallel, unified));
    // A request taken off the queue that cannot start yet (no free slot,
    // no room in the cache, another adapter): it goes first when it can.
    let mut held: Option<Held<'_>> = None;
    let mut quit_at = None;
    loop {
        if quit.load(Ordering::Relaxed) {
            cut_after_grace(batcher.as_mut(), &mut quit_at);
        }
        let busy = batcher.as_ref().is_some_and(|b| !b.idle());
        if quit.load(Ordering::Relaxed) && !busy {
            if let Some(h) = held.take() {
                metrics.waiting.fetch_sub(1, Ordering::Relaxed);
                let why = "the model is being switched: retry shortly";
                let _ = h.out.send(Piece::Error(why.into()));
                metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
        let Some(b) = batcher.as_mut() else {
            if refuse_next(jobs, metrics) {
                continue;
            }
            return;
        };
        // Start requests while they start; wait for one only when idle.
        while !quit.load(Ordering::Relaxed) {
            let h = match held.take() {
                Some(h) => {
                    metrics.waiting.fetch_sub(1, Ordering::Relaxed);
                    h
                }
                None => {
                    let got = if b.idle() {
                        match jobs.recv_timeout(Duration::from_millis(200)) {
                            Ok(j) => Some(j),
                            Err(RecvTimeoutError::Timeout) => None,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    } else {
                        jobs.try_recv().ok()
                    };
                    let Some(job) = got else { break };
                    metrics.waiting.fetch_sub(1, Ordering::Relaxed);
                    let shape = (engine, opts.threads, b.slot_ctx(), b.caches_prompts());
                    match prepare(job, served, shape, metrics) {
                        Some(h) => h,
                        None => continue,
                    }
                }
            };
            if let Some(h) = begin(b, h, metrics) {
                // Still waiting: counted in the queue's depth.
                metrics.waiting.fetch_add(1, Ordering::Relaxed);
                held = Some(h);
                break;
            }
        }
        if !b.idle() {
            if let Err(e) = b.step() {
                tracing::error!(error = %crate::report(&e), "a batched decode failed");
            }
        }
    }
}

/// Answers running at a stop get `QUIT_GRACE` from the first look
/// (`quit_at`) to finish, then are cut (finish_reason `stop`): an answer
/// without max_tokens may run to the end of the context, past systemd's
/// stop timeout.
fn cut_after_grace(batcher: Option<&mut Batcher<'_, '_>>, quit_at: &mut Option<Instant>) {
    let Some(b) = batcher.filter(|b| !b.idle()) else {
        return;
    };
    if quit_at.get_or_insert_with(Instant::now).elapsed() > QUIT_GRACE {
        tracing::info!(running = b.running(), "stopping: running answers cut");
        b.cancel_all();
    }
}

/// The worker's batcher with `speed`'s drafting and prompt cache; `None`
/// (logged) when its context cannot be made.
fn batcher<'m>(
    engine: &'m Engine,
    speed: super::Speedups<'m>,
    opts: &SessionOptions,
    slots: (usize, bool),
) -> Option<Batcher<'m, 'm>> {
    match Batcher::new(engine, opts, slots) {
        Ok(mut b) => {
            if let Some(draft) = speed.draft {
                set_draft(&mut b, engine, draft, opts);
            }
            b.set_prompt_cache(speed.prompt_cache);
            Some(b)
        }
        Err(e) => {
            tracing::error!(error = %crate::report(&e), "cannot create the HTTP context");
            None
        }
    }
}

/// Draft on `b`'s slots as `serve` asked: `model`'s contexts (one per slot,
/// each the slot's size), or prompt lookup. A draft context that cannot be
/// made leaves drafting off, with a warning: it costs speed, not answers.
fn set_draft<'m>(
    b: &mut Batcher<'m, '_>,
    engine: &'m Engine,
    (model, dopts): (Option<&'m Engine>, DraftOptions),
    opts: &SessionOptions,
) {
    let sopts = SessionOptions {
        ctx_tokens: b.slot_ctx() as u32,
        ..opts.clone()
    };
    let mut make = || Drafter::new(engine, model, &sopts);
    match b.set_draft(Some((&mut make, dopts))) {
        Ok(()) => tracing::info!(drafter = ?b.draft_name(), "HTTP answers drafted"),
        Err(e) => tracing::warn!(error = %crate::report(&e), "HTTP answers are not drafted"),
    }
}

/// Without a context: the next job (if one comes within 200 ms) gets the
/// error. False when the queue's senders are gone.
fn refuse_next(jobs: &Receiver<Job>, metrics: &Metrics) -> bool {
    match jobs.recv_timeout(Duration::from_millis(200)) {
        Ok(job) => {
            metrics.waiting.fetch_sub(1, Ordering::Relaxed);
            let why = "the model's context could not be created";
            end(&job, metrics, Piece::Error(why.into()));
            true
        }
        Err(RecvTimeoutError::Timeout) => true,
        Err(RecvTimeoutError::Disconnected) => false,
    }
}

/// A request ready to start, with what it needs besides.
struct Held<'s> {
    req: Box<Request<'s>>,
    adapter: Option<(AdapterId, f32)>,
    out: tokio::sync::mpsc::UnboundedSender<Piece>,
}

/// Send a job's last piece and count it out of the queue's bound.
fn end(job: &Job, metrics: &Metrics, last: Piece) {
    let _ = job.out.send(last);
    metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// Turn `job` into a request (or answer it at once: embeddings, an error,
/// a client already gone).
fn prepare<'s>(
    job: Job,
    served: &Served,
    (engine, threads, n_ctx, cached): (&Engine, i32, usize, bool),
    metrics: &'s Metrics,
) -> Option<Held<'s>> {
    if job.out.is_closed() {
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    let adapter = match served.pick(&job.model) {
        Ok(a) => a,
        Err(e) => {
            end(&job, metrics, Piece::Error(e.message));
            return None;
        }
    };
    if let Work::Embed { inputs } = &job.work {
        let piece = embed(engine, inputs, (n_ctx as u32, threads), metrics);
        end(&job, metrics, piece);
        return None;
    }
    let reserve = job.params.n_predict.unwrap_or(256).min(n_ctx / 2);
    let tokens = match prompt(engine, &job.work, n_ctx.saturating_sub(reserve)) {
        Ok(t) => t,
        Err(e) => {
            end(&job, metrics, Piece::Error(crate::report(&e)));
            return None;
        }
    };
    let prefix = if cached {
        standing(engine, &job.work, &tokens)
    } else {
        0
    };
    Some(Held {
        req: Box::new(Request {
            tokens,
            prefix,
            params: job.params,
            sink: sink(job.out.clone(), metrics),
        }),
        adapter,
        out: job.out,
    })
}

/// Start a request on the batcher; it comes back when it must wait.
fn begin<'s>(b: &mut Batcher<'_, 's>, h: Held<'s>, metrics: &Metrics) -> Option<Held<'s>> {
    if h.out.is_closed() {
        // Its client left while it waited.
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        return None;
    }
    if h.adapter != b.adapter() {
        if !b.idle() {
            return Some(h);
        }
        // Swapped as `/lora use` does: the weights stay loaded, the caches
        // are emptied.
        if let Err(e) = b.set_adapter(h.adapter) {
            let _ = h.out.send(Piece::Error(crate::report(&e)));
            metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
    }
    match b.start(*h.req) {
        Ok(()) | Err(NotStarted::Refused) => None,
        Err(NotStarted::Wait(req)) => Some(Held { req, ..h }),
    }
}

/// How many of a chat's `tokens` its system prompt's standing prefix is
/// (`llm::standing_prefix`), for the prompt cache; 0 without one.
fn standing(engine: &Engine, work: &Work, tokens: &[llama_cpp_2::token::LlamaToken]) -> usize {
    let Work::Chat {
        system: Some(system),
        ..
    } = work
    else {
        return 0;
    };
    match crate::llm::standing_prefix(engine, system) {
        Ok(p) if tokens.starts_with(&p) => p.len(),
        _ => 0,
    }
}

/// The job's prompt as tokens: a chat through the model's template, text
/// as it is. A chat longer than `fit` tokens loses its oldest turns (the
/// system message stays) until it fits, as a console conversation does.
fn prompt(
    engine: &Engine,
    work: &Work,
    fit: usize,
) -> Result<Vec<llama_cpp_2::token::LlamaToken>, LlmError> {
    match work {
        Work::Chat {
            system,
            history,
            question,
        } => {
            let mut turns = &history[..];
            loop {
                let mut msgs = Vec::with_capacity(turns.len() + 2);
                if let Some(s) = system.as_ref().filter(|s| !s.trim().is_empty()) {
                    msgs.push(Message::new(Role::System, s.clone()));
                }
                msgs.extend(turns.iter().cloned());
                msgs.push(Message::new(Role::User, question.clone()));
                let tokens = engine.tokenize(&engine.render_chat(&msgs, true)?);
                if tokens.len() <= fit || turns.is_empty() {
                    return Ok(tokens);
                }
                // Drop the oldest exchange (a user turn and its answer).
                let n = if turns.len() >= 2 && turns[1].role == Role::Assistant {
                    2
                } else {
                    1
                };
                turns = &turns[n..];
                tracing::info!(
                    remaining_turns = turns.len(),
                    "HTTP chat cut to fit the slot"
                );
            }
        }
        Work::Text { prompt } => Ok(engine.tokenize(prompt)),
        Work::Embed { .. } => Err(LlmError::Param("embeddings have no prompt".into())),
    }
}

/// Where one answer's output goes: its client's channel, and the metrics
/// when it ends.
fn sink<'s>(
    out: tokio::sync::mpsc::UnboundedSender<Piece>,
    metrics: &'s Metrics,
) -> crate::llm::BatchSink<'s> {
    Box::new(move |o| match o {
        Out::Logprob(lp) => {
            // A client gone shows at the text's send, next.
            let _ = out.send(Piece::Logprob(lp));
            ControlFlow::Continue(())
        }
        Out::Text(t) => match out.send(Piece::Token(t.to_string())) {
            Ok(()) => ControlFlow::Continue(()),
            // The client is gone: stop now.
            Err(_) => ControlFlow::Break(()),
        },
        Out::Done(reply) => {
            let last = match reply {
                Ok(reply) => {
                    let st = &reply.stats;
                    metrics
                        .generated_tokens
                        .fetch_add(st.gen_tokens as u64, Ordering::Relaxed);
                    metrics
                        .generation_ms
                        .fetch_add(st.gen_ms as u64, Ordering::Relaxed);
                    metrics
                        .draft_tokens
                        .fetch_add(st.draft_tokens as u64, Ordering::Relaxed);
                    metrics
                        .draft_accepted
                        .fetch_add(st.draft_accepted as u64, Ordering::Relaxed);
                    if reply.finish == Finish::Cancelled {
                        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                    } else {
                        metrics.answered.fetch_add(1, Ordering::Relaxed);
                        metrics
                            .prompt_tokens
                            .fetch_add(st.prompt_tokens as u64, Ordering::Relaxed);
                    }
                    Piece::Done {
                        finish: reply.finish,
                        usage: super::api::Usage::new(
                            st.prompt_tokens,
                            st.gen_tokens,
                            st.cached_tokens,
                        ),
                    }
                }
                Err(e) => failed(&e),
            };
            let _ = out.send(last);
            metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            ControlFlow::Continue(())
        }
    })
}

/// An embeddings job: vectors from a context of their own, so the slots'
/// caches are kept.
fn embed(
    engine: &Engine,
    inputs: &[String],
    (max_tokens, threads): (u32, i32),
    metrics: &Metrics,
) -> Piece {
    match engine.embed(inputs, max_tokens, threads) {
        Ok(e) => {
            metrics
                .prompt_tokens
                .fetch_add(e.tokens as u64, Ordering::Relaxed);
            metrics.answered.fetch_add(1, Ordering::Relaxed);
            Piece::Embeddings {
                vectors: e.vectors,
                tokens: e.tokens,
            }
        }
        Err(e) => failed(&e),
    }
}

/// An answer's error as the client gets it: a 503 when an `--rpc` board
/// stopped answering (not the request's fault), else a 400.
fn failed(e: &crate::llm::LlmError) -> Piece {
    match e {
        crate::llm::LlmError::Rpc(_) => Piece::Unavailable(crate::report(e)),
        _ => Piece::Error(crate::report(e)),
    }
}
