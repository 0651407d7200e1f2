//! `ferrite bench`: llama-bench's pp/tg tests and table (or JSON).

use std::io::Write;

use ferrite::llm;

use super::args::{BenchArgs, ModelArgs};
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, a: BenchArgs, out: &mut Out) -> anyhow::Result<()> {
    let margs = ModelArgs {
        model: a.model,
        threads: a.threads,
        ctx_size: None,
        gpu_layers: None,
        cache_type_k: a.cache_type_k,
        cache_type_v: a.cache_type_v,
    };
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
    let results = llm::run_bench(&engine, &opts, &mut |m| pb.set_message(m.to_string()))?;
    pb.finish_and_clear();
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
