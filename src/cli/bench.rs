//! `ferrite bench`: llama-bench's pp/tg tests and table (or JSON); with
//! `--draft`/`--lookup`, speculative decoding against plain decoding on real
//! questions (`llm::run_spec_bench`).

use std::io::Write;

use ferrite::llm;

use super::args::{BenchArgs, ModelArgs};
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, a: BenchArgs, out: &mut Out) -> anyhow::Result<()> {
    let margs = ModelArgs {
        model: a.model.clone(),
        threads: a.threads,
        ctx_size: None,
        gpu_layers: a.gpu_layers,
        cache_type_k: a.cache_type_k,
        cache_type_v: a.cache_type_v,
        rpc: a.rpc.clone(),
    };
    if a.draft.draft.is_some() || a.draft.lookup {
        return speculative(ctx, &a, &margs, out);
    }
    if !a.question.is_empty() {
        anyhow::bail!("--question is for the speculative bench: add --draft MODEL or --lookup");
    }
    let engine = ctx.load(&margs)?;
    let opts = llm::BenchOptions {
        n_prompt: a.n_prompt as usize,
        n_gen: a.n_gen as usize,
        threads: a.threads.unwrap_or_else(|| ctx.board.threads()),
        reps: a.reps as usize,
        n_batch: a.n_batch,
        n_ubatch: a.n_ubatch.min(a.n_batch),
        kv: ctx.session_opts(&margs, 0).kv,
    };
    let pb = indicatif::ProgressBar::new_spinner();
    let before = engine.remote_traffic();
    let results = llm::run_bench(&engine, &opts, &mut |m| pb.set_message(m.to_string()))?;
    pb.finish_and_clear();
    let (devices, layers) = engine.remote();
    if !devices.is_empty() {
        let after = engine.remote_traffic();
        eprintln!(
            "rpc: {layers} layers on {} remote devices; the tests sent {} bytes and received {} bytes",
            devices.len(),
            after.0 - before.0,
            after.1 - before.1
        );
    }
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&results)?)?;
    } else {
        writeln!(out, "{}", llm::BenchResult::markdown_header())?;
        for r in &results {
            writeln!(out, "{}", r.markdown_row())?;
        }
    }
    Ok(())
}

/// `bench --draft MODEL` or `bench --lookup`: each question plain and
/// drafted, alternated, with the table or JSON of `llm::SpecResult`.
fn speculative(ctx: &Ctx, a: &BenchArgs, margs: &ModelArgs, out: &mut Out) -> anyhow::Result<()> {
    a.draft.options().validate()?;
    let engine = ctx.load(margs)?;
    let draft = ctx.load_draft(&a.draft, margs)?;
    let sopts = ctx.session_opts(margs, 0);
    let prompts = if a.question.is_empty() {
        llm::SPEC_PROMPTS
            .iter()
            .map(|(n, q)| (n.to_string(), q.to_string()))
            .collect()
    } else {
        (1..)
            .zip(&a.question)
            .map(|(i, q)| (format!("q{i}"), q.clone()))
            .collect()
    };
    let opts = llm::SpecBenchOptions {
        n_gen: a.n_gen as usize,
        reps: a.reps as usize,
        prompts,
        draft: a.draft.options(),
    };
    let mut drafter = || llm::Drafter::new(&engine, draft.as_ref(), &sopts);
    let pb = indicatif::ProgressBar::new_spinner();
    let results = llm::run_spec_bench(&engine, &sopts, &mut drafter, &opts, &mut |m| {
        pb.set_message(m.to_string())
    })?;
    pb.finish_and_clear();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&results)?)?;
    } else {
        writeln!(out, "{}", llm::SpecResult::markdown_header())?;
        for r in &results {
            writeln!(out, "{}", r.markdown_row())?;
        }
    }
    Ok(())
}
