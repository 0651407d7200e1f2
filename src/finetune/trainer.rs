//! The training loop: batches in a seed-determined order, forward and
//! backward through the frozen base with the adapter, AdamW on the adapter,
//! validation each epoch, checkpoints every N steps and at the end, and a
//! progress bar plus a JSON log (`log.jsonl`) of every step next to the
//! adapter.
//!
//! Any step can be rebuilt from `(seed, step)`, and a checkpoint stores the
//! variables and optimizer moments exactly, so `--resume` continues with the
//! same result as a run that was never stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::DType;
use serde_json::json;

use super::checkpoint::{self, Checkpoint, TrainConfig};
use super::config::Target;
use super::data::{self, Dataset, Example};
use super::lora::Lora;
use super::memory;
use super::model::{Base, HEAD_ROWS};
use super::optim::{lr_at, AdamW};
use super::rng::Rng;
use super::FinetuneError;
use crate::llm::Engine;
use crate::progress::{Progress, Unit};

/// `ferrite finetune`'s settings.
#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    pub data: PathBuf,
    /// A separate validation file (instead of holding out `val`).
    pub val_data: Option<PathBuf>,
    /// General examples mixed into training (`--replay`), so the adapter
    /// keeps what the base model knew.
    pub replay: Option<PathBuf>,
    /// Adapter name (the folder in the store).
    pub name: String,
    pub rank: usize,
    pub alpha: f32,
    pub targets: Vec<Target>,
    pub epochs: usize,
    /// Overrides `epochs` when set.
    pub steps: Option<usize>,
    pub lr: f64,
    pub batch: usize,
    pub seq: usize,
    /// The fraction of examples held out for validation; `None`: 0.1 of a
    /// dataset of at least `data::MIN_AUTO_VAL` examples, else none (a
    /// small personal dataset would lose facts it is meant to teach).
    pub val: Option<f64>,
    pub seed: u64,
    pub resume: bool,
    /// Checkpoint every this many steps (and always at the end).
    pub save_every: usize,
    /// Recompute each layer's activations in the backward pass instead of
    /// keeping them all (activation memory of one layer; one more forward
    /// pass per step). `None`: only when the run would not fit otherwise.
    pub checkpoint_layers: Option<bool>,
    /// The bytes training may use and why (the board's budget or the
    /// available memory); `None`: unchecked.
    pub memory_limit: Option<(u64, String)>,
}

