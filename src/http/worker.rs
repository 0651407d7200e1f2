//! The one thread that runs the model for HTTP clients: jobs arrive on a
//! bounded queue (full: the request gets a 503 at once, the policy
//! `routes` states) and are answered one at a time, first come first
//! served, on one session whose KV cache carries over, so a client resending
//! its growing conversation pays only for the new turn.
//!
//! A job names its model (`MODEL` or `MODEL:ADAPTER`), resolved when it
//! runs; when its adapter differs from the last job's, the session swaps it
//! before answering. Beside a console the worker stops between jobs when
//! the console needs the engine to itself (`/model`, loading an adapter)
//! and a new one starts on the engine that follows; jobs wait meanwhile.
//!
//! Each answer streams back as `Piece`s on the job's own channel; when the
//! client goes away its receiver is dropped, the next token's send fails,
//! and the generation stops within that token.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use super::job::{Job, Piece, Work};
use super::metrics::Metrics;
use super::state::Served;
use crate::llm::{AdapterId, Engine, Finish, Session, SessionOptions};

/// Run jobs on `engine` until `quit` is set or the queue's senders are
/// gone, counting in `metrics` (`waiting`: jobs queued; `in_flight`: jobs
/// accepted and not finished, which the handlers hold to the queue's
/// bound). `quit` is checked between jobs, at least every 200 ms.
pub fn run(
    engine: &Engine,
    opts: SessionOptions,
    jobs: &Receiver<Job>,
    served: &Served,
    metrics: &Metrics,
    quit: &AtomicBool,
) {
    let mut session = engine.session(opts);
    if let Err(e) = &session {
        tracing::error!(error = %crate::report(e), "cannot create the HTTP session");
    }
    while !quit.load(Ordering::Relaxed) {
        let job = match jobs.recv_timeout(Duration::from_millis(200)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        metrics.waiting.fetch_sub(1, Ordering::Relaxed);
        if !job.out.is_closed() {
            match (&mut session, served.pick(&job.model)) {
                (Ok(session), Ok(adapter)) => answer(session, job, adapter, metrics),
                (Err(e), _) => {
                    let _ = job.out.blocking_send(Piece::Error(crate::report(e)));
                }
                (_, Err(e)) => {
                    let _ = job.out.blocking_send(Piece::Error(e.message));
                }
            }
        }
        metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One job, start to finish: its adapter, its answer streamed, the counts.
fn answer(
    session: &mut Session<'_>,
    job: Job,
    adapter: Option<(AdapterId, f32)>,
    metrics: &Metrics,
) {
    let active = session.adapter().map(|a| (a.id, a.scale));
    if adapter != active {
        // Swapped as `/lora use` does: the weights stay loaded, the KV
        // cache is emptied.
        if let Err(e) = session.set_adapter(adapter) {
            let _ = job.out.blocking_send(Piece::Error(crate::report(&e)));
            return;
        }
    }
    let out = job.out.clone();
    let mut sink = |piece: &str| match out.blocking_send(Piece::Token(piece.to_string())) {
        Ok(()) => ControlFlow::Continue(()),
        // The client is gone: stop now.
        Err(_) => ControlFlow::Break(()),
    };
    let lp_out = job.out.clone();
    // A failed send here is a client gone, which the sink's send sees next.
    let mut probe = |lp| drop(lp_out.blocking_send(Piece::Logprob(lp)));
    let reply = match job.work {
        Work::Chat {
            system,
            history,
            question,
        } => {
            session.set_system(system);
            session.set_history(history);
            session.ask_probed(&question, &job.params, &mut sink, Some(&mut probe))
        }
        Work::Text { prompt } => {
            session.complete_probed(&prompt, &job.params, &mut sink, Some(&mut probe))
        }
        Work::Embed { inputs } => {
            let limits = (session.n_ctx(), session.threads());
            let _ = job
                .out
                .blocking_send(embed(session.engine(), &inputs, limits, metrics));
            return;
        }
    };
    let last = match reply {
        Ok(reply) => {
            let st = &reply.stats;
            metrics
                .generated_tokens
                .fetch_add(st.gen_tokens as u64, Ordering::Relaxed);
            metrics
                .generation_ms
                .fetch_add(st.gen_ms as u64, Ordering::Relaxed);
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
                prompt_tokens: st.prompt_tokens,
                completion_tokens: st.gen_tokens,
            }
        }
        Err(e) => Piece::Error(crate::report(&e)),
    };
    let _ = job.out.blocking_send(last);
}

/// An embeddings job: vectors from a context of their own, so the
/// session's KV cache (a client's conversation) is kept.
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
        Err(e) => Piece::Error(crate::report(&e)),
    }
}
