//! The `ferrite` command line: wires the stages together. Errors become one
//! line on stderr and exit code 1 (usage errors: 2); a closed stdout pipe ends
//! the program quietly.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

use ferrite::assistant;
use ferrite::board::{self, Board};
use ferrite::console::serial::{Serial, SerialSettings};
use ferrite::console::stdio::Stdio;
use ferrite::gguf::GgufFile;
use ferrite::llm::{self, Engine, GenParams, LoadOptions, SessionOptions};
use ferrite::models::{self, Manifest, Store};

#[derive(Parser)]
#[command(
    name = "ferrite",
    version,
    about = "An offline assistant for Raspberry Pi and Jetson: 4-bit GGUF models through llama.cpp"
)]
struct Cli {
    /// More logs on stderr (-v: info, llama.cpp included; -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Board profile: a name from boards/ or a path to a .toml file.
    #[arg(long, global = true, env = "FERRITE_BOARD", default_value = "host")]
    board: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Answer one prompt, streaming the answer to stdout.
    Ask {
        /// LoRA adapter: a name from the store or a .gguf path, optionally :SCALE (default 1).
        #[arg(long, value_name = "NAME|PATH[:SCALE]")]
        lora: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
        /// System prompt.
        #[arg(long)]
        system: Option<String>,
        /// Print load time, tokens/s and time-to-first-token to stderr.
        #[arg(long)]
        stats: bool,
        /// Continue the text as is, without the chat template.
        #[arg(long)]
        raw: bool,
        /// The question.
        #[arg(required = true, num_args = 1..)]
        prompt: Vec<String>,
    },
    /// Interactive multi-turn chat on stdin/stdout (/reset forgets, /quit ends).
    Chat {
        /// LoRA adapter: a name from the store or a .gguf path, optionally :SCALE (default 1).
        #[arg(long, value_name = "NAME|PATH[:SCALE]")]
        lora: Option<String>,
        #[command(flatten)]
        model: ModelArgs,
        #[command(flatten)]
        gen: GenArgs,
        #[arg(long)]
        system: Option<String>,
        #[arg(long)]
        stats: bool,
    },
    /// Serve the assistant on a serial port (or stdin/stdout): one line in,
    /// a streamed answer out. See the README for the protocol.
    Serve(ServeArgs),
    /// Spoken queries: microphone (or WAV files) → whisper → the assistant,
    /// answers streamed to the console (stdout unless --port). `serve --listen`
    /// is the same with typed queries from a serial port too.
    Listen(ServeArgs),
    /// Transcribe a WAV file (any rate and channel count) with whisper.cpp.
    Transcribe {
        /// The WAV file.
        file: PathBuf,
        /// Whisper model (same as --whisper).
        #[arg(short = 'm', long = "model")]
        model: Option<String>,
        /// CPU threads (same as --stt-threads).
        #[arg(short = 't', long = "threads")]
        threads: Option<usize>,
        #[command(flatten)]
        speech: SpeechArgs,
        /// Transcribe the whole file as one piece, without voice activity
        /// detection (silence may then come out as invented words).
        #[arg(long)]
        no_vad: bool,
        /// Print audio length, compute time and real-time factor to stderr.
        #[arg(long)]
        stats: bool,
    },
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        /// The text file.
        #[arg(short = 'f', long)]
        file: PathBuf,
    },
    /// Prompt-processing and generation speed, in llama-bench's format.
    Bench {
        #[arg(short = 'm', long)]
        model: Option<String>,
        /// Prompt tokens (pp test); 0 skips it.
        #[arg(short = 'p', long = "n-prompt", default_value_t = 512)]
        n_prompt: usize,
        /// Generated tokens (tg test); 0 skips it.
        #[arg(short = 'n', long = "n-gen", default_value_t = 128)]
        n_gen: usize,
        #[arg(short = 't', long)]
        threads: Option<i32>,
        /// Repetitions of each test.
        #[arg(short = 'r', long, default_value_t = 5)]
        reps: usize,
        #[arg(short = 'b', long = "batch-size", default_value_t = 2048)]
        n_batch: u32,
        #[arg(long = "ubatch-size", default_value_t = 512)]
        n_ubatch: u32,
        /// Print llama-bench's JSON (a list of objects) instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Board profiles: which one this machine is, and what it sets.
    Board {
        #[command(subcommand)]
        cmd: BoardCmd,
    },
    /// Train a LoRA adapter on this device from a JSONL file (chats or text).
    Finetune(FinetuneArgs),
    /// Manage the model store.
    Models {
        #[command(subcommand)]
        cmd: ModelsCmd,
    },
}