impl Default for FinetuneOptions {
    fn default() -> Self {
        FinetuneOptions {
            data: PathBuf::new(),
            val_data: None,
            replay: None,
            name: String::new(),
            rank: 8,
            alpha: 16.0,
            targets: Target::ALL.to_vec(),
            epochs: 3,
            steps: None,
            lr: 2e-4,
            batch: 4,
            seq: 256,
            val: None,
            checkpoint_layers: None,
            memory_limit: None,
            seed: 42,
            resume: false,
            save_every: 50,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainSummary {
    pub adapter: PathBuf,
    pub steps: usize,
    pub resumed_from: usize,
    /// The steps the learning rate's decay spans (less than `steps` for a
    /// run extended by `--resume --steps`).
    pub schedule_steps: usize,
    /// Examples trained on, `replay_examples` included.
    pub train_examples: usize,
    /// Of those, the ones `--replay` mixed in.
    pub replay_examples: usize,
    pub val_examples: usize,
    pub last_loss: f64,
    pub val_loss_start: Option<f64>,
    pub val_loss_end: Option<f64>,
    pub s_per_step: f64,
    pub tokens_per_s: f64,
    pub trainable_params: usize,
}

/// Mean target loss over examples, in batches, without gradients.
fn eval_loss(
    base: &Base,
    lora: &Lora,
    examples: &[Example],
    batch: usize,
) -> Result<f64, FinetuneError> {
    let mut sum = 0.0;
    let mut n = 0usize;
    for chunk in examples.chunks(batch) {
        let refs: Vec<&Example> = chunk.iter().collect();
        let b = data::batch(&refs);
        let k = b.targets.len();
        let l = base.loss_value(Some(lora), &b)?;
        sum += l * k as f64;
        n += k;
    }
    Ok(sum / n.max(1) as f64)
}

/// Optimizer moments as tensors shaped like their variables (checkpoints).
fn moments(
    flat: &[Vec<f32>],
    vars: &[&candle_core::Var],
) -> candle_core::Result<Vec<candle_core::Tensor>> {
    flat.iter()
        .zip(vars)
        .map(|(m, v)| candle_core::Tensor::from_slice(m, v.shape(), v.device()))
        .collect()
}

struct Log(Option<std::fs::File>);

impl Log {
    fn open(path: &Path) -> Log {
        match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Log(Some(f)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the training log");
                Log(None)
            }
        }
    }

    fn write(&mut self, v: serde_json::Value) {
        if let Some(f) = &mut self.0 {
            let _ = writeln!(f, "{v}");
        }
    }
}

/// Called once every check has passed, just before the first step, with
/// the step training starts from (0, or where `--resume` continues): a
/// record it returns goes into `log.jsonl` first (`--eval-data`'s scores
/// before training). An error stops the run.
pub type OnStart<'a> = &'a mut dyn FnMut(
    usize,
) -> Result<
    Option<serde_json::Value>,
    Box<dyn std::error::Error + Send + Sync>,
>;

/// Train an adapter for `engine`'s model into `dir` (the adapter's folder in
/// the store). `base_sha256` identifies the base file; steps are reported to
/// `progress`; `on_start` runs after the checks (data, memory, resume).
///
/// Threads: every matmul and ferrite's own kernels run on rayon's global
/// pool. candle runs elementwise ops on a spinning pool of its own, which on
/// a 2-4 core board fights rayon for the cores (measured on 2 cores: 4.4
/// s/step with it, 3.3 s without): callers set `CANDLE_NUM_THREADS=1` (and
/// `RAYON_NUM_THREADS`) before their process starts any thread, as `ferrite
/// finetune` does; the library never changes the environment.
pub fn finetune(
    engine: &Engine,
    base_sha256: &str,
    opts: &FinetuneOptions,
    dir: &Path,
    (progress, on_start): (&dyn Progress, OnStart<'_>),
) -> Result<TrainSummary, FinetuneError> {
    validate(opts)?;
    let (ds, replay_examples) = load_data(engine, opts)?;
    let per_epoch = ds.train.len().div_ceil(opts.batch);
    let total = opts.steps.unwrap_or(opts.epochs * per_epoch);
    if total == 0 {
        return Err(FinetuneError::Param(
            "nothing to do: --steps/--epochs is 0".into(),
        ));
    }
    let mut cfg = train_config(opts, base_sha256, &ds, total);
    let base = Base::load(engine.path(), None, DType::F32, opts.seq)?;
    let lora = Lora::new(
        &base.cfg,
        opts.rank,
        opts.alpha,
        &opts.targets,
        &mut Rng::new(opts.seed),
        DType::F32,
    )?;
    let longest = ds
        .train
        .iter()
        .chain(&ds.val)
        .map(|e| e.tokens.len())
        .max()
        .unwrap_or(1);
    let shape = memory::Shape::new(&base.cfg, base.weight_bytes(), lora.n_params());
    // A batch never holds more rows than there are examples to fill it.
    let rows = opts.batch.min(ds.train.len().max(ds.val.len()).max(1));
    let checkpoint_layers = plan_memory(&shape, opts, (rows, longest.min(opts.seq)))?;
    let (ckpt_path, adapter_path) = prepare_dir(dir, opts)?;
    let mut opt = AdamW::new(&lora.vars(), opts.lr)?;
    let start = if opts.resume {
        resume(&ckpt_path, &mut cfg, &lora, &mut opt)?
    } else {
        0
    };
    let mut log = Log::open(&dir.join("log.jsonl"));
    if let Some(record) = on_start(start).map_err(FinetuneError::Start)? {
        log.write(record);
    }
    let mut run = Run {
        engine,
        opts,
        cfg,
        ds,
        base,
        lora,
        opt,
        log,
        ckpt_path,
        adapter_path,
        per_epoch,
        total,
        replay_examples,
        checkpoint_layers,
    };
    run.train(start, progress)
}

/// What a checkpoint records of the run (and `--resume` compares).
fn train_config(
    opts: &FinetuneOptions,
    base_sha256: &str,
    ds: &data::Dataset,
    total: usize,
) -> TrainConfig {
    TrainConfig {
        base_sha256: base_sha256.to_string(),
        data_sha256: ds.sha256.clone(),
        rank: opts.rank,
        alpha: opts.alpha,
        targets: Target::list_string(&opts.targets),
        lr: opts.lr,
        batch: opts.batch,
        seq: opts.seq,
        val: ds.val_frac,
        seed: opts.seed,
        total_steps: total,
        warmup_steps: (total / 10).clamp(1, 50),
        schedule_steps: total,
    }
}

/// The training and validation sets, `--replay`'s examples mixed into
/// training (and how many they are).
fn load_data(engine: &Engine, opts: &FinetuneOptions) -> Result<(Dataset, usize), FinetuneError> {
    let mut ds = data::load(
        &opts.data,
        engine,
        opts.seq,
        opts.val,
        opts.seed,
        opts.val_data.as_deref(),
    )?;
    let replay = match &opts.replay {
        Some(p) => data::add_replay(&mut ds, p, engine, opts.seq)?,
        None => 0,
    };
    Ok((ds, replay))
}

/// Whether to recompute layers in the backward pass (`--checkpoint-layers`:
/// as asked, or, left to ferrite, only when keeping every layer's
/// activations would not fit), after checking that the run fits at all.
///
/// `rows`: the rows a batch really holds (`--batch`, or fewer examples);
/// `seq`: the longest sequence (`--seq`, or the longest example).
///
/// Errors: `Memory`, naming the estimate, the limit and the largest
/// `--batch` and `--seq` that would fit.
fn plan_memory(
    shape: &memory::Shape,
    opts: &FinetuneOptions,
    (rows, seq): (usize, usize),
) -> Result<bool, FinetuneError> {
    let (b, t) = (rows as u64, seq as u64);
    let est = |c| memory::estimate(shape, b, t, c, HEAD_ROWS as u64);
    let Some((limit, why)) = &opts.memory_limit else {
        return Ok(opts.checkpoint_layers.unwrap_or(false));
    };
    let checkpoint = match opts.checkpoint_layers {
        Some(c) => c,
        None => est(false).total() > *limit,
    };
    let e = est(checkpoint);
    tracing::info!(estimate = %e.describe(), limit_mib = limit / (1 << 20), checkpoint, "training memory");
    if e.total() <= *limit {
        return Ok(checkpoint);
    }
    let (fb, ft) = memory::largest_fitting(shape, (b, t), checkpoint, HEAD_ROWS as u64, *limit);
    let mut hints = Vec::new();
    if !checkpoint && est(true).total() <= *limit {
        hints.push("--checkpoint-layers on".to_string());
    }
    hints.extend(fb.map(|b| format!("--batch {b}")));
    hints.extend(ft.map(|t| format!("--seq {t}")));
    let hint = if hints.is_empty() {
        "even one short sequence does not fit: free memory or use a smaller model".to_string()
    } else {
        format!("{} would fit", hints.join(" or "))
    };
    Err(FinetuneError::Memory(format!(
        "needs {} but {} MiB is allowed ({why}); {hint}",
        e.describe(),
        limit / (1 << 20)
    )))
}

/// The settings no run can use.
fn validate(opts: &FinetuneOptions) -> Result<(), FinetuneError> {
    let bad = |m: &str| Err(FinetuneError::Param(m.into()));
    if opts.batch == 0 || opts.seq < 2 {
        return bad("--batch must be ≥ 1 and --seq ≥ 2");
    }
    if opts.val.is_some_and(|v| !(0.0..1.0).contains(&v)) {
        return bad("--val must be in [0, 1)");
    }
    if opts.rank == 0 {
        return bad("--rank must be ≥ 1");
    }
    if !(opts.alpha > 0.0 && opts.alpha.is_finite()) {
        return bad("--alpha must be a positive number");
    }
    if !(opts.lr > 0.0 && opts.lr.is_finite()) {
        return bad("--lr must be a positive number");
    }
    Ok(())
}

/// The adapter's folder, and its checkpoint and adapter files; an existing
/// run is only continued with `--resume`.
fn prepare_dir(dir: &Path, opts: &FinetuneOptions) -> Result<(PathBuf, PathBuf), FinetuneError> {
    let ckpt_path = dir.join("checkpoint.gguf");
    let adapter_path = dir.join("adapter.gguf");
    if opts.resume && !ckpt_path.exists() {
        // Refused before the folder is made: a mistyped --out leaves nothing.
        return Err(FinetuneError::Checkpoint {
            path: ckpt_path,
            what: "no checkpoint to resume from (start without --resume)".into(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| FinetuneError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    if !opts.resume && (ckpt_path.exists() || adapter_path.exists()) {
        return Err(FinetuneError::Param(format!(
            "adapter `{}` already exists ({}): --resume continues its run; or choose another --out, or `ferrite models rm {}`",
            opts.name,
            dir.display(),
            opts.name
        )));
    }
    Ok((ckpt_path, adapter_path))
}

/// Load the checkpoint into the adapter and optimizer; returns the step to
/// continue from. Refused, naming what changed, when the run's settings or
/// data differ; a run whose steps are all done says so. More `--steps` than
/// the run had extend it: the schedule (`cfg`'s warm-up and decay) stays
/// the first run's, and the added steps train at its floor.
fn resume(
    ckpt_path: &Path,
    cfg: &mut TrainConfig,
    lora: &Lora,
    opt: &mut AdamW,
) -> Result<usize, FinetuneError> {
    let refuse = |what: String| FinetuneError::Checkpoint {
        path: ckpt_path.to_path_buf(),
        what,
    };
    if !ckpt_path.exists() {
        return Err(refuse(
            "no checkpoint to resume from (start without --resume)".into(),
        ));
    }
    let (mut theirs_cfg, done) = checkpoint::header(ckpt_path)?;
    let was = theirs_cfg.total_steps;
    if theirs_cfg.schedule_steps == 0 {
        theirs_cfg.schedule_steps = was;
    }
    // Settings first (base model, targets, data, ...), the step count after:
    // a finished run trained on other settings says what changed.
    let steps = ["total_steps", "warmup_steps", "schedule_steps"];
    same_settings(cfg, &theirs_cfg, &steps).map_err(refuse)?;
    if done >= cfg.total_steps {
        return Err(refuse(format!(
            "the run is complete: {done} of its {was} steps are done; `--resume --steps N` with N over {done} trains it further"
        )));
    }
    if cfg.total_steps > was {
        // An extension: the schedule stays the run's.
        cfg.warmup_steps = theirs_cfg.warmup_steps;
        cfg.schedule_steps = theirs_cfg.schedule_steps;
        theirs_cfg.total_steps = cfg.total_steps;
        tracing::info!(
            from = was,
            to = cfg.total_steps,
            "run extended: the added steps train at the schedule's floor (lr / 10)"
        );
    }
    same_settings(cfg, &theirs_cfg, &[]).map_err(refuse)?;
    let ck = checkpoint::load(ckpt_path, lora.vars().len())?;
    for (var, p) in lora.vars().iter().zip(&ck.params) {
        if var.dims() != p.dims() {
            return Err(refuse("tensor shapes differ from this adapter".into()));
        }
        var.set(p)?;
    }
    let flat = |ts: &[candle_core::Tensor]| -> candle_core::Result<Vec<Vec<f32>>> {
        ts.iter()
            .map(|t| t.flatten_all()?.to_vec1::<f32>())
            .collect()
    };
    opt.m = flat(&ck.m)?;
    opt.v = flat(&ck.v)?;
    opt.t = ck.adam_t;
    tracing::info!(step = ck.step, "resuming");
    Ok(ck.step)
}

/// `Err` naming each setting of `ours` that differs from `theirs` (but
/// those in `skip`) as `name (was X, now Y)`.
fn same_settings(ours: &TrainConfig, theirs: &TrainConfig, skip: &[&str]) -> Result<(), String> {
    let ours = serde_json::to_value(ours).expect("a config serializes");
    let theirs = serde_json::to_value(theirs).expect("a config serializes");
    let changed: Vec<String> = ours
        .as_object()
        .expect("an object")
        .iter()
        .filter(|(k, v)| !skip.contains(&k.as_str()) && theirs.get(k.as_str()) != Some(v))
        .map(|(k, v)| {
            format!(
                "{k} (was {}, now {v})",
                theirs.get(k.as_str()).unwrap_or(&json!(null))
            )
        })
        .collect();
    if changed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the run's settings or data changed: {}",
            changed.join(", ")
        ))
    }
}

/// A training run under way.
struct Run<'e> {
    engine: &'e Engine,
    opts: &'e FinetuneOptions,
    cfg: TrainConfig,
    ds: Dataset,
    base: Base,
    lora: Lora,
    opt: AdamW,
    log: Log,
    ckpt_path: PathBuf,
    adapter_path: PathBuf,
    per_epoch: usize,
    total: usize,
    replay_examples: usize,
    checkpoint_layers: bool,
}

impl Run<'_> {
    fn train(
        &mut self,
        start: usize,
        progress: &dyn Progress,
    ) -> Result<TrainSummary, FinetuneError> {
        self.log.write(json!({
            "event": if self.opts.resume { "resume" } else { "start" },
            "step": start,
            "config": self.cfg,
            "train_examples": self.ds.train.len(),
            "replay_examples": self.replay_examples,
            "val_examples": self.ds.val.len(),
            "truncated": self.ds.truncated,
            "trainable_params": self.lora.n_params(),
            "checkpoint_layers": self.checkpoint_layers,
        }));
        let val_loss_start = self.validate(start)?;
        progress.start(&self.opts.name, self.total as u64, Unit::Steps);
        progress.position(start as u64);
        let t_run = Instant::now();
        let mut tokens_run = 0usize;
        let mut last_loss = f64::NAN;
        let mut val_loss_end = val_loss_start;
        for step in start..self.total {
            let t0 = Instant::now();
            let (loss, n_tokens) = self.step(step)?;
            last_loss = loss;
            let dt = t0.elapsed().as_secs_f64();
            tokens_run += n_tokens;
            let tps = tokens_run as f64 / t_run.elapsed().as_secs_f64();
            progress.status(&format!("loss {loss:.4}  {tps:.0} tok/s  {dt:.2} s/step"));
            progress.advance(1);
            let done = step + 1;
            if done % self.per_epoch == 0 || done == self.total {
                if let Some(v) = self.validate(done)? {
                    progress.note(&format!(
                        "epoch {}: train loss {loss:.4}, validation loss {v:.4}",
                        (done - 1) / self.per_epoch + 1
                    ));
                    val_loss_end = Some(v);
                }
            }
            if done % self.opts.save_every.max(1) == 0 || done == self.total {
                self.save(done)?;
            }
        }
        progress.finish();
        let ran = self.total - start;
        let secs = t_run.elapsed().as_secs_f64();
        let summary = TrainSummary {
            adapter: self.adapter_path.clone(),
            steps: self.total,
            resumed_from: start,
            schedule_steps: self.cfg.schedule_steps,
            train_examples: self.ds.train.len(),
            replay_examples: self.replay_examples,
            val_examples: self.ds.val.len(),
            last_loss,
            val_loss_start,
            val_loss_end,
            s_per_step: if ran > 0 { secs / ran as f64 } else { 0.0 },
            tokens_per_s: if secs > 0.0 {
                tokens_run as f64 / secs
            } else {
                0.0
            },
            trainable_params: self.lora.n_params(),
        };
        self.log.write(json!({"event": "done", "summary": summary}));
        Ok(summary)
    }

    /// One optimizer step; the loss and the tokens it saw.
    fn step(&mut self, step: usize) -> Result<(f64, usize), FinetuneError> {
        let t0 = Instant::now();
        let opts = self.opts;
        let idx = data::step_indices(self.ds.train.len(), opts.batch, opts.seed, step);
        let refs: Vec<&Example> = idx.iter().map(|&i| &self.ds.train[i]).collect();
        let batch = data::batch(&refs);
        let n_tokens = batch.b * batch.t;
        let (loss_v, grads) = if self.checkpoint_layers {
            self.base.loss_and_grads(&self.lora, &batch)?
        } else {
            let loss = self.base.loss(Some(&self.lora), &batch)?;
            (
                loss.to_dtype(DType::F64)?.to_scalar::<f64>()?,
                loss.backward()?,
            )
        };
        if !loss_v.is_finite() {
            return Err(FinetuneError::Param(format!(
                "loss became {loss_v} at step {step}: lower --lr"
            )));
        }
        self.opt.lr = lr_at(
            self.cfg.lr,
            step,
            self.cfg.schedule_steps,
            self.cfg.warmup_steps,
        );
        let vars = self.lora.vars();
        let gnorm = self.opt.step(&vars, &grads)?;
        self.log.write(json!({
            "event": "step", "step": step + 1, "epoch": step / self.per_epoch, "loss": loss_v,
            "lr": self.opt.lr, "grad_norm": gnorm, "tokens": n_tokens,
            "s": t0.elapsed().as_secs_f64(),
        }));
        Ok((loss_v, n_tokens))
    }

    /// The validation loss after `step`, logged (`None` without a
    /// validation set).
    fn validate(&mut self, step: usize) -> Result<Option<f64>, FinetuneError> {
        if self.ds.val.is_empty() {
            return Ok(None);
        }
        let v = eval_loss(&self.base, &self.lora, &self.ds.val, self.opts.batch)?;
        self.log
            .write(json!({"event": "val", "step": step, "val_loss": v}));
        Ok(Some(v))
    }

    /// Write the adapter and the checkpoint after step `done`, atomically.
    fn save(&mut self, done: usize) -> Result<(), FinetuneError> {
        self.lora.write(
            &self.adapter_path,
            &self.opts.name,
            &self.base.cfg,
            Some(&self.cfg.base_sha256),
            Some(self.engine.name()),
        )?;
        let vars = self.lora.vars();
        checkpoint::save(
            &self.ckpt_path,
            &Checkpoint {
                config: self.cfg.clone(),
                step: done,
                adam_t: self.opt.t,
                params: vars.iter().map(|v| v.as_tensor().clone()).collect(),
                m: moments(&self.opt.m, &vars)?,
                v: moments(&self.opt.v, &vars)?,
            },
        )?;
        self.log.write(json!({"event": "checkpoint", "step": done}));
        let title = format!("{} on {}", self.opts.name, self.engine.name());
        let svg = self.adapter_path.with_file_name("loss.svg");
        let log = self.adapter_path.with_file_name("log.jsonl");
        if let Err(e) = super::plot::write_loss_svg(&log, &svg, &title) {
            tracing::warn!(error = %crate::report(&e), "cannot draw loss.svg");
        }
        Ok(())
    }
}
