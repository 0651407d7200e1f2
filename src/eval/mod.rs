//! `ferrite eval`: how well a model (with or without a LoRA adapter) answers
//! a set of held-out chats, scored against each chat's last assistant turn.
//!
//! Data flows JSONL (the fine-tune format: `{"messages":[..]}`, the last
//! message the assistant's reference answer) → greedy answers through the
//! same `Session` as `ask` → `metrics` (each computed as its reference
//! package computes it) → a `Report` of per-example and corpus scores. For
//! `accuracy` a second answer is held to the references' label set by a
//! grammar, so a classifier's answer is always one of its labels; the text
//! metrics always score the free answer.

pub mod metrics;

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::llm::{GenParams, Grammar, GrammarError, LlmError, Message, Role, Session};
use crate::progress::{Progress, Unit};

/// Most distinct references `accuracy` takes as a label set.
pub const MAX_LABELS: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{path}:{line}: {msg}")]
    Data {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: cannot read the evaluation data")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no examples in the file")]
    Empty { path: PathBuf },
    #[error("{0}")]
    Usage(String),
    #[error("{path}:{line}: cannot answer the example")]
    Answer {
        path: PathBuf,
        line: usize,
        source: LlmError,
    },
    #[error("the label grammar")]
    Grammar(#[from] GrammarError),
}

/// A score `ferrite eval` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// 1 when the answer equals the reference (whitespace collapsed).
    Exact,
    /// 1 when the answer contains the reference (case and spacing ignored).
    Contains,
    /// sacrebleu's BLEU, 0–100.
    Bleu,
    /// sacrebleu's chrF, 0–100.
    Chrf,
    /// rouge-score's ROUGE-L F-measure, 0–1.
    RougeL,
    /// Exact match with answers held to the references' labels.
    Accuracy,
    /// exp of the mean negative log-likelihood of the reference answers'
    /// tokens, teacher-forced after their prompts.
    Perplexity,
}

impl Metric {
    pub const ALL: [Metric; 7] = [
        Metric::Exact,
        Metric::Contains,
        Metric::Bleu,
        Metric::Chrf,
        Metric::RougeL,
        Metric::Accuracy,
        Metric::Perplexity,
    ];

    /// What `eval` scores unless told otherwise (`accuracy` changes how
    /// answers are made, so it is asked for by name).
    pub const DEFAULT: &'static str = "exact,contains,bleu,chrf,rouge-l,perplexity";

    pub fn name(self) -> &'static str {
        match self {
            Metric::Exact => "exact",
            Metric::Contains => "contains",
            Metric::Bleu => "bleu",
            Metric::Chrf => "chrf",
            Metric::RougeL => "rouge-l",
            Metric::Accuracy => "accuracy",
            Metric::Perplexity => "perplexity",
        }
    }

    /// Whether a larger value is better (all but perplexity).
    pub fn higher_is_better(self) -> bool {
        self != Metric::Perplexity
    }

    /// Parse a comma-separated list (`all` for every metric).
    pub fn parse_list(s: &str) -> Result<Vec<Metric>, EvalError> {
        let mut out = BTreeSet::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend(Metric::ALL);
                continue;
            }
            let m = Metric::ALL
                .into_iter()
                .find(|m| m.name() == part || (part == "rougeL" && *m == Metric::RougeL));
            match m {
                Some(m) => out.insert(m),
                None => {
                    return Err(EvalError::Usage(format!(
                        "unknown metric `{part}`: choose from {} or all",
                        Metric::ALL.map(Metric::name).join(",")
                    )))
                }
            };
        }
        if out.is_empty() {
            return Err(EvalError::Usage("no metrics given".into()));
        }
        Ok(out.into_iter().collect())
    }
}