#[derive(Args)]
struct FinetuneArgs {
    /// Training data: JSONL, each line {"messages":[{"role":..,"content":..}]} or {"text":..}.
    #[arg(long)]
    data: PathBuf,
    /// Adapter name; it is stored under the store's adapters/NAME/.
    #[arg(long)]
    out: String,
    /// Base model name or GGUF path (default: the board's/manifest's default).
    #[arg(short = 'm', long)]
    model: Option<String>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// LoRA alpha (the update is scaled by alpha/rank).
    #[arg(long, default_value_t = 16.0)]
    alpha: f32,
    /// Projections to adapt: any of q,k,v,o,gate,up,down, or `all`.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    targets: String,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3, conflicts_with = "steps")]
    epochs: usize,
    /// Optimizer steps (instead of --epochs).
    #[arg(long)]
    steps: Option<usize>,
    /// Peak learning rate (warm-up, then cosine decay to a tenth).
    #[arg(long, default_value_t = 2e-4)]
    lr: f64,
    /// Examples per step.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Longest example in tokens (longer ones are cut).
    #[arg(long, default_value_t = 256)]
    seq: usize,
    /// Fraction of examples held out for validation loss.
    #[arg(long, default_value_t = 0.1)]
    val: f64,
    /// Validation examples from their own JSONL file (instead of --val).
    #[arg(long)]
    val_data: Option<PathBuf>,
    /// Seed for adapter initialisation and data order.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Continue from the adapter's last checkpoint (same data and settings).
    #[arg(long)]
    resume: bool,
    /// Write a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 50)]
    save_every: usize,
    /// CPU threads (default: the board's, else all cores).
    #[arg(short = 't', long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum BoardCmd {
    /// Name the profile that fits this machine (device tree, Jetson release file).
    Detect,
    /// Print a profile (default: --board) and the CPU/GPU features ggml sees.
    Show { name: Option<String> },
    /// List the shipped profiles.
    List,
}

