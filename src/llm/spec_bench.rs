//! `ferrite bench --draft/--lookup`: speculative decoding's speed on real
//! prompts, beside plain decoding of the same prompts on the same model.
//!
//! llama-bench's random tokens cannot be drafted (no draft model guesses
//! noise), so this bench generates answers as `ask` does: greedy, chat
//! template applied, a fresh session (and drafter) per run so no run reuses
//! another's cache. Plain and drafted runs alternate, so drift in the
//! machine's speed hits both alike. Generation speed is tokens over the time
//! after the first token (what `--stats` calls `gen`, and what
//! llama-speculative prints as `decoded N tokens ... speed`), so the draft
//! model's share of the work, its prompt included, is counted in.

use std::ops::ControlFlow;

use serde::Serialize;

use super::context::SessionOptions;
use super::speculative::{DraftOptions, Drafter};
use super::{Engine, GenParams, LlmError};

/// The prompts `benches/speculative.py` also uses: code (a draft model's
/// best case), prose (its worst), and an edit that repeats its input
/// (prompt lookup's best case).
pub const SPEC_PROMPTS: [(&str, &str); 3] = [
    (
        "code",
        "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring and three doctests.",
    ),
    (
        "prose",
        "Explain in a few paragraphs why the sky is blue, for a curious twelve-year-old.",
    ),
    (
        "edit",
        "Add type hints to this function and change nothing else:\ndef merge(a, b):\n    out = []\n    i = j = 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n            out.append(b[j]); j += 1\n    out.extend(a[i:]); out.extend(b[j:])\n    return out",
    ),
];

/// What to run: each prompt `reps` times plain and `reps` times drafted,
/// after one warm-up of each.
#[derive(Debug, Clone)]
pub struct SpecBenchOptions {
    /// Most tokens per answer (`-n`).
    pub n_gen: usize,
    pub reps: usize,
    /// (name, question) pairs.
    pub prompts: Vec<(String, String)>,
    pub draft: DraftOptions,
}

/// One prompt's row: plain and drafted generation speed, in tokens per
/// second (mean and sample standard deviation over the repetitions), and
/// the draft tokens proposed and kept over all drafted runs.
#[derive(Debug, Clone, Serialize)]
pub struct SpecResult {
    pub model_filename: String,
    pub model_type: String,
    /// `draft model NAME` or `prompt lookup`.
    pub drafter: String,
    pub n_threads: i32,
    pub n_draft_max: usize,
    /// `spec-` and the prompt's name.
    pub test: String,
    /// Tokens generated per answer (the plain answer's count).
    pub n_gen: usize,
    pub plain_avg_ts: f64,
    pub plain_stddev_ts: f64,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    /// `avg_ts / plain_avg_ts`.
    pub speedup: f64,
    pub n_drafted: usize,
    pub n_accept: usize,
    pub plain_samples_ts: Vec<f64>,
    pub samples_ts: Vec<f64>,
}

impl SpecResult {
    /// The table's header, in llama-bench's markdown style.
    pub fn markdown_header() -> String {
        format!(
            "| {:<12} | {:<32} | {:>5} | {:>16} | {:>16} | {:>7} | {:>15} |\n|{}|{}|{}:|{}:|{}:|{}:|{}:|",
            "test", "drafter", "n_gen", "plain t/s", "drafted t/s", "speedup", "accepted",
            "-".repeat(14), "-".repeat(34), "-".repeat(6), "-".repeat(17), "-".repeat(17),
            "-".repeat(8), "-".repeat(16)
        )
    }

    pub fn markdown_row(&self) -> String {
        let rate = if self.n_drafted > 0 {
            100.0 * self.n_accept as f64 / self.n_drafted as f64
        } else {
            0.0
        };
        format!(
            "| {:<12} | {:<32} | {:>5} | {:>16} | {:>16} | {:>6.2}x | {:>15} |",
            self.test,
            self.drafter,
            self.n_gen,
            format!("{:.2} ± {:.2}", self.plain_avg_ts, self.plain_stddev_ts),
            format!("{:.2} ± {:.2}", self.avg_ts, self.stddev_ts),
            self.speedup,
            format!("{}/{} {:.0}%", self.n_accept, self.n_drafted, rate),
        )
    }
}