/// One evaluation chat: the prompt turns and the reference answer.
#[derive(Debug, Clone)]
pub struct Example {
    /// 1-based line in the data file.
    pub line: usize,
    /// The turns before the reference; the last is the user's.
    pub prompt: Vec<Message>,
    pub reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChatLine {
    messages: Vec<Message>,
}

/// Read `path`: one chat per non-empty line, ending in an assistant turn
/// that follows a user turn.
///
/// Errors: `Read` for an unreadable file; `Data` with the line number for a
/// malformed line, and for a file without any example.
pub fn load_examples(path: &Path) -> Result<Vec<Example>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let err = |line, msg: &str| EvalError::Data {
        path: path.to_path_buf(),
        line,
        msg: msg.to_string(),
    };
    // A byte-order mark (Windows editors write one) is not part of line 1.
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        if l.trim().is_empty() {
            continue;
        }
        let c: ChatLine = serde_json::from_str(l).map_err(|e| {
            err(line, &format!("expected {{\"messages\":[{{\"role\":\"user\",\"content\":\"...\"}},{{\"role\":\"assistant\",\"content\":\"the reference answer\"}}]}} ({e})"))
        })?;
        let mut msgs = c.messages;
        let reference = match msgs.pop() {
            Some(m) if m.role == Role::Assistant && !m.content.trim().is_empty() => m.content,
            _ => {
                return Err(err(
                    line,
                    "the last message must be the assistant's reference answer, not empty",
                ))
            }
        };
        if msgs.last().map(|m| m.role) != Some(Role::User) {
            return Err(err(line, "the reference answer must follow a user message"));
        }
        out.push(Example {
            line,
            prompt: msgs,
            reference,
        });
    }
    if out.is_empty() {
        return Err(EvalError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(out)
}

/// How answers are made.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub metrics: Vec<Metric>,
    /// Tokens per answer at most.
    pub n_predict: usize,
}

/// One example's answer and scores.
#[derive(Debug, Clone, Serialize)]
pub struct ExampleScore {
    pub line: usize,
    /// The free greedy answer (the label-held one when `accuracy` is the
    /// only metric that reads answers).
    pub answer: String,
    /// With `accuracy`: the answer held to the label set, which `accuracy`
    /// scores (the text metrics score the free `answer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label_answer: Option<String>,
    pub reference: String,
    /// The metrics asked for, in `Metric` order (perplexity: this example's).
    pub scores: Vec<(Metric, f64)>,
    /// Reference tokens scored and their summed negative log-likelihood
    /// (nats), with `perplexity`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nll: Option<(usize, f64)>,
}

/// The whole evaluation.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Corpus scores, in `Metric` order.
    pub corpus: Vec<(Metric, f64)>,
    pub examples: Vec<ExampleScore>,
    /// The label set answers were held to (with `accuracy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    pub seconds: f64,
}

impl Report {
    pub fn get(&self, m: Metric) -> Option<f64> {
        self.corpus.iter().find(|(k, _)| *k == m).map(|&(_, v)| v)
    }
}

/// A GBNF grammar whose only sentences are `labels`.
fn label_grammar(labels: &[String]) -> Result<Grammar, EvalError> {
    let lit = |s: &str| serde_json::to_string(s).expect("a string serializes");
    let alts: Vec<String> = labels.iter().map(|l| lit(l)).collect();
    Ok(Grammar::from_gbnf(
        &format!("root ::= {}\n", alts.join(" | ")),
        "the label set",
    )?)
}

/// The distinct references, trimmed, as a label set for `accuracy`.
///
/// Errors: `Usage` when there are more than `MAX_LABELS`.
pub fn label_set(examples: &[Example]) -> Result<Vec<String>, EvalError> {
    let set: BTreeSet<String> = examples
        .iter()
        .map(|e| e.reference.trim().to_string())
        .collect();
    if set.len() > MAX_LABELS {
        return Err(EvalError::Usage(format!(
            "accuracy is for classification: the references hold {} different answers, more than {MAX_LABELS} labels",
            set.len()
        )));
    }
    Ok(set.into_iter().collect())
}