#[derive(Subcommand)]
enum ModelsCmd {
    /// The manifest's models and imported ones, with what is pulled.
    List,
    /// Fetch a model (default: the default model) and verify its sha256.
    Pull { name: Option<String> },
    /// Re-hash pulled models (default: all) against their pinned sha256.
    Verify { name: Option<String> },
    /// Print the path of a pulled model.
    Path { name: String },
    /// Delete a model from the store.
    Rm { name: String },
    /// Copy a local GGUF into the store under a name, recording its hash.
    Import {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Convert a CTranslate2 Whisper model folder (model.bin, vocabulary.txt)
    /// to whisper.cpp's ggml format.
    ConvertWhisper {
        /// Folder with model.bin and vocabulary.txt.
        ct2_dir: PathBuf,
        /// Output file (e.g. ggml-tiny.en.bin).
        out: PathBuf,
    },
    /// Validate a GGUF file (or pulled model) and print what it holds.
    Info {
        /// A file path or a model name.
        model: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// LoRA adapter: a name from the store or a .gguf path, optionally :SCALE (default 1).
    #[arg(long, value_name = "NAME|PATH[:SCALE]")]
    lora: Option<String>,
    /// Serial port path (e.g. /dev/ttyUSB0, /dev/serial0); default: the board's.
    #[arg(long, conflicts_with = "stdio")]
    port: Option<String>,
    /// Use stdin/stdout instead of a serial port.
    #[arg(long)]
    stdio: bool,
    /// Baud rate (default: the board's, else 115200).
    #[arg(long)]
    baud: Option<u32>,
    #[arg(long, value_enum)]
    parity: Option<ferrite::console::serial::ParityOpt>,
    #[arg(long = "flow-control", value_enum)]
    flow_control: Option<ferrite::console::serial::FlowOpt>,
    /// Do not echo typed characters (for terminals that echo locally).
    #[arg(long)]
    no_echo: bool,
    /// One JSON object per line in ({"q":..} / {"cmd":..}) and out.
    #[arg(long)]
    json: bool,
    /// Longest accepted input line, in bytes.
    #[arg(long, default_value_t = 1024)]
    max_line: usize,
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    gen: GenArgs,
    /// Also take spoken queries (microphone, or --wav files).
    #[arg(long)]
    listen: bool,
    #[command(flatten)]
    ear: EarArgs,
}

#[derive(Args)]
struct EarArgs {
    /// ALSA capture device (default: the board's audio_device).
    #[arg(long, conflicts_with = "wav")]
    device: Option<String>,
    /// Listen to these WAV files instead of a microphone, then stop.
    #[arg(long, num_args = 1..)]
    wav: Vec<PathBuf>,
    /// Print the ALSA capture devices and exit.
    #[arg(long)]
    list_devices: bool,
    /// Push-to-talk button GPIO (BCM; default: the board's ptt_pin). Without
    /// one, voice activity detection cuts utterances.
    #[arg(long)]
    ptt_pin: Option<u8>,
    /// Status LED GPIO (BCM; default: the board's led_pin).
    #[arg(long)]
    led_pin: Option<u8>,
    #[command(flatten)]
    speech: SpeechArgs,
}

#[derive(Args, Clone)]
struct SpeechArgs {
    /// Whisper model name (whisper-tiny.en, whisper-base) or a ggml .bin path.
    #[arg(
        long = "whisper",
        visible_alias = "stt-model",
        default_value = "whisper-tiny.en"
    )]
    whisper: String,
    /// Spoken language (`auto` detects; English-only models take `en`).
    #[arg(long, default_value = "en")]
    language: String,
    /// CPU threads for whisper (default: the board's, else all cores).
    #[arg(long = "stt-threads")]
    stt_threads: Option<usize>,
    /// VAD: frames quieter than this (dBFS) are never speech.
    #[arg(long = "vad-db", default_value_t = -45.0, allow_negative_numbers = true)]
    vad_db: f32,
    /// VAD: silence that ends an utterance, in ms.
    #[arg(long = "vad-hangover-ms", default_value_t = 700)]
    vad_hangover_ms: u32,
    /// VAD: frames with a spectral flatness above this are noise (0..1).
    #[arg(long = "vad-flatness", default_value_t = 0.40)]
    vad_flatness: f32,
}

impl SpeechArgs {
    fn vad(&self) -> ferrite::speech::VadConfig {
        ferrite::speech::VadConfig {
            threshold_db: self.vad_db,
            hangover_ms: self.vad_hangover_ms,
            max_flatness: self.vad_flatness,
            ..Default::default()
        }
    }
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// Model name (see `ferrite models list`) or GGUF file path.
    #[arg(short = 'm', long)]
    model: Option<String>,
    /// CPU threads (default: the board's, else all cores).
    #[arg(short = 't', long)]
    threads: Option<i32>,
    /// Context size in tokens (default: the board's).
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<u32>,
    /// Layers to offload to the GPU (CUDA builds).
    #[arg(long = "n-gpu-layers", visible_alias = "ngl")]
    gpu_layers: Option<u32>,
}

#[derive(Args, Clone)]
struct GenArgs {
    /// Tokens to generate at most (-1: until the model stops).
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 256,
        allow_negative_numbers = true
    )]
    n_predict: i64,
    /// Temperature; 0 = greedy.
    #[arg(long, default_value_t = 0.2)]
    temp: f32,
    #[arg(long = "top-k", default_value_t = 40)]
    top_k: i32,
    #[arg(long = "top-p", default_value_t = 0.95)]
    top_p: f32,
    #[arg(long = "min-p", default_value_t = 0.05)]
    min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Tokens the penalties look back over.
    #[arg(long = "repeat-last-n", default_value_t = 64)]
    repeat_last_n: i32,
    #[arg(long = "frequency-penalty", default_value_t = 0.0)]
    frequency_penalty: f32,
    #[arg(long = "presence-penalty", default_value_t = 0.0)]
    presence_penalty: f32,
    /// Random seed (default: a fresh one each run).
    #[arg(short = 's', long)]
    seed: Option<u32>,
    /// Beam search of this width instead of sampling (short answers).
    #[arg(long, default_value_t = 0)]
    beams: usize,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
}

