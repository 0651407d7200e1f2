//! `ferrite perplexity`: llama-perplexity's figure for a text file.

use std::io::Write;

use anyhow::Context as _;
use ferrite::llm;

use super::args::PerplexityArgs;
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, a: PerplexityArgs, out: &mut Out) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .with_context(|| format!("{}: cannot read the text file", a.file.display()))?;
    let mut engine = ctx.load(&a.model)?;
    let adapter = a.lora.map(|l| ctx.load_lora(&mut engine, &l)).transpose()?;
    let opts = ctx.session_opts(&a.model, 0);
    let n_ctx = a.model.ctx_size.unwrap_or(512);
    let mut write_err = None;
    let r = llm::perplexity(
        &engine,
        &text,
        (n_ctx, adapter),
        &opts,
        &mut |i, _n, est| {
            if write_err.is_none() {
                write_err = write!(out, "[{i}]{est:.4},")
                    .and_then(|()| out.flush())
                    .err();
            }
        },
    )?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    writeln!(out)?;
    writeln!(
        out,
        "Final estimate: PPL = {:.4} +/- {:.5}  ({} tokens, {} chunks of {}, {:.1} s)",
        r.ppl,
        r.ppl_err,
        r.n_tokens,
        r.chunks.len(),
        r.n_ctx,
        r.seconds
    )?;
    Ok(())
}
