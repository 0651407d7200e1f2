//! `ferrite models ...`: the store (list, pull, verify, path, rm, import),
//! model files (info) and the Whisper converter.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context as _};
use ferrite::gguf::GgufFile;
use ferrite::models;

use super::args::ModelsCmd;
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, cmd: ModelsCmd, out: &mut Out) -> anyhow::Result<()> {
    match cmd {
        ModelsCmd::List => list(ctx, out),
        ModelsCmd::Pull { name } => pull(ctx, name.as_deref(), out),
        ModelsCmd::Verify { name } => verify(ctx, name, out),
        ModelsCmd::ConvertVad { src, out: dest } => {
            ferrite::speech::silero::convert_silero(&src, &dest)?;
            ferrite::speech::neural_vad::check_model(&dest)?;
            let (sha, size) = models::sha256_file(&dest, &super::progress::Bars::default())?;
            writeln!(
                out,
                "{}: Silero VAD for whisper.cpp; {size} bytes, sha256 {sha}",
                dest.display()
            )?;
            Ok(())
        }
        ModelsCmd::ConvertWhisper { ct2_dir, out: dest } => {
            let c = ferrite::speech::convert_whisper(&ct2_dir, &dest)?;
            let (sha, size) = models::sha256_file(&dest, &super::progress::Bars::default())?;
            writeln!(
                out,
                "{}: {} tensors, {} encoder + {} decoder layers, d={}, vocab {}; {size} bytes, sha256 {sha}",
                dest.display(),
                c.tensors,
                c.hparams.n_audio_layer,
                c.hparams.n_text_layer,
                c.hparams.n_audio_state,
                c.hparams.n_vocab
            )?;
            Ok(())
        }
        ModelsCmd::Path { name } => {
            writeln!(out, "{}", ctx.store.path(&name)?.display())?;
            Ok(())
        }
        ModelsCmd::Rm { name } => {
            // A model first; an adapter of that name otherwise.
            if ctx.store.remove(&name)? {
                writeln!(out, "removed {name}")?;
            } else if ctx.store.remove_adapter(&name)? {
                writeln!(out, "removed adapter {name}")?;
            } else {
                bail!("`{name}` is neither a model nor an adapter in the store (`ferrite models list` lists both)");
            }
            Ok(())
        }
        ModelsCmd::Import { file, name } if file.is_dir() => {
            anyhow::ensure!(
                name.is_none(),
                "--name names one file; a folder's files are filed under the manifest's names"
            );
            let mut imported = 0;
            for (f, got) in ctx.store.import_dir(&file, &ctx.manifest)? {
                match got {
                    Ok(n) => {
                        imported += 1;
                        writeln!(out, "imported {n}: {}", f.display())?;
                    }
                    Err(e) => writeln!(out, "skipped {}", ferrite::report(&e))?,
                }
            }
            anyhow::ensure!(
                imported > 0,
                "no file in {} is one the manifest pins (`ferrite models list` names them)",
                file.display()
            );
            Ok(())
        }
        ModelsCmd::Import { file, name } => {
            let (name, p) = ctx.store.import(&file, name.as_deref(), &ctx.manifest)?;
            writeln!(out, "imported {name}: {}", p.display())?;
            Ok(())
        }
        ModelsCmd::Info { model, json } => info(ctx, &model, json, out),
    }
}

/// The manifest's models, imported ones, and the trained adapters.
fn list(ctx: &Ctx, out: &mut Out) -> anyhow::Result<()> {
    writeln!(
        out,
        "store: {} ({})",
        ctx.store.root().display(),
        ctx.store_origin
    )?;
    let models = ctx.store.list(&ctx.manifest);
    // The name column fits the longest name (qwen2.5-coder-0.5b).
    let w = models
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(0)
        .max(16);
    writeln!(
        out,
        "{:<w$} {:<7} {:>10}  {:<20} description",
        "name", "pulled", "size", "license"
    )?;
    for l in models {
        writeln!(
            out,
            "{:<w$} {:<7} {:>10}  {:<20} {}{}",
            l.name,
            if l.pulled { "yes" } else { "no" },
            format!("{:.1} MB", l.size as f64 / 1e6),
            l.license,
            l.description,
            if l.default { " (default)" } else { "" }
        )?;
    }
    let adapters = ctx.store.adapters();
    if adapters.is_empty() {
        return Ok(());
    }
    writeln!(out, "\nadapters (use with --lora NAME or /lora use NAME):")?;
    for (n, p) in adapters {
        match ferrite::adapter::inspect(&p) {
            Ok((i, _)) => writeln!(
                out,
                "{n:<16} rank {:<3} alpha {:<5} targets {:<22} base {}",
                i.rank,
                i.alpha,
                i.targets,
                i.base_name.as_deref().unwrap_or("?")
            )?,
            Err(e) => writeln!(out, "{n:<16} unreadable: {}", ferrite::report(&e))?,
        }
    }
    Ok(())
}

/// Fetch a manifest model (default: the board's, else the manifest's).
fn pull(ctx: &Ctx, name: Option<&str>, out: &mut Out) -> anyhow::Result<()> {
    let entry = match name.or(ctx.board.default_model.as_deref()) {
        Some(n) => ctx
            .manifest
            .get(n)
            .ok_or_else(|| models::ModelsError::Unknown {
                name: n.into(),
                known: ctx.manifest.names().join(", "),
            })?,
        None => ctx
            .manifest
            .default_model()
            .context("the manifest is empty")?,
    };
    let p = ctx.store.pull(entry)?;
    writeln!(out, "{}", p.display())?;
    Ok(())
}