/// Answer every example greedily with `sess` (its adapter as set) and score
/// the answers. `path` names the data in errors.
///
/// Errors: `Answer` (with the example's line) when llama.cpp fails or an
/// example does not fit the context; `Usage`/`Grammar` for the label set.
pub fn evaluate(
    sess: &mut Session<'_>,
    path: &Path,
    examples: &[Example],
    opts: &EvalOptions,
    progress: &dyn Progress,
) -> Result<Report, EvalError> {
    let t0 = Instant::now();
    let labels = if opts.metrics.contains(&Metric::Accuracy) {
        Some(label_set(examples)?)
    } else {
        None
    };
    let mut free = GenParams::greedy();
    free.n_predict = Some(opts.n_predict);
    let held = match &labels {
        Some(l) => Some(GenParams {
            grammar: Some(label_grammar(l)?),
            ..free.clone()
        }),
        None => None,
    };
    // The text metrics score what the model says unprompted: answers held
    // to the labels would flatter them (a second, free answer per example).
    let reads_text = opts.metrics.iter().any(|m| {
        matches!(
            m,
            Metric::Exact | Metric::Contains | Metric::Bleu | Metric::Chrf | Metric::RougeL
        )
    });
    let free = (reads_text || held.is_none()).then_some(&free);
    progress.start("eval", examples.len() as u64, Unit::Steps);
    let mut scored = Vec::with_capacity(examples.len());
    for ex in examples {
        let at = |source| EvalError::Answer {
            path: path.to_path_buf(),
            line: ex.line,
            source,
        };
        let s = score_example(sess, ex, opts, (free, held.as_ref())).map_err(at)?;
        scored.push(s);
        progress.advance(1);
    }
    progress.finish();
    Ok(Report {
        corpus: corpus_scores(&opts.metrics, &scored),
        examples: scored,
        labels,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The greedy answer to `ex` under `params`, from its own conversation.
fn answer(sess: &mut Session<'_>, ex: &Example, params: &GenParams) -> Result<String, LlmError> {
    let (last, before) = ex.prompt.split_last().expect("a user message");
    sess.set_system(None);
    sess.set_history(before.to_vec());
    let reply = sess.ask(&last.content, params, &mut |_| ControlFlow::Continue(()))?;
    Ok(reply.text.trim().to_string())
}

/// Score one example: its free answer (`free`) for the text metrics, its
/// label-held answer (`held`) for `accuracy`.
fn score_example(
    sess: &mut Session<'_>,
    ex: &Example,
    opts: &EvalOptions,
    (free, held): (Option<&GenParams>, Option<&GenParams>),
) -> Result<ExampleScore, LlmError> {
    let label_answer = held.map(|p| answer(sess, ex, p)).transpose()?;
    let answer = match free {
        Some(p) => answer(sess, ex, p)?,
        None => label_answer.clone().unwrap_or_default(),
    };
    let reference = ex.reference.as_str();
    let mut nll = None;
    let mut scores = Vec::new();
    for &m in &opts.metrics {
        let v = match m {
            Metric::Exact => metrics::exact(&answer, reference),
            Metric::Accuracy => {
                metrics::exact(label_answer.as_deref().unwrap_or(&answer), reference)
            }
            Metric::Contains => metrics::contains(&answer, reference),
            Metric::Bleu => metrics::bleu_score(&metrics::bleu_stats(&answer, reference), true),
            Metric::Chrf => metrics::chrf_score(&metrics::chrf_stats(&answer, reference)),
            Metric::RougeL => metrics::rouge_l(&answer, reference),
            Metric::Perplexity => {
                let engine = sess.engine();
                let prompt = engine.tokenize(&engine.render_chat(&ex.prompt, true)?);
                let forced = engine.tokenize_continuation(reference);
                let lp = sess.forced_logprobs(&prompt, &forced)?;
                let sum: f64 = -lp.iter().sum::<f64>();
                nll = Some((lp.len(), sum));
                (sum / lp.len().max(1) as f64).exp()
            }
        };
        scores.push((m, v));
    }
    Ok(ExampleScore {
        line: ex.line,
        answer,
        label_answer,
        reference: ex.reference.clone(),
        scores,
        nll,
    })
}

/// Corpus scores: BLEU and chrF from summed statistics, perplexity from
/// summed log-likelihoods, the others as means over examples.
fn corpus_scores(wanted: &[Metric], scored: &[ExampleScore]) -> Vec<(Metric, f64)> {
    let n = scored.len().max(1) as f64;
    wanted
        .iter()
        .map(|&m| {
            let v = match m {
                Metric::Bleu => {
                    let mut s = metrics::BleuStats::default();
                    for e in scored {
                        s += metrics::bleu_stats(&e.answer, &e.reference);
                    }
                    metrics::bleu_score(&s, false)
                }
                Metric::Chrf => {
                    let mut s = metrics::ChrfStats::default();
                    for e in scored {
                        s += metrics::chrf_stats(&e.answer, &e.reference);
                    }
                    metrics::chrf_score(&s)
                }
                Metric::Perplexity => {
                    let (k, sum) = scored
                        .iter()
                        .filter_map(|e| e.nll)
                        .fold((0usize, 0.0), |(k, s), (k2, s2)| (k + k2, s + s2));
                    (sum / k.max(1) as f64).exp()
                }
                _ => {
                    let sum: f64 = scored
                        .iter()
                        .filter_map(|e| e.scores.iter().find(|(k, _)| *k == m))
                        .map(|&(_, v)| v)
                        .sum();
                    sum / n
                }
            };
            (m, v)
        })
        .collect()
}
