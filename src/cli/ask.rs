//! `ferrite ask`: one prompt, the answer streamed to stdout.

use std::io::Write;

use super::args::AskArgs;
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, a: AskArgs, out: &mut Out) -> anyhow::Result<()> {
    a.draft.options().validate()?;
    let prompt = a.prompt.join(" ");
    if prompt.trim().is_empty() {
        anyhow::bail!("the prompt is empty: ask something, e.g. ferrite ask \"What is a CPU?\"");
    }
    let mut engine = ctx.load(&a.model)?;
    let draft = ctx.load_draft(&a.draft, &a.model)?;
    let adapter = a.lora.map(|l| ctx.load_lora(&mut engine, &l)).transpose()?;
    let sopts = ctx.session_opts(&a.model, a.gen.beams as usize);
    let mut sess = engine.session(sopts.clone())?;
    sess.set_draft(Ctx::drafter(&a.draft, &engine, draft.as_ref(), &sopts)?)?;
    sess.set_adapter(adapter)?;
    sess.set_system(a.system);
    if a.prompt_cache {
        let sha = ctx.store.model_sha256(engine.name(), engine.path())?;
        let cache = ferrite::llm::PromptCache::new(&ctx.store.root().join("prompt-cache"), &sha)?;
        let warmed = sess.warm(&cache)?;
        tracing::info!(?warmed, "prompt cache");
    }

    let params = a.gen.params()?;
    let mut broken = false;
    let reply = {
        let mut sink = out.sink(&mut broken);
        if a.raw {
            sess.complete(&prompt, &params, &mut sink)?
        } else {
            sess.ask(&prompt, &params, &mut sink)?
        }
    };
    if broken {
        return Ok(());
    }
    writeln!(out)?;
    if a.stats {
        eprintln!("{} | finish {:?}", reply.stats, reply.finish);
    }
    Ok(())
}
