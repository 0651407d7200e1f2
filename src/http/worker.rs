//! The one thread that runs the model for HTTP clients: jobs arrive on a
//! bounded queue (full: the request gets a 503 at once, the policy
//! `routes` states) and are answered one at a time, first come first
//! served, on one session whose KV cache carries over, so a client resending
//! its growing conversation pays only for the new turn.
//!
//! A job names its adapter (`MODEL:ADAPTER`); when it differs from the
//! last job's, the session swaps it before answering.
//!
//! Each answer streams back as `Piece`s on the job's own channel; when the
//! client goes away its receiver is dropped, the next token's send fails,
//! and the generation stops within that token.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use tokio::sync::mpsc::Sender;

use super::metrics::Metrics;
use crate::llm::{AdapterId, Engine, Finish, GenParams, Message, Session, SessionOptions};

/// One request, checked and ready to run.
pub struct Job {
    pub work: Work,
    pub params: GenParams,
    /// The adapter to answer with (none: the base model).
    pub adapter: Option<(AdapterId, f32)>,
    pub out: Sender<Piece>,
}

/// What to generate from.
pub enum Work {
    /// A conversation through the chat template.
    Chat {
        system: Option<String>,
        /// The turns before the question.
        history: Vec<Message>,
        question: String,
    },
    /// Raw text, continued as is.
    Text { prompt: String },
}

/// What a job sends back.
#[derive(Debug)]
pub enum Piece {
    Token(String),
    Done {
        finish: Finish,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Error(String),
}

/// Run jobs until the queue's senders are gone, counting in `metrics`
/// (`waiting`: jobs queued; `in_flight`: jobs accepted and not finished,
/// which the handlers hold to the queue's bound).
pub fn run(engine: &Engine, opts: SessionOptions, jobs: Receiver<Job>, metrics: &Metrics) {
    let mut session = match engine.session(opts) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %crate::report(&e), "cannot create the HTTP session");
            for job in jobs {
                metrics.waiting.fetch_sub(1, Ordering::Relaxed);
                let _ = job.out.blocking_send(Piece::Error(crate::report(&e)));
                metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
            return;
        }
    };
    for job in jobs {
        metrics.waiting.fetch_sub(1, Ordering::Relaxed);
        if !job.out.is_closed() {
            answer(&mut session, job, metrics);
        }
        metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One job, start to finish: its adapter, its answer streamed, the counts.
fn answer(session: &mut Session<'_>, job: Job, metrics: &Metrics) {
    let active = session.adapter().map(|a| (a.id, a.scale));
    if job.adapter != active {
        // Swapped as `/lora use` does: the weights stay loaded, the KV
        // cache is emptied.
        if let Err(e) = session.set_adapter(job.adapter) {
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
    let reply = match job.work {
        Work::Chat {
            system,
            history,
            question,
        } => {
            session.set_system(system);
            session.set_history(history);
            session.ask(&question, &job.params, &mut sink)
        }
        Work::Text { prompt } => session.complete(&prompt, &job.params, &mut sink),
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