impl GenArgs {
    fn params(&self) -> GenParams {
        GenParams {
            n_predict: usize::try_from(self.n_predict).ok(),
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self.seed.unwrap_or(0xFFFF_FFFF),
            beams: self.beams,
            stop: self.stop.clone(),
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "ferrite=warn,llama_cpp_2=off",
        1 => "info,llama_cpp_2=info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("FERRITE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(verbose > 1)
        .init();
}

struct Ctx {
    board: Board,
    manifest: Manifest,
    store: Store,
}

impl Ctx {
    fn new(board: &str) -> anyhow::Result<Ctx> {
        let board = Board::load(board)?;
        let manifest = Manifest::load()?;
        let store = Store::new(models::home_dir(board.store_dir.as_deref()));
        Ok(Ctx {
            board,
            manifest,
            store,
        })
    }

    fn resolve(&self, spec: Option<&str>) -> anyhow::Result<(String, PathBuf)> {
        let spec = spec.or(self.board.default_model.as_deref());
        Ok(self.store.resolve(spec, &self.manifest, true)?)
    }

    fn load(&self, m: &ModelArgs) -> anyhow::Result<Engine> {
        let (name, path) = self.resolve(m.model.as_deref())?;
        let opts = self.session_opts(m, 0);
        let gguf = GgufFile::open(&path)?;
        board::check_fits(
            &self.board,
            &gguf,
            opts.ctx_tokens,
            opts.batch_tokens,
            Path::new("/"),
        )?;
        Ok(Engine::from_gguf(&name, gguf, &self.load_opts(m))?)
    }

    /// Load `--lora NAME|PATH[:SCALE]` into the engine, checked against it.
    fn load_lora(&self, engine: &mut Engine, spec: &str) -> anyhow::Result<(llm::AdapterId, f32)> {
        let (spec, scale) = llm::parse_adapter_spec(spec)?;
        let (name, path) = self.store.resolve_adapter(&spec, true)?;
        let sha = self.store.model_sha256(engine.name(), engine.path())?;
        let id = engine.load_adapter(&name, &path, Some(&sha))?;
        Ok((id, scale))
    }

    /// Load the whisper model `--whisper` names (pulling it when missing).
    fn transcriber(&self, a: &SpeechArgs) -> anyhow::Result<ferrite::speech::Transcriber> {
        let (_, path) = self.store.resolve(Some(&a.whisper), &self.manifest, true)?;
        let threads = a
            .stt_threads
            .unwrap_or_else(|| self.board.threads() as usize);
        Ok(ferrite::speech::Transcriber::load(
            &path,
            threads,
            &a.language,
        )?)
    }

    fn load_opts(&self, m: &ModelArgs) -> LoadOptions {
        LoadOptions {
            gpu_layers: m.gpu_layers.unwrap_or(self.board.gpu_layers),
        }
    }

    fn session_opts(&self, m: &ModelArgs, beams: usize) -> SessionOptions {
        SessionOptions {
            ctx_tokens: m.ctx_size.unwrap_or(self.board.ctx_tokens),
            threads: m.threads.unwrap_or_else(|| self.board.threads()),
            max_beams: beams,
            ..SessionOptions::default()
        }
    }
}

/// Writes answer pieces to stdout as they come; a closed pipe cancels.
fn stdout_sink(broken: &mut bool) -> impl FnMut(&str) -> ControlFlow<()> + '_ {
    move |piece: &str| {
        let mut out = std::io::stdout().lock();
        if out
            .write_all(piece.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            *broken = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx::new(&cli.board)?;
    match cli.cmd {
        Cmd::Ask {
            lora,
            model,
            gen,
            system,
            stats,
            raw,
            prompt,
        } => {
            let mut engine = ctx.load(&model)?;
            let adapter = lora.map(|l| ctx.load_lora(&mut engine, &l)).transpose()?;
            let mut sess = engine.session(ctx.session_opts(&model, gen.beams))?;
            sess.set_adapter(adapter)?;
            sess.set_system(system);
            let prompt = prompt.join(" ");
            let params = gen.params();
            let mut broken = false;
            let reply = {
                let mut sink = stdout_sink(&mut broken);
                if raw {
                    sess.complete(&prompt, &params, &mut sink)?
                } else {
                    sess.ask(&prompt, &params, &mut sink)?
                }
            };
            if broken {
                return Ok(());
            }
            println!();
            if stats {
                eprintln!("{} | finish {:?}", reply.stats, reply.finish);
            }
        }
        Cmd::Chat {
            lora,
            model,
            gen,
            system,
            stats,
        } => {
            let mut engine = ctx.load(&model)?;
            let adapter = lora.map(|l| ctx.load_lora(&mut engine, &l)).transpose()?;
            let mut sess = engine.session(ctx.session_opts(&model, gen.beams))?;
            sess.set_adapter(adapter)?;
            sess.set_system(system);
            let params = gen.params();
            let interactive = std::io::stdin().is_terminal();
            if interactive {
                eprintln!(
                    "ferrite {} model={} ctx={} — /reset forgets, /quit ends",
                    ferrite::VERSION,
                    engine.name(),
                    sess.n_ctx()
                );
            }
            let stdin = std::io::stdin();
            let mut lines = stdin.lock().lines();
            loop {
                if interactive {
                    print!("> ");
                    std::io::stdout().flush().ok();
                }
                let Some(line) = lines.next() else { break };
                let line = line.context("reading stdin")?;
                let line = line.trim();
                match line {
                    "" => continue,
                    "/quit" | "/exit" => break,
                    "/reset" => {
                        sess.reset();
                        println!("(conversation forgotten)");
                        continue;
                    }
                    _ => {}
                }
                let mut broken = false;
                let reply = sess.ask(line, &params, &mut stdout_sink(&mut broken))?;
                if broken {
                    return Ok(());
                }
                println!();
                if stats {
                    eprintln!("{}", reply.stats);
                }
            }
        }
        Cmd::Transcribe {
            file,
            model,
            threads,
            mut speech,
            no_vad,
            stats,
        } => {
            speech.whisper = model.unwrap_or(speech.whisper);
            speech.stt_threads = threads.or(speech.stt_threads);
            let wav = ferrite::speech::wav::read(&file)?;
            let pcm = wav.to_pcm16k();
            let stt = ctx.transcriber(&speech)?;
            let audio_s = pcm.seconds();
            let pieces = if no_vad {
                vec![pcm]
            } else {
                ferrite::speech::Vad::split(speech.vad(), &pcm)
            };
            let mut texts = Vec::new();
            let mut compute = 0.0;
            for p in &pieces {
                let t = stt.transcribe(p)?;
                compute += t.compute_s;
                if !t.text.is_empty() {
                    texts.push(t.text);
                }
            }
            println!("{}", texts.join(" "));
            if stats {
                eprintln!(
                    "audio {audio_s:.2} s | {} utterance(s) | compute {compute:.2} s | real-time factor {:.3}",
                    pieces.len(),
                    compute / audio_s.max(1e-9)
                );
            }
        }
        Cmd::Perplexity { model, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("{}: cannot read the text file", file.display()))?;
            let engine = ctx.load(&model)?;
            let opts = ctx.session_opts(&model, 0);
            let n_ctx = model.ctx_size.unwrap_or(512);
            let mut out = std::io::stdout();
            let r = llm::perplexity(&engine, &text, n_ctx, opts.threads, &mut |i, _n, est| {
                let _ = write!(out, "[{i}]{est:.4},");
                let _ = out.flush();
            })?;
            println!();
            println!(
                "Final estimate: PPL = {:.4} +/- {:.5}  ({} tokens, {} chunks of {}, {:.1} s)",
                r.ppl,
                r.ppl_err,
                r.n_tokens,
                r.chunks.len(),
                r.n_ctx,
                r.seconds
            );
        }
        Cmd::Bench {
            model,
            n_prompt,
            n_gen,
            threads,
            reps,
            n_batch,
            n_ubatch,
            json,
        } => {
            if reps == 0 {
                bail!("-r must be at least 1");
            }
            let margs = ModelArgs {
                model,
                threads,
                ctx_size: None,
                gpu_layers: None,
            };
            let engine = ctx.load(&margs)?;
            let opts = llm::BenchOptions {
                n_prompt,
                n_gen,
                threads: threads.unwrap_or_else(|| ctx.board.threads()),
                reps,
                n_batch,
                n_ubatch,
            };
            let pb = indicatif::ProgressBar::new_spinner();
            let results = llm::run_bench(&engine, &opts, &mut |m| pb.set_message(m.to_string()))?;
            pb.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                println!("{}", llm::BenchResult::markdown_header());
                for r in &results {
                    println!("{}", r.markdown_row());
                }
            }
        }
        Cmd::Serve(a) => serve_cmd(&ctx, a, false)?,
        Cmd::Listen(a) => serve_cmd(&ctx, a, true)?,
        Cmd::Models { cmd } => models_cmd(&ctx, cmd)?,
        Cmd::Finetune(args) => finetune_cmd(&ctx, args)?,
        Cmd::Board { cmd } => match cmd {
            BoardCmd::Detect => {
                let d = board::detect(Path::new("/"));
                println!("{}", d.profile);
                if let Some(m) = d.model {
                    eprintln!("device tree model: {m}");
                }
            }
            BoardCmd::List => {
                for n in Board::names() {
                    let b = Board::load(n)?;
                    println!("{:<18} {}", n, b.description);
                }
            }
            BoardCmd::Show { name } => {
                let b = match name {
                    Some(n) => Board::load(&n)?,
                    None => ctx.board.clone(),
                };
                print!("{}", b.to_toml());
                println!();
                println!("# seen at run time");
                println!(
                    "# build: {} {}",
                    std::env::consts::ARCH,
                    if cfg!(feature = "cuda") {
                        "cuda"
                    } else {
                        "cpu"
                    }
                );
                // ggml's kernels are what matter (the next line); this is
                // only the Rust side, which armv7's target leaves without NEON.
                println!(
                    "# rust code: {} with NEON {}",
                    std::env::consts::ARCH,
                    if cfg!(target_feature = "neon") {
                        "on"
                    } else {
                        "off"
                    }
                );
                println!("# ggml: {}", llm::system_info()?);
                let gpus = llm::gpu_devices()?;
                if gpus.is_empty() {
                    if cfg!(feature = "cuda") {
                        println!("# WARNING: CUDA build but no GPU found: all {} requested layers will run on the CPU", b.gpu_layers);
                    } else {
                        println!("# gpu: none (CPU build); layers on GPU: 0");
                    }
                } else {
                    for g in &gpus {
                        println!("# gpu: {g}");
                    }
                    println!(
                        "# layers on GPU: up to {} (gpu_layers / --n-gpu-layers)",
                        b.gpu_layers
                    );
                }
                if let Some(t) =
                    board::Governor::new(&b, b.threads(), Path::new("/")).temperature_c()
                {
                    println!(
                        "# soc temperature: {t:.1} °C (limit {:.1})",
                        b.thermal_limit_c
                    );
                }
                if let Some(a) = board::available_bytes(Path::new("/")) {
                    println!("# memory available: {} MiB", a >> 20);
                }
            }
        },
    }
    Ok(())
}

/// `serve` and `listen`: the assistant loop on a console, with spoken queries
/// when `--listen` (always for `listen`).
fn serve_cmd(ctx: &Ctx, a: ServeArgs, listen: bool) -> anyhow::Result<()> {
    use ferrite::hw;
    use ferrite::speech::{self, AudioSource};
    let listen = listen || a.listen;
    if a.ear.list_devices {
        for d in speech::capture::list_devices()? {
            println!("{:<28} {}", d.name, d.description);
        }
        return Ok(());
    }
    if a.max_line < 16 {
        bail!("--max-line must be at least 16 bytes");
    }
    // `listen` talks to the terminal unless a port is named.
    let stdio = a.stdio
        || (listen
            && a.port.is_none()
            && (!a.ear.wav.is_empty() || ctx.board.serial_port.is_none()));
    let opts = assistant::ServeOptions {
        lora: a.lora,
        model: a.model.model.clone().or(ctx.board.default_model.clone()),
        load: ctx.load_opts(&a.model),
        session: ctx.session_opts(&a.model, a.gen.beams),
        params: a.gen.params(),
        system: a.system,
        echo: !a.no_echo && !stdio,
        json: a.json,
        max_line_bytes: a.max_line,
        board: ctx.board.clone(),
        sys_root: assistant::default_sys_root(),
    };
    let mut led = None;
    let ear = if listen {
        let e = &a.ear;
        let stt = ctx.transcriber(&e.speech)?;
        let source: Box<dyn AudioSource + Send> = if e.wav.is_empty() {
            let dev = e.device.clone().unwrap_or(ctx.board.audio_device.clone());
            Box::new(speech::capture::AlsaSource::open(&dev)?)
        } else {
            // The files one after another, a second of silence between.
            let mut all = Vec::new();
            for f in &e.wav {
                all.extend(speech::wav::read(f)?.to_pcm16k().0);
                all.extend(std::iter::repeat_n(0.0, speech::SAMPLE_RATE as usize));
            }
            Box::new(speech::WavSource::new(speech::Pcm16k(all)))
        };
        let ptt = e
            .ptt_pin
            .or(if e.wav.is_empty() {
                ctx.board.ptt_pin
            } else {
                None
            })
            .map(hw::button)
            .transpose()?;
        let status = hw::StatusCell::default();
        if let Some(pin) = e.led_pin.or(ctx.board.led_pin) {
            match hw::led(pin) {
                Ok(pin) => {
                    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                    let thread = hw::spawn_led(pin, status.clone(), stop.clone());
                    led = Some((stop, thread));
                }
                Err(err) if e.led_pin.is_none() => {
                    tracing::warn!(error = %err, "no status LED")
                }
                Err(err) => return Err(err.into()),
            }
        }
        let heard = speech::listen::spawn(source, stt, e.speech.vad(), ptt, status.clone());
        Some(assistant::Ear { heard, status })
    } else {
        None
    };
    let result = if stdio {
        assistant::serve(
            &opts,
            &ctx.store,
            &ctx.manifest,
            &mut Stdio::new(),
            ear.as_ref(),
        )
    } else {
        let path = a.port.or(ctx.board.serial_port.clone()).context(
            "no serial port: pass --port PATH (or --stdio), or set serial_port in the board profile",
        )?;
        let mut serial = Serial::new(SerialSettings {
            path,
            baud: a.baud.unwrap_or(ctx.board.baud),
            parity: a.parity.unwrap_or(ctx.board.parity),
            flow: a.flow_control.unwrap_or(ctx.board.flow_control),
        });
        assistant::serve(&opts, &ctx.store, &ctx.manifest, &mut serial, ear.as_ref())
    };
    // Leave the LED off, not in whatever state it was in.
    if let Some((stop, thread)) = led {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = thread.join();
    }
    Ok(result?)
}

fn models_cmd(ctx: &Ctx, cmd: ModelsCmd) -> anyhow::Result<()> {
    match cmd {
        ModelsCmd::List => {
            println!("store: {}", ctx.store.root().display());
            println!(
                "{:<16} {:<7} {:>10}  {:<20} description",
                "name", "pulled", "size", "license"
            );
            for l in ctx.store.list(&ctx.manifest) {
                println!(
                    "{:<16} {:<7} {:>10}  {:<20} {}{}",
                    l.name,
                    if l.pulled { "yes" } else { "no" },
                    format!("{:.1} MB", l.size as f64 / 1e6),
                    l.license,
                    l.description,
                    if l.default { " (default)" } else { "" }
                );
            }
            let adapters = ctx.store.adapters();
            if !adapters.is_empty() {
                println!("\nadapters (use with --lora NAME or /lora use NAME):");
                for (n, p) in adapters {
                    match ferrite::adapter::inspect(&p) {
                        Ok((i, _)) => println!(
                            "{n:<16} rank {:<3} alpha {:<5} targets {:<22} base {}",
                            i.rank,
                            i.alpha,
                            i.targets,
                            i.base_name.as_deref().unwrap_or("?")
                        ),
                        Err(e) => println!("{n:<16} unreadable: {e}"),
                    }
                }
            }
        }
        ModelsCmd::Pull { name } => {
            let entry = match name.as_deref().or(ctx.board.default_model.as_deref()) {
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
            println!("{}", p.display());
        }
        ModelsCmd::Verify { name } => {
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
                    Ok(p) => println!("{n}: ok ({})", p.display()),
                    Err(e) => {
                        println!("{n}: FAILED: {e}");
                        bad += 1;
                    }
                }
            }
            if bad > 0 {
                bail!("{bad} model(s) failed verification");
            }
        }
        ModelsCmd::ConvertWhisper { ct2_dir, out } => {
            let c = ferrite::speech::convert_whisper(&ct2_dir, &out)?;
            let (sha, size) = models::sha256_file(&out)?;
            println!(
                "{}: {} tensors, {} encoder + {} decoder layers, d={}, vocab {}; {size} bytes, sha256 {sha}",
                out.display(),
                c.tensors,
                c.hparams.n_audio_layer,
                c.hparams.n_text_layer,
                c.hparams.n_audio_state,
                c.hparams.n_vocab
            );
        }
        ModelsCmd::Path { name } => println!("{}", ctx.store.path(&name)?.display()),
        ModelsCmd::Rm { name } => {
            if ctx.store.remove(&name)? {
                println!("removed {name}");
            } else {
                bail!("model `{name}` is not in the store");
            }
        }
        ModelsCmd::Import { file, name } => {
            let (name, p) = ctx.store.import(&file, name.as_deref())?;
            println!("imported {name}: {}", p.display());
        }
        ModelsCmd::Info { model, json } => {
            let path = match ctx.store.resolve(Some(&model), &ctx.manifest, false) {
                Ok((_, p)) => p,
                Err(e) => return Err(e.into()),
            };
            if ferrite::speech::whisper::is_whisper_file(&path) {
                let hp = ferrite::speech::whisper::check_model(&path)?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(
                            &serde_json::json!({ "path": path, "whisper": hp })
                        )?
                    );
                } else {
                    println!("path:           {}", path.display());
                    println!(
                        "whisper.cpp model: {} encoder + {} decoder layers, d={}, {} heads, vocab {} ({}), {} mels",
                        hp.n_audio_layer,
                        hp.n_text_layer,
                        hp.n_audio_state,
                        hp.n_audio_head,
                        hp.n_vocab,
                        if hp.n_vocab >= 51865 { "multilingual" } else { "English only" },
                        hp.n_mels
                    );
                    println!("loadable:       yes");
                }
                return Ok(());
            }
            let g = GgufFile::open(&path)?;
            let s = g.summary();
            let ready = g.check_model();
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("path:           {}", path.display());
                println!("{s}");
                match &ready {
                    Ok(()) => println!("loadable:       yes"),
                    Err(e) => println!("loadable:       no: {e}"),
                }
            }
        }
    }
    Ok(())
}

