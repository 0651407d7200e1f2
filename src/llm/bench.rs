//! `ferrite bench`: prompt-processing and generation speed measured exactly as
//! llama.cpp's `llama-bench` measures it (random tokens after BOS, one warm-up
//! run, the cache cleared before each repetition, `samples_ts` = tokens per
//! second of each repetition), printed with its columns and JSON field names so
//! the two tools' outputs can be read side by side and compared by one script.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::token::LlamaToken;
use serde::Serialize;

use super::context::{context_params, SessionOptions};
use super::{Engine, LlmError};
use crate::board::KvType;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub threads: i32,
    pub reps: usize,
    /// llama-bench's defaults: 2048 and 512.
    pub n_batch: u32,
    pub n_ubatch: u32,
    /// KV cache types, K and V (llama-bench's `-ctk`, `-ctv`).
    pub kv: (KvType, KvType),
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            n_prompt: 512,
            n_gen: 128,
            threads: super::default_threads(),
            reps: 5,
            n_batch: 2048,
            n_ubatch: 512,
            kv: (KvType::F16, KvType::F16),
        }
    }
}

/// One test (`pp512` or `tg128`), with llama-bench's JSON field names.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub model_filename: String,
    pub model_type: String,
    pub model_size: u64,
    pub model_n_params: u64,
    pub backends: String,
    pub n_batch: u32,
    pub n_ubatch: u32,
    pub n_threads: i32,
    /// KV cache types as llama-bench's JSON names them (`f16`, `q8_0`).
    pub type_k: String,
    pub type_v: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub avg_ns: u64,
    pub stddev_ns: u64,
    pub avg_ts: f64,
    pub stddev_ts: f64,
    pub samples_ns: Vec<u64>,
    pub samples_ts: Vec<f64>,
}

impl BenchResult {
    /// llama-bench's `test` column.
    pub fn test_name(&self) -> String {
        if self.n_prompt > 0 {
            format!("pp{}", self.n_prompt)
        } else {
            format!("tg{}", self.n_gen)
        }
    }

    /// One markdown row in llama-bench's layout.
    pub fn markdown_row(&self) -> String {
        format!(
            "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |",
            self.model_type,
            format!("{:.2} MiB", self.model_size as f64 / (1024.0 * 1024.0)),
            format_params(self.model_n_params),
            self.backends,
            self.n_threads,
            self.test_name(),
            format!("{:.2} ± {:.2}", self.avg_ts, self.stddev_ts)
        )
    }

    pub fn markdown_header() -> String {
        format!(
            "| {:<30} | {:>10} | {:>10} | {:<10} | {:>7} | {:>15} | {:>20} |\n| {} | {}: | {}: | {} | {}: | {}: | {}: |",
            "model", "size", "params", "backend", "threads", "test", "t/s",
            "-".repeat(30), "-".repeat(9), "-".repeat(9), "-".repeat(10), "-".repeat(6), "-".repeat(14), "-".repeat(19)
        )
    }
}

fn format_params(n: u64) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}

/// llama-bench draws its tokens with C's `rand()`; any uniform draw measures
/// the same thing. A small LCG keeps this dependency-free and repeatable.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: i32) -> LlamaToken {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        LlamaToken(((self.0 >> 33) % n as u64) as i32)
    }
}

fn decode(
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch,
    engine: &Engine,
) -> Result<(), LlmError> {
    ctx.decode(batch).map_err(LlmError::from)?;
    engine.check_remote(ctx)
}

fn test_prompt(
    engine: &Engine,
    ctx: &mut LlamaContext<'_>,
    rng: &mut Lcg,
    n_prompt: usize,
    n_batch: usize,
) -> Result<(), LlmError> {
    let vocab = engine.model.vocab();
    let n_vocab = engine.model.n_vocab();
    let mut batch = LlamaBatch::new(n_batch, 1);
    let mut done = 0;
    while done < n_prompt {
        let n = (n_prompt - done).min(n_batch);
        batch.clear();
        for i in 0..n {
            let tok = if done == 0 && i == 0 && vocab.should_add_bos() {
                vocab.bos()
            } else {
                rng.next(n_vocab)
            };
            batch
                .add(tok, (done + i) as i32, &[0], i + 1 == n)
                .map_err(LlmError::from)?;
        }
        decode(ctx, &mut batch, engine)?;
        done += n;
    }
    ctx.synchronize();
    Ok(())
}

fn test_gen(
    engine: &Engine,
    ctx: &mut LlamaContext<'_>,
    rng: &mut Lcg,
    n_gen: usize,
) -> Result<(), LlmError> {
    let vocab = engine.model.vocab();
    let n_vocab = engine.model.n_vocab();
    let mut tok = if vocab.should_add_bos() {
        vocab.bos()
    } else {
        rng.next(n_vocab)
    };
    let start = ctx.kv_cache_seq_pos_max(0) + 1;
    let mut batch = LlamaBatch::new(1, 1);
    for pos in (start..).take(n_gen) {
        batch.clear();
        batch.add(tok, pos, &[0], true).map_err(LlmError::from)?;
        decode(ctx, &mut batch, engine)?;
        ctx.synchronize();
        tok = rng.next(n_vocab);
    }
    Ok(())
}

