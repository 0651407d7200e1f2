//! `ferrite finetune`: train a LoRA adapter on this device.

use std::io::Write;

use ferrite::llm::{Engine, LoadOptions};

use super::args::FinetuneArgs;
use super::{Ctx, Out};

pub(crate) fn run(ctx: &Ctx, a: FinetuneArgs, out: &mut Out) -> anyhow::Result<()> {
    let threads = a
        .threads
        .map_or_else(|| ctx.board.threads() as usize, |t| t as usize)
        .max(1);
    // Set while this process has no other thread yet (see
    // `ferrite::finetune::finetune`): candle's elementwise pool off, rayon's
    // pool (candle's matmuls and ferrite's kernels) sized to the threads.
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    keep_freed_memory();
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    let targets = ferrite::finetune::Target::parse_list(&a.targets).map_err(anyhow::Error::msg)?;
    // Names are shared with models (`--lora`, `models rm`, `models info`
    // look for a model first): an adapter named after one would be shadowed.
    let is_model = ctx.manifest.get(&a.out).is_some()
        || ctx
            .store
            .resolve(Some(&a.out), &ctx.manifest, false)
            .is_ok();
    if is_model && !a.resume {
        anyhow::bail!(
            "--out `{}` is a model's name; choose another name for the adapter",
            a.out
        );
    }
    let dir = ctx.store.adapter_dir(&a.out)?;
    let (name, path) = ctx.resolve(a.model.as_deref())?;
    let sha = ctx.store.model_sha256(&name, &path)?;
    // The tokenizer and chat template only: the trainer maps the weights.
    let vocab = LoadOptions {
        vocab_only: true,
        ..Default::default()
    };
    let engine = Engine::load(&name, &path, &vocab)?;
    let opts = options(ctx, &a, targets);
    // `--eval-data`: scored once the run has passed its checks (data,
    // memory, resume) and before its first step, with the adapter as it
    // stands when resuming; again after the last.
    if let Some(f) = &a.eval_data {
        // Its format is checked now, before anything is written.
        ferrite::eval::load_examples(f)?;
    }
    let mut before = None;
    let mut on_start = |step: usize| -> Result<_, Box<dyn std::error::Error + Send + Sync>> {
        let Some(f) = &a.eval_data else {
            return Ok(None);
        };
        let resumed = dir.join("adapter.gguf");
        let adapter = (step > 0 && resumed.is_file()).then_some(resumed.as_path());
        let r = super::eval::for_finetune(ctx, (&name, &path, &sha), adapter, f)?;
        let record = eval_record(step, &r, "start");
        before = Some(r);
        Ok(Some(record))
    };
    let bars = super::progress::Bars::default();
    let s = ferrite::finetune::finetune(&engine, &sha, &opts, &dir, (&bars, &mut on_start))?;
    report(&a, &name, &s);
    if let (Some(f), Some(before)) = (&a.eval_data, before) {
        drop(engine);
        let after = super::eval::for_finetune(ctx, (&name, &path, &sha), Some(&s.adapter), f)?;
        append_log(&dir.join("log.jsonl"), &eval_record(s.steps, &after, "end"));
        let n = after.examples.len();
        let runs = [("before".to_string(), before), ("after".to_string(), after)];
        super::eval::print_table(&mut std::io::stderr(), &runs, n)?;
    }
    writeln!(out, "{}", s.adapter.display())?;
    Ok(())
}

/// The trainer's options from the command line and the board.
fn options(
    ctx: &Ctx,
    a: &FinetuneArgs,
    targets: Vec<ferrite::finetune::Target>,
) -> ferrite::finetune::FinetuneOptions {
    ferrite::finetune::FinetuneOptions {
        data: a.data.clone(),
        val_data: a.val_data.clone(),
        replay: a.replay.clone(),
        name: a.out.clone(),
        rank: a.rank as usize,
        alpha: a.alpha,
        targets,
        epochs: a.epochs as usize,
        steps: a.steps.map(|s| s as usize),
        lr: a.lr,
        batch: a.batch as usize,
        seq: a.seq as usize,
        val: a.val,
        seed: a.seed,
        resume: a.resume,
        save_every: a.save_every as usize,
        checkpoint_layers: match a.checkpoint_layers.as_str() {
            "on" => Some(true),
            "off" => Some(false),
            _ => None,
        },
        memory_limit: ferrite::board::memory_limit(&ctx.board, std::path::Path::new("/"), 0),
    }
}