fn finetune_cmd(ctx: &Ctx, a: FinetuneArgs) -> anyhow::Result<()> {
    let threads = a
        .threads
        .unwrap_or_else(|| ctx.board.threads() as usize)
        .max(1);
    // candle's matmuls and ferrite's kernels share rayon's pool, sized once.
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .ok();
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    let targets = ferrite::finetune::Target::parse_list(&a.targets).map_err(anyhow::Error::msg)?;
    let dir = ctx.store.adapter_dir(&a.out)?;
    let (name, path) = ctx.resolve(a.model.as_deref())?;
    let sha = ctx.store.model_sha256(&name, &path)?;
    let engine = Engine::load(&name, &path, &LoadOptions::default())?;
    let opts = ferrite::finetune::FinetuneOptions {
        data: a.data,
        val_data: a.val_data,
        name: a.out.clone(),
        rank: a.rank,
        alpha: a.alpha,
        targets,
        epochs: a.epochs,
        steps: a.steps,
        lr: a.lr,
        batch: a.batch,
        seq: a.seq,
        val: a.val,
        seed: a.seed,
        resume: a.resume,
        save_every: a.save_every,
        progress: std::io::stderr().is_terminal(),
    };
    let s = ferrite::finetune::finetune(&engine, &sha, &opts, &dir)?;
    let val = match (s.val_loss_start, s.val_loss_end) {
        (Some(a), Some(b)) => format!(", validation loss {a:.4} -> {b:.4}"),
        _ => String::new(),
    };
    eprintln!(
        "trained `{}` on {name}: {} steps ({} examples, {} trainable parameters), last loss {:.4}{val}; {:.2} s/step, {:.0} tokens/s",
        a.out, s.steps, s.train_examples, s.trainable_params, s.last_loss, s.s_per_step, s.tokens_per_s
    );
    println!("{}", s.adapter.display());
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            ExitCode::FAILURE
        }
    }
}
