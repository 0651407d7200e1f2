//! The one thread that runs the model for HTTP clients: jobs arrive on a
//! bounded queue (full: the request gets a 503 at once, the policy
//! `routes` states) and are answered one at a time, first come first
//! served, on one session whose KV cache carries over, so a client resending
//! its growing conversation pays only for the new turn.
//!
//! Each answer streams back as `Piece`s on the job's own channel; when the
//! client goes away its receiver is dropped, the next token's send fails,
//! and the generation stops within that token.

use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;

use tokio::sync::mpsc::Sender;

use super::metrics::Metrics;
use crate::llm::{Engine, Finish, GenParams, Message, SessionOptions};

/// One chat request, checked and ready to run.
pub struct Job {
    pub system: Option<String>,
    /// The turns before the question.
    pub history: Vec<Message>,
    pub question: String,
    pub params: GenParams,
    pub out: Sender<Piece>,
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
/// (its `waiting` counts queued jobs, for the busy message too).
pub fn run(engine: &Engine, opts: SessionOptions, jobs: Receiver<Job>, metrics: &Metrics) {
    let mut session = match engine.session(opts) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %crate::report(&e), "cannot create the HTTP session");
            for job in jobs {
                metrics.waiting.fetch_sub(1, Ordering::Relaxed);
                let _ = job.out.blocking_send(Piece::Error(crate::report(&e)));
            }
            return;
        }
    };
    for job in jobs {
        metrics.waiting.fetch_sub(1, Ordering::Relaxed);
        if job.out.is_closed() {
            continue;
        }
        session.set_system(job.system);
        session.set_history(job.history);
        let out = job.out.clone();
        let mut sink = |piece: &str| match out.blocking_send(Piece::Token(piece.to_string())) {
            Ok(()) => ControlFlow::Continue(()),
            // The client is gone: stop now.
            Err(_) => ControlFlow::Break(()),
        };
        let last = match session.ask(&job.question, &job.params, &mut sink) {
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
}
