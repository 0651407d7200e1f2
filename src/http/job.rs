//! A request as the handlers hand it to the model's worker (`Job`: what to
//! generate from, the sampling values, the model it names) and what comes
//! back on its own channel (`Piece`s: text as it is written, then the
//! finish and token counts, or an error).

use tokio::sync::mpsc::UnboundedSender;

use crate::llm::{Finish, GenParams, Message, TokenLogprob};

/// One request, checked and ready to run.
pub struct Job {
    pub work: Work,
    pub params: GenParams,
    /// The model it names (`MODEL` or `MODEL:ADAPTER`), resolved when it
    /// runs: the console may have switched the model since it was queued.
    pub model: String,
    /// Unbounded (an answer is bounded by its max_tokens), so the worker
    /// never waits on a client that stopped reading while other answers
    /// run.
    pub out: UnboundedSender<Piece>,
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
    /// One embedding per input (the base model's; `params` unused).
    Embed { inputs: Vec<String> },
}

/// What a job sends back.
#[derive(Debug)]
pub enum Piece {
    /// A token's log probability, sent just before its text.
    Logprob(TokenLogprob),
    Token(String),
    Done {
        finish: Finish,
        usage: super::api::Usage,
    },
    /// An `Embed` job's answer: unit vectors in input order, tokens read.
    Embeddings {
        vectors: Vec<Vec<f32>>,
        tokens: usize,
    },
    Error(String),
    /// The server could not answer: an `--rpc` board holding some of the
    /// layers stopped answering (a 503; the model is being loaded again).
    Unavailable(String),
}