/// Re-hash pulled models (default: all of them).
fn verify(ctx: &Ctx, name: Option<String>, out: &mut Out) -> anyhow::Result<()> {
    let names: Vec<String> = match name {
        Some(n) => vec![n],
        None => ctx
            .store
            .list(&ctx.manifest)
            .into_iter()
            .filter(|l| l.pulled)
            .map(|l| l.name)
            .collect(),
    };
    let mut bad = 0;
    for n in &names {
        match ctx.store.verify(n, &ctx.manifest) {
            Ok(p) => writeln!(out, "{n}: ok ({})", p.display())?,
            Err(e) => {
                writeln!(out, "{n}: FAILED: {}", ferrite::report(&e))?;
                bad += 1;
            }
        }
    }
    if bad > 0 {
        bail!("{bad} model(s) failed verification");
    }
    Ok(())
}

fn whisper_info(path: &Path, json: bool, out: &mut Out) -> anyhow::Result<()> {
    let hp = ferrite::speech::whisper::check_model(path)?;
    if json {
        let v = serde_json::json!({ "path": path, "whisper": hp });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(out, "path:           {}", path.display())?;
    writeln!(
        out,
        "whisper.cpp model: {} encoder + {} decoder layers, d={}, {} heads, vocab {} ({}), {} mels",
        hp.n_audio_layer,
        hp.n_text_layer,
        hp.n_audio_state,
        hp.n_audio_head,
        hp.n_vocab,
        if hp.n_vocab >= 51865 {
            "multilingual"
        } else {
            "English only"
        },
        hp.n_mels
    )?;
    writeln!(out, "loadable:       yes")?;
    Ok(())
}

/// `models info NAME`: a model (GGUF or whisper.cpp), else an adapter.
fn info(ctx: &Ctx, model: &str, json: bool, out: &mut Out) -> anyhow::Result<()> {
    let resolved = ctx.store.resolve(Some(model), &ctx.manifest, false);
    if let (Err(_), Ok(adapter)) = (&resolved, ctx.store.adapter_path(model)) {
        return adapter_info(&adapter, json, out);
    }
    let (_, path) = resolved?;
    if ferrite::speech::whisper::is_whisper_file(&path) {
        whisper_info(&path, json, out)
    } else if GgufFile::open(&path).is_ok_and(|g| g.get_str("general.type") == Some("adapter")) {
        // An adapter given by its path.
        adapter_info(&path, json, out)
    } else {
        gguf_info(&path, json, out)
    }
}

/// `models info ADAPTER`: what the adapter file says (base, rank, alpha,
/// targets, size) and how its training ended (the log's last summary).
fn adapter_info(path: &Path, json: bool, out: &mut Out) -> anyhow::Result<()> {
    let (info, _) = ferrite::adapter::inspect(path)?;
    let log = path.with_file_name("log.jsonl");
    let done = std::fs::read_to_string(&log).ok().and_then(|t| {
        t.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| v["event"] == "done")
            .map(|v| v["summary"].clone())
    });
    let size = std::fs::metadata(path)?.len();
    if json {
        let v = serde_json::json!({
            "path": path, "kind": "lora-adapter", "architecture": info.arch,
            "rank": info.rank, "alpha": info.alpha, "targets": info.targets,
            "base_name": info.base_name, "base_sha256": info.base_sha256,
            "pairs": info.n_pairs, "parameters": info.n_params, "bytes": size,
            "training": done,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    writeln!(out, "path:           {}", path.display())?;
    writeln!(
        out,
        "kind:           LoRA adapter ({} architecture)",
        info.arch
    )?;
    writeln!(
        out,
        "base:           {} (sha256 {})",
        info.base_name.as_deref().unwrap_or("?"),
        info.base_sha256.as_deref().unwrap_or("?")
    )?;
    writeln!(out, "rank, alpha:    {}, {}", info.rank, info.alpha)?;
    writeln!(
        out,
        "targets:        {} ({} pairs, {} parameters, {size} bytes)",
        info.targets, info.n_pairs, info.n_params
    )?;
    if let Some(s) = done {
        let loss = |k: &str| s[k].as_f64().map(|v| format!("{v:.4}"));
        let val = match (loss("val_loss_start"), loss("val_loss_end")) {
            (Some(a), Some(b)) => format!(", validation loss {a} -> {b}"),
            _ => String::new(),
        };
        writeln!(
            out,
            "training:       {} steps, last loss {}{val}",
            s["steps"],
            loss("last_loss").unwrap_or_else(|| "?".into())
        )?;
    }
    Ok(())
}

fn gguf_info(path: &Path, json: bool, out: &mut Out) -> anyhow::Result<()> {
    let g = GgufFile::open(path)?;
    let s = g.summary();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    writeln!(out, "path:           {}", path.display())?;
    writeln!(out, "{s}")?;
    // What a context costs, per cache type (-ctk/-ctv, the board's kv_type).
    use ferrite::board::{kv_bytes_per_token, KvType};
    let per = |t: KvType| format!("{} {} B", t, kv_bytes_per_token(&g, (t, t)));
    if kv_bytes_per_token(&g, (KvType::F16, KvType::F16)) > 0 {
        let all: Vec<String> = KvType::ALL.into_iter().map(per).collect();
        writeln!(out, "KV per token:   {}", all.join(", "))?;
    }
    match g.check_model() {
        Ok(()) => writeln!(out, "loadable:       yes")?,
        Err(e) => writeln!(out, "loadable:       no: {}", ferrite::report(&e))?,
    }
    Ok(())
}