/// One answer's generated tokens, their tokens per second, and the draft
/// counts.
struct Run {
    tokens: usize,
    ts: f64,
    drafted: usize,
    accepted: usize,
}

fn answer(
    engine: &Engine,
    sopts: &SessionOptions,
    draft: Option<(Drafter<'_>, DraftOptions)>,
    question: &str,
    n_gen: usize,
) -> Result<Run, LlmError> {
    let mut sess = engine.session(sopts.clone())?;
    sess.set_draft(draft)?;
    let params = GenParams {
        n_predict: Some(n_gen),
        ..GenParams::greedy()
    };
    let reply = sess.ask(question, &params, &mut |_| ControlFlow::Continue(()))?;
    let s = &reply.stats;
    // The first token comes out of the prompt's decode; `gen` is the rest.
    let ts = if s.gen_ms > 0.0 && s.gen_tokens > 1 {
        (s.gen_tokens - 1) as f64 * 1000.0 / s.gen_ms
    } else {
        0.0
    };
    Ok(Run {
        tokens: s.gen_tokens,
        ts,
        drafted: s.draft_tokens,
        accepted: s.draft_accepted,
    })
}

/// Run every prompt plain and drafted, alternating, `progress` called
/// before each run. `drafter` makes a fresh drafter for each drafted run
/// (a draft model's context starts empty, as the target's does).
///
/// # Errors
/// `LlmError::Param` for zero repetitions or tokens, or no prompts; a
/// drafter that cannot be made, or a decode that fails.
pub fn run_spec_bench<'m>(
    engine: &'m Engine,
    sopts: &SessionOptions,
    drafter: &mut dyn FnMut() -> Result<Drafter<'m>, LlmError>,
    opts: &SpecBenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<SpecResult>, LlmError> {
    if opts.reps == 0 || opts.n_gen == 0 || opts.prompts.is_empty() {
        return Err(LlmError::Param(
            "the speculative bench needs at least one repetition, one token and one prompt".into(),
        ));
    }
    opts.draft.validate()?;
    let mut results = Vec::new();
    for (name, question) in &opts.prompts {
        let (mut plain, mut spec) = (Vec::new(), Vec::new());
        let mut described = String::new();
        for r in 0..=opts.reps {
            let label = if r == 0 {
                "warm-up".to_string()
            } else {
                format!("run {r}/{}", opts.reps)
            };
            progress(&format!("spec-{name}: {label}, plain"));
            let p = answer(engine, sopts, None, question, opts.n_gen)?;
            progress(&format!("spec-{name}: {label}, drafted"));
            let d = drafter()?;
            described = d.describe();
            let s = answer(engine, sopts, Some((d, opts.draft)), question, opts.n_gen)?;
            if r > 0 {
                plain.push(p);
                spec.push(s);
            }
        }
        results.push(row(engine, sopts, opts, name, described, &plain, &spec));
    }
    Ok(results)
}

fn row(
    engine: &Engine,
    sopts: &SessionOptions,
    opts: &SpecBenchOptions,
    name: &str,
    drafter: String,
    plain: &[Run],
    spec: &[Run],
) -> SpecResult {
    let plain_ts: Vec<f64> = plain.iter().map(|r| r.ts).collect();
    let spec_ts: Vec<f64> = spec.iter().map(|r| r.ts).collect();
    let (plain_avg, plain_std) = super::bench::mean_std(&plain_ts);
    let (avg, std) = super::bench::mean_std(&spec_ts);
    SpecResult {
        model_filename: engine.path().display().to_string(),
        model_type: engine.description(),
        drafter,
        n_threads: sopts.threads,
        n_draft_max: opts.draft.max,
        test: format!("spec-{name}"),
        n_gen: plain.first().map_or(0, |r| r.tokens),
        plain_avg_ts: plain_avg,
        plain_stddev_ts: plain_std,
        avg_ts: avg,
        stddev_ts: std,
        speedup: if plain_avg > 0.0 {
            avg / plain_avg
        } else {
            0.0
        },
        n_drafted: spec.iter().map(|r| r.drafted).sum(),
        n_accept: spec.iter().map(|r| r.accepted).sum(),
        plain_samples_ts: plain_ts,
        samples_ts: spec_ts,
    }
}