/// An `--eval-data` evaluation at `step`, as an `eval` event of the run's
/// log (`at`: "start" or "end").
fn eval_record(step: usize, r: &ferrite::eval::Report, at: &str) -> serde_json::Value {
    let corpus: serde_json::Map<String, serde_json::Value> = r
        .corpus
        .iter()
        .map(|&(m, v)| (m.name().to_string(), v.into()))
        .collect();
    serde_json::json!({"event": "eval", "at": at, "step": step, "examples": r.examples.len(), "scores": corpus})
}

/// Append one record to the run's log (a warning if it cannot).
fn append_log(log: &std::path::Path, record: &serde_json::Value) {
    let written = std::fs::OpenOptions::new()
        .append(true)
        .open(log)
        .and_then(|mut f| writeln!(f, "{record}"));
    if let Err(e) = written {
        tracing::warn!(log = %log.display(), error = %e, "cannot record the evaluation");
    }
}

/// The trainer frees and allocates the same large buffers every layer of
/// every step (dequantized weights, activations, gradients). glibc serves
/// blocks over its mmap threshold (at most 32 MiB) straight from the kernel
/// and hands them back on free, so each reuse costs page faults and zeroing:
/// measured, a third of a step's CPU time in the kernel. Raise the threshold
/// and stop trimming, so freed blocks are reused (the peak stays what the
/// largest step needs).
fn keep_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets allocator parameters; it is called before
    // training starts any thread of its own.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 512 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// What the run did, on stderr (stdout gets the adapter's path).
fn report(a: &FinetuneArgs, name: &str, s: &ferrite::finetune::TrainSummary) {
    let val = match (s.val_loss_start, s.val_loss_end) {
        (Some(a), Some(b)) => format!(", validation loss {a:.4} -> {b:.4}"),
        _ => String::new(),
    };
    eprintln!(
        "trained `{}` on {name}: {} steps ({} examples, {} trainable parameters), last loss {:.4}{val}; {:.2} s/step, {:.0} tokens/s",
        a.out, s.steps, s.train_examples, s.trainable_params, s.last_loss, s.s_per_step, s.tokens_per_s
    );
    if s.resumed_from > 0 {
        eprintln!("resumed at step {} of {}", s.resumed_from, s.steps);
    }
    if s.steps > s.schedule_steps {
        eprintln!(
            "steps {} to {} extended the run: its learning rate decayed over the first {} and the rest trained at the floor ({:e})",
            s.schedule_steps + 1,
            s.steps,
            s.schedule_steps,
            a.lr / 10.0
        );
    }
    if s.replay_examples > 0 {
        eprintln!(
            "mixed {} general examples from --replay into training",
            s.replay_examples
        );
    }
    let all = s.train_examples - s.replay_examples + s.val_examples;
    if let (Some(f), true) = (&a.val_data, s.val_examples > 0) {
        eprintln!(
            "validation loss on the {} examples of {}",
            s.val_examples,
            f.display()
        );
    } else if s.val_examples > 0 {
        eprintln!(
            "held out {} of {all} examples for the validation loss (not trained on; --val 0 holds none)",
            s.val_examples
        );
    } else if a.val_data.is_none() && all < ferrite::finetune::MIN_AUTO_VAL {
        eprintln!(
            "trained on all {all} examples: fewer than {} hold none out for validation unless --val asks",
            ferrite::finetune::MIN_AUTO_VAL
        );
    }
}