pub(super) fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Run the pp test (if `n_prompt > 0`) and the tg test (if `n_gen > 0`),
/// calling `progress` before each repetition.
pub fn run_bench(
    engine: &Engine,
    opts: &BenchOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<BenchResult>, LlmError> {
    let train = engine.n_ctx_train() as usize;
    if opts.reps == 0 || opts.threads < 1 || opts.n_batch == 0 || opts.n_ubatch == 0 {
        return Err(LlmError::Param(
            "repetitions, threads and batch sizes must be at least 1".into(),
        ));
    }
    if train > 0 && opts.n_prompt.max(opts.n_gen) > train {
        return Err(LlmError::Param(format!(
            "a test of {} tokens is more than the model's trained context of {train}",
            opts.n_prompt.max(opts.n_gen)
        )));
    }
    let mut tests = Vec::new();
    if opts.n_prompt > 0 {
        tests.push((opts.n_prompt, 0));
    }
    if opts.n_gen > 0 {
        tests.push((0, opts.n_gen));
    }
    let mut rng = Lcg(0x5eed);
    tests
        .into_iter()
        .map(|(n_prompt, n_gen)| {
            let samples_ns = time_test(engine, opts, &mut rng, (n_prompt, n_gen), progress)?;
            Ok(result(engine, opts, n_prompt, n_gen, samples_ns))
        })
        .collect()
}

/// Run one test (pp `n_prompt` or tg `n_gen`) after a warm-up, as
/// llama-bench does (a full prompt run, or one generated token); the
/// nanoseconds of each repetition.
fn time_test(
    engine: &Engine,
    opts: &BenchOptions,
    rng: &mut Lcg,
    (n_prompt, n_gen): (usize, usize),
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<u64>, LlmError> {
    let sopts = SessionOptions {
        ctx_tokens: (n_prompt + n_gen).max(16) as u32,
        threads: opts.threads,
        batch_tokens: opts.n_batch,
        kv: opts.kv,
        ..SessionOptions::default()
    };
    let params = context_params(&sopts).with_n_ubatch(opts.n_ubatch);
    let mut ctx = engine.context(params, sopts.ctx_tokens)?;
    let name = if n_prompt > 0 {
        format!("pp{n_prompt}")
    } else {
        format!("tg{n_gen}")
    };
    let mut run = |ctx: &mut LlamaContext<'_>, n_gen: usize| {
        ctx.clear_kv_cache();
        if n_prompt > 0 {
            test_prompt(engine, ctx, rng, n_prompt, opts.n_batch as usize)
        } else {
            test_gen(engine, ctx, rng, n_gen)
        }
    };
    progress(&format!("{name}: warm-up"));
    run(&mut ctx, 1)?;
    let mut samples_ns = Vec::with_capacity(opts.reps);
    for r in 0..opts.reps {
        progress(&format!("{name}: run {}/{}", r + 1, opts.reps));
        let t = Instant::now();
        run(&mut ctx, n_gen)?;
        samples_ns.push(t.elapsed().as_nanos() as u64);
    }
    Ok(samples_ns)
}

/// One test's row, with llama-bench's statistics.
fn result(
    engine: &Engine,
    opts: &BenchOptions,
    n_prompt: usize,
    n_gen: usize,
    samples_ns: Vec<u64>,
) -> BenchResult {
    let n_tokens = (n_prompt + n_gen) as f64;
    let samples_ts: Vec<f64> = samples_ns
        .iter()
        .map(|&ns| n_tokens * 1e9 / ns as f64)
        .collect();
    let ns_f: Vec<f64> = samples_ns.iter().map(|&n| n as f64).collect();
    let (avg_ns, std_ns) = mean_std(&ns_f);
    let (avg_ts, stddev_ts) = mean_std(&samples_ts);
    BenchResult {
        model_filename: engine.path().display().to_string(),
        model_type: engine.description(),
        model_size: engine.size_bytes(),
        model_n_params: engine.n_params(),
        backends: if cfg!(feature = "cuda") {
            "CUDA".into()
        } else {
            "CPU".into()
        },
        n_batch: opts.n_batch,
        n_ubatch: opts.n_ubatch,
        n_threads: opts.threads,
        type_k: opts.kv.0.to_string(),
        type_v: opts.kv.1.to_string(),
        n_prompt,
        n_gen,
        avg_ns: avg_ns as u64,
        stddev_ns: std_ns as u64,
        avg_ts,
        stddev_ts,
        samples_ns,
        samples_ts,
    }
}
