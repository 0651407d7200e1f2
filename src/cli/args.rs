//! The command line as clap parses it: every command, flag and range, named
//! as llama.cpp names them where it has them. Nothing here reads the board
//! profile or the environment (that is `settings`); values are checked for
//! their type and fixed range here, and against the model (context,
//! vocabulary) once it is loaded.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use ferrite::llm::GenParams;

#[derive(Parser)]
#[command(
    name = "ferrite",
    version,
    about = "An offline assistant for Raspberry Pi and Jetson: 4-bit GGUF models through llama.cpp"
)]
pub(crate) struct Cli {
    /// More logs on stderr (-v: info, llama.cpp included; -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Board profile: `auto` (detected: `ferrite board detect`), a name from
    /// boards/, or a path to a .toml file.
    #[arg(long, global = true, env = "FERRITE_BOARD", default_value = "auto")]
    pub(crate) board: String,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Answer one prompt, streaming the answer to stdout.
    Ask(AskArgs),
    /// Interactive multi-turn chat on stdin/stdout (/reset forgets, /quit
    /// ends; Ctrl-C stops an answer, and at the prompt ends the chat).
    Chat(ChatArgs),
    /// Serve the assistant on a serial port (or stdin/stdout): one line in,
    /// a streamed answer out; or, with --http, the OpenAI-compatible API.
    /// See the README for the protocols.
    Serve(ServeArgs),
    /// Spoken queries: microphone (or WAV files) → whisper → the assistant,
    /// answers streamed to the console (stdout unless --port). `serve --listen`
    /// is the same with typed queries from a serial port too.
    Listen(ServeArgs),
    /// Transcribe a WAV file (any rate and channel count) with whisper.cpp.
    Transcribe(TranscribeArgs),
    /// Speak text with a Piper voice: to the speaker, or to a WAV file (-o).
    Say(SayArgs),
    /// Perplexity of a text file, computed as llama.cpp's llama-perplexity does.
    Perplexity(PerplexityArgs),
    /// Prompt-processing and generation speed, in llama-bench's format.
    Bench(BenchArgs),
    /// Board profiles: which one this machine is, and what it sets.
    Board {
        #[command(subcommand)]
        cmd: BoardCmd,
    },
    /// Train a LoRA adapter on this device from a JSONL file (chats or text).
    Finetune(FinetuneArgs),
    /// Score a model's (or an adapter's) greedy answers against held-out
    /// chats: exact, contains, BLEU, chrF, ROUGE-L, accuracy, perplexity.
    Eval(EvalArgs),
    /// Serve this board's CPU (or GPU) to a main board that splits a model
    /// across boards (--rpc): ggml's RPC server, as llama.cpp's rpc-server.
    RpcServer(RpcServerArgs),
    /// Manage the model store.
    Models {
        #[command(subcommand)]
        cmd: ModelsCmd,
    },
}

#[derive(Args)]
pub(crate) struct AskArgs {
    /// LoRA adapter: a name from the store or a .gguf path, optionally :SCALE (default 1).
    #[arg(long, value_name = "NAME|PATH[:SCALE]")]
    pub(crate) lora: Option<String>,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) gen: GenArgs,
    #[command(flatten)]
    pub(crate) draft: DraftArgs,
    /// System prompt.
    #[arg(long)]
    pub(crate) system: Option<String>,
    /// Keep the system prompt's evaluated state in the store
    /// (`prompt-cache/`, keyed by model, adapter, context and prompt) and
    /// load it at the next start instead of evaluating it again.
    #[arg(long = "prompt-cache")]
    pub(crate) prompt_cache: bool,
    /// Print load time, tokens/s and time-to-first-token to stderr.
    #[arg(long)]
    pub(crate) stats: bool,
    /// Continue the text as is, without the chat template.
    #[arg(long)]
    pub(crate) raw: bool,
    /// The question.
    #[arg(required = true, num_args = 1..)]
    pub(crate) prompt: Vec<String>,
}

#[derive(Args)]
pub(crate) struct ChatArgs {
    /// LoRA adapter: a name from the store or a .gguf path, optionally :SCALE (default 1).
    #[arg(long, value_name = "NAME|PATH[:SCALE]")]
    pub(crate) lora: Option<String>,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) gen: GenArgs,
    #[command(flatten)]
    pub(crate) draft: DraftArgs,
    /// System prompt.
    #[arg(long)]
    pub(crate) system: Option<String>,
    /// Keep the system prompt's evaluated state in the store
    /// (`prompt-cache/`, keyed by model, adapter, context and prompt) and
    /// load it at the next start instead of evaluating it again.
    #[arg(long = "prompt-cache")]
    pub(crate) prompt_cache: bool,
    /// Print each answer's tokens/s and time-to-first-token to stderr.
    #[arg(long)]
    pub(crate) stats: bool,
}

#[derive(Args)]
pub(crate) struct TranscribeArgs {
    /// The WAV file.
    pub(crate) file: PathBuf,
    /// Whisper model (same as --whisper).
    #[arg(short = 'm', long = "model")]
    pub(crate) model: Option<String>,
    /// CPU threads (same as --stt-threads).
    #[arg(short = 't', long = "threads", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) threads: Option<u32>,
    #[command(flatten)]
    pub(crate) speech: SpeechArgs,
    /// Transcribe the whole file as one piece, without voice activity
    /// detection (silence may then come out as invented words).
    #[arg(long)]
    pub(crate) no_vad: bool,
    /// Print audio length, compute time and real-time factor to stderr.
    #[arg(long)]
    pub(crate) stats: bool,
}

#[derive(Args)]
pub(crate) struct SayArgs {
    /// What to say (several words are joined; `-` reads stdin).
    #[arg(required = true)]
    pub(crate) text: Vec<String>,
    /// Write a 16-bit WAV file at the voice's rate instead of playing.
    #[arg(short = 'o', long = "output")]
    pub(crate) output: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) voice: VoiceArgs,
    /// Print audio length, compute time and real-time factor to stderr.
    #[arg(long)]
    pub(crate) stats: bool,
}

/// How answers are spoken (`say`, `listen --speak`).
#[derive(Args, Clone)]
pub(crate) struct VoiceArgs {
    /// Piper voice: a model name (pulled on first use) or an .onnx path
    /// with its .onnx.json beside it; `espeak` or `espeak:VOICE` for
    /// espeak-ng's own voice (robotic, no download).
    #[arg(long, default_value = "piper-joe-medium")]
    pub(crate) voice: String,
    /// Speaking rate: 2 is twice as fast (Piper's length scale divided by it).
    #[arg(long, default_value_t = 1.0)]
    pub(crate) rate: f32,
    /// ALSA playback device (`default`, `plughw:1,0`; `null` discards;
    /// default: the board's audio_out_device).
    #[arg(long = "audio-out")]
    pub(crate) audio_out: Option<String>,
    /// CPU threads for the voice (default: the board's, else all cores).
    #[arg(long = "tts-threads", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) tts_threads: Option<u32>,
    /// Piper's sampling noise, 0 to 2 (default: the voice's, 0.667 for
    /// most); 0 with --noise-w-scale 0 gives the same audio on every run.
    #[arg(long = "noise-scale")]
    pub(crate) noise_scale: Option<f32>,
    /// Piper's phoneme-length noise, 0 to 2 (default: the voice's, 0.8 for
    /// most).
    #[arg(long = "noise-w-scale")]
    pub(crate) noise_w: Option<f32>,
}

impl VoiceArgs {
    /// The speaking options, range-checked.
    pub(crate) fn options(&self) -> anyhow::Result<ferrite::tts::SpeakOptions> {
        if !(0.25..=4.0).contains(&self.rate) {
            anyhow::bail!("--rate must be from 0.25 to 4, not {}", self.rate);
        }
        for (flag, v) in [
            ("--noise-scale", self.noise_scale),
            ("--noise-w-scale", self.noise_w),
        ] {
            if let Some(v) = v.filter(|v| !(0.0..=2.0).contains(v)) {
                anyhow::bail!("{flag} must be from 0 to 2, not {v}");
            }
        }
        Ok(ferrite::tts::SpeakOptions {
            rate: self.rate,
            noise_scale: self.noise_scale,
            noise_w: self.noise_w,
            ..Default::default()
        })
    }
}

#[derive(Args)]
pub(crate) struct PerplexityArgs {
    /// LoRA adapter applied to every chunk (llama-perplexity's --lora): a
    /// name from the store or a .gguf path, optionally :SCALE (default 1).
    #[arg(long, value_name = "NAME|PATH[:SCALE]")]
    pub(crate) lora: Option<String>,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// The text file.
    #[arg(short = 'f', long)]
    pub(crate) file: PathBuf,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    /// Model name or GGUF path (default: the board's/manifest's default).
    #[arg(short = 'm', long)]
    pub(crate) model: Option<String>,
    /// Prompt tokens (pp test); 0 skips it.
    #[arg(short = 'p', long = "n-prompt", default_value_t = 512, value_parser = clap::value_parser!(u32).range(0..=1 << 20))]
    pub(crate) n_prompt: u32,
    /// Generated tokens (tg test); 0 skips it.
    #[arg(short = 'n', long = "n-gen", default_value_t = 128, value_parser = clap::value_parser!(u32).range(0..=1 << 20))]
    pub(crate) n_gen: u32,
    /// CPU threads (default: the board's, else every core).
    #[arg(short = 't', long, value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub(crate) threads: Option<i32>,
    /// Repetitions of each test.
    #[arg(short = 'r', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) reps: u32,
    /// Logical batch size (llama-bench's -b).
    #[arg(short = 'b', long = "batch-size", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1 << 16))]
    pub(crate) n_batch: u32,
    #[arg(long = "ubatch-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1 << 16))]
    pub(crate) n_ubatch: u32,
    /// Layers offloaded to the GPU (llama-bench's -ngl; CUDA builds; default:
    /// the board's gpu_layers).
    #[arg(long = "n-gpu-layers", visible_alias = "ngl")]
    pub(crate) gpu_layers: Option<u32>,
    /// Print llama-bench's JSON (a list of objects) instead of the table.
    #[arg(long)]
    pub(crate) json: bool,
    /// KV cache type for K (llama-bench's -ctk): f16, q8_0 or q4_0.
    #[arg(long = "cache-type-k", visible_alias = "ctk", value_name = "TYPE")]
    pub(crate) cache_type_k: Option<ferrite::board::KvType>,
    /// KV cache type for V (llama-bench's -ctv).
    #[arg(long = "cache-type-v", visible_alias = "ctv", value_name = "TYPE")]
    pub(crate) cache_type_v: Option<ferrite::board::KvType>,
    #[command(flatten)]
    pub(crate) rpc: RpcArgs,
    /// With --draft or --lookup: speculative decoding against plain decoding
    /// on real questions (random tokens cannot be drafted), -n tokens each,
    /// greedy, -r runs of each alternated.
    #[command(flatten)]
    pub(crate) draft: DraftArgs,
    /// With --draft or --lookup: a question to answer instead of the built-in
    /// code, prose and edit prompts (repeat for several).
    #[arg(long, value_name = "TEXT")]
    pub(crate) question: Vec<String>,
}

#[derive(Args)]
pub(crate) struct FinetuneArgs {
    /// Training data: JSONL, each line {"messages":[{"role":..,"content":..}]} or {"text":..}.
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Adapter name; it is stored under the store's adapters/NAME/.
    #[arg(long)]
    pub(crate) out: String,
    /// Base model name or GGUF path (default: the board's/manifest's default).
    #[arg(short = 'm', long)]
    pub(crate) model: Option<String>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) rank: u32,
    /// LoRA alpha (the update is scaled by alpha/rank).
    #[arg(long, default_value_t = 16.0)]
    pub(crate) alpha: f32,
    /// Projections to adapt: any of q,k,v,o,gate,up,down, or `all`.
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    pub(crate) targets: String,
    /// Passes over the training data.
    #[arg(long, default_value_t = 3, conflicts_with = "steps", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) epochs: u32,
    /// Optimizer steps (instead of --epochs).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub(crate) steps: Option<u32>,
    /// Peak learning rate (warm-up, then cosine decay to a tenth).
    #[arg(long, default_value_t = 2e-4)]
    pub(crate) lr: f64,
    /// Examples per step.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub(crate) batch: u32,
    /// Longest example in tokens (longer ones are cut).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(2..=1 << 20))]
    pub(crate) seq: u32,
    /// Fraction of examples held out for validation loss (default: 0.1 of a
    /// dataset of 20 examples or more; none of a smaller one, whose every
    /// example is a fact to learn).
    #[arg(long)]
    pub(crate) val: Option<f64>,
    /// Validation examples from their own JSONL file (instead of --val).
    #[arg(long, conflicts_with = "val")]
    pub(crate) val_data: Option<PathBuf>,
    /// Held-out chats (as `ferrite eval --data` takes them) answered before
    /// and after training; the scores go to log.jsonl and stderr.
    #[arg(long, value_name = "FILE")]
    pub(crate) eval_data: Option<PathBuf>,
    /// General examples (same JSONL format) mixed into training, so the
    /// adapter keeps what the base model knew; in proportion to the files'
    /// sizes.
    #[arg(long, value_name = "FILE")]
    pub(crate) replay: Option<PathBuf>,
    /// Seed for adapter initialisation and data order.
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Continue from the adapter's last checkpoint (same data and settings).
    #[arg(long)]
    pub(crate) resume: bool,
    /// Gradient checkpointing: recompute each layer in the backward pass so
    /// activation memory is one layer's, not all of them (about a third
    /// more compute per step). auto: only when the run would not fit
    /// otherwise.
    #[arg(long, value_name = "auto|on|off", default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub(crate) checkpoint_layers: String,
    /// Write a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) save_every: u32,
    /// CPU threads (default: the board's, else all cores).
    #[arg(short = 't', long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) threads: Option<u32>,
}

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Test data: JSONL chats, each ending in the assistant's reference answer
    /// ({"messages":[{"role":"user",..},{"role":"assistant","content":"reference"}]}).
    #[arg(long)]
    pub(crate) data: PathBuf,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Evaluate with this LoRA adapter (name or .gguf path, optionally :SCALE).
    #[arg(long, value_name = "NAME|PATH[:SCALE]", conflicts_with = "compare")]
    pub(crate) lora: Option<String>,
    /// Evaluate the base model and this adapter on the same data, and print
    /// the change per metric.
    #[arg(long, value_name = "NAME|PATH[:SCALE]")]
    pub(crate) compare: Option<String>,
    /// Comma-separated: exact, contains, bleu, chrf, rouge-l, accuracy
    /// (answers held to the references' labels), perplexity, or all.
    #[arg(long, default_value = ferrite::eval::Metric::DEFAULT)]
    pub(crate) metrics: String,
    /// Tokens per answer at most.
    #[arg(short = 'n', long = "n-predict", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    pub(crate) n_predict: u32,
    /// Print the report as JSON (per-example answers and scores included).
    #[arg(long)]
    pub(crate) json: bool,
    /// Write a bar chart of the scores (SVG) to this file.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) chart: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum BoardCmd {
    /// Name the profile that fits this machine (device tree, Jetson release file).
    Detect,
    /// Print a profile (default: --board) and the CPU/GPU features ggml sees,
    /// and the devices of its rpc_servers (or --rpc's).
    Show {
        name: Option<String>,
        /// RPC servers to list instead of the profile's rpc_servers.
        #[arg(long, value_name = "HOST:PORT,...", value_parser = parse_rpc)]
        rpc: Option<RpcList>,
    },
    /// List the shipped profiles.
    List,
}

#[derive(Subcommand)]
pub(crate) enum ModelsCmd {
    /// The manifest's models and imported ones, with what is pulled, and
    /// the LoRA adapters `ferrite finetune` trained.
    List,
    /// Fetch a model (default: the default model) and verify its sha256.
    Pull { name: Option<String> },
    /// Re-hash pulled models (default: all) against their pinned sha256.
    Verify { name: Option<String> },
    /// Print the path of a pulled model.
    Path { name: String },
    /// Delete a model, or an adapter (its folder), from the store; a model
    /// of the name goes first.
    Rm { name: String },
    /// Copy a model file into the store: a file whose sha256 the manifest
    /// pins is filed under that model's name (GGUF or whisper.cpp .bin);
    /// any other GGUF under --name or its file name. A folder imports every
    /// pinned file in it (a USB stick).
    Import {
        /// A model file, or a folder of them.
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
    /// Convert Silero VAD's safetensors (from the `silero-vad` package) to
    /// whisper.cpp's VAD model format.
    ConvertVad {
        /// silero_vad_16k.safetensors (or a folder holding it as model.bin).
        src: PathBuf,
        /// Output file (e.g. ggml-silero-vad.bin).
        out: PathBuf,
    },
    /// Validate a GGUF file (or pulled model) and print what it holds; for
    /// an adapter's name, its base model, rank, targets and training.
    Info {
        /// A file path, a model name or an adapter name.
        model: String,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// LoRA adapter: a name from the store or a .gguf path, optionally :SCALE (default 1).
    #[arg(long, value_name = "NAME|PATH[:SCALE]")]
    pub(crate) lora: Option<String>,
    /// Serial port path (e.g. /dev/ttyUSB0, /dev/serial0); default: the board's.
    #[arg(long, conflicts_with = "stdio")]
    pub(crate) port: Option<String>,
    /// Use stdin/stdout instead of a serial port.
    #[arg(long)]
    pub(crate) stdio: bool,
    /// Baud rate (default: the board's, else 115200).
    #[arg(long, value_parser = clap::value_parser!(u32).range(50..=20_000_000))]
    pub(crate) baud: Option<u32>,
    #[arg(long, value_enum)]
    pub(crate) parity: Option<ParityArg>,
    #[arg(long = "flow-control", value_enum)]
    pub(crate) flow_control: Option<FlowArg>,
    /// Do not echo typed characters (for terminals that echo locally).
    #[arg(long)]
    pub(crate) no_echo: bool,
    /// One JSON object per line in ({"q":..} / {"cmd":..}) and out.
    #[arg(long)]
    pub(crate) json: bool,
    /// Longest accepted input line, in bytes.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=1 << 20))]
    pub(crate) max_line: u32,
    /// System prompt of the console's conversations and of HTTP chats that
    /// have no system message.
    #[arg(long)]
    pub(crate) system: Option<String>,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    #[command(flatten)]
    pub(crate) gen: GenArgs,
    #[command(flatten)]
    pub(crate) draft: DraftArgs,
    /// Keep the system prompt's evaluated state in the store
    /// (`prompt-cache/`) and load it at the next start.
    #[arg(long = "prompt-cache")]
    pub(crate) prompt_cache: bool,
    /// Also take spoken queries (microphone, or --wav files).
    #[arg(long)]
    pub(crate) listen: bool,
    /// Serve the OpenAI-compatible HTTP API on ADDR:PORT (e.g.
    /// 127.0.0.1:8080; default: the board's `http_listen`): the chat page
    /// at /, /v1/chat/completions, /v1/completions, /v1/embeddings,
    /// /v1/models, /v1/audio/transcriptions, /v1/audio/speech, /health,
    /// /metrics. Alone, or beside the console when --port, --stdio or
    /// --listen is given too (one model in memory for both). A host name
    /// (localhost:8080) is resolved; a bare port (8080, :8080) is loopback.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_listen)]
    pub(crate) http: Option<std::net::SocketAddr>,
    /// The key HTTP clients must send (`Authorization: Bearer KEY`);
    /// required for an address outside loopback.
    #[arg(long = "api-key", env = "FERRITE_API_KEY", hide_env_values = true)]
    pub(crate) api_key: Option<String>,
    /// Serve the HTTP API on an address outside loopback without a key.
    #[arg(long = "insecure-no-auth")]
    pub(crate) insecure_no_auth: bool,
    /// HTTP requests that may wait for the model while --parallel are
    /// answered; one more gets a 503 at once.
    #[arg(long = "http-queue", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) http_queue: u32,
    /// HTTP answers generated at once, batched in one context (llama.cpp's
    /// -np/--parallel): they share its -c cells, and cost little more than
    /// one answer each step on a board, where reading the weights is the
    /// bound.
    #[arg(long = "parallel", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub(crate) parallel: u32,
    /// Whether the --parallel answers share the whole -c context (on: one
    /// long conversation may use it all) or each has -c/--parallel cells of
    /// its own (off: llama-server's layout with -np; attention reads only
    /// the slot's own cells, faster with many long answers at once).
    #[arg(long = "kv-unified", value_enum, default_value = "on")]
    pub(crate) kv_unified: OnOff,
    #[command(flatten)]
    pub(crate) ear: EarArgs,
}

#[derive(Args)]
pub(crate) struct EarArgs {
    /// Speak the answers to spoken questions, sentence by sentence while
    /// they are written; speech or push-to-talk stops the speaking.
    #[arg(long)]
    pub(crate) speak: bool,
    /// Whether speech heard while an answer is spoken stops it: `off` for
    /// open speakers without echo cancellation, where the microphone hears
    /// the answer itself.
    #[arg(long = "barge-in", value_enum, default_value = "on")]
    pub(crate) barge_in: OnOff,
    #[command(flatten)]
    pub(crate) voice: VoiceArgs,
    /// ALSA capture device (default: the board's audio_device).
    #[arg(long, conflicts_with = "wav")]
    pub(crate) device: Option<String>,
    /// Listen to these WAV files instead of a microphone, then stop.
    #[arg(long, num_args = 1..)]
    pub(crate) wav: Vec<PathBuf>,
    /// Print the ALSA capture devices and exit.
    #[arg(long)]
    pub(crate) list_devices: bool,
    /// Push-to-talk button GPIO (BCM; default: the board's ptt_pin). Without
    /// one, voice activity detection cuts utterances.
    #[arg(long)]
    pub(crate) ptt_pin: Option<u8>,
    /// Status LED GPIO (BCM; default: the board's led_pin).
    #[arg(long)]
    pub(crate) led_pin: Option<u8>,
    #[command(flatten)]
    pub(crate) speech: SpeechArgs,
}

#[derive(Args, Clone)]
pub(crate) struct SpeechArgs {
    /// Whisper model name (whisper-tiny.en, whisper-base) or a ggml .bin path.
    #[arg(
        long = "whisper",
        visible_alias = "stt-model",
        default_value = "whisper-tiny.en"
    )]
    pub(crate) whisper: String,
    /// Spoken language (`auto` detects; English-only models take `en`).
    #[arg(long, default_value = "en")]
    pub(crate) language: String,
    /// CPU threads for whisper (default: the board's, else all cores).
    #[arg(long = "stt-threads", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) stt_threads: Option<u32>,
    /// Learned voice detector that confirms each utterance holds speech
    /// before whisper hears it: a model name (pulled on first use) or a
    /// whisper.cpp VAD .bin path; `none` leaves the spectral detector alone.
    #[arg(long = "vad-model", default_value = "silero-vad")]
    pub(crate) vad_model: String,
    /// How much of whisper's 30 s window to encode: `fit` (what the
    /// utterance fills, at least 10.24 s: about 3× faster for a short
    /// question, same accuracy on the test corpus) or `full`.
    #[arg(long = "audio-ctx", default_value = "fit", value_parser = ["fit", "full"])]
    pub(crate) audio_ctx: String,
    /// VAD: frames quieter than this (dBFS) are never speech.
    #[arg(long = "vad-db", default_value_t = -45.0, allow_negative_numbers = true)]
    pub(crate) vad_db: f32,
    /// VAD: silence that ends an utterance, in ms.
    #[arg(long = "vad-hangover-ms", default_value_t = 700, value_parser = clap::value_parser!(u32).range(50..=10_000))]
    pub(crate) vad_hangover_ms: u32,
    /// VAD: frames with a spectral flatness above this are noise (0..1).
    #[arg(long = "vad-flatness", default_value_t = 0.40)]
    pub(crate) vad_flatness: f32,
}

impl SpeechArgs {
    /// The VAD settings, range-checked.
    pub(crate) fn vad(&self) -> anyhow::Result<ferrite::speech::VadConfig> {
        if !(-120.0..=0.0).contains(&self.vad_db) {
            anyhow::bail!("--vad-db must be from -120 to 0 dBFS, not {}", self.vad_db);
        }
        if !(0.0..=1.0).contains(&self.vad_flatness) {
            anyhow::bail!(
                "--vad-flatness must be from 0 to 1, not {}",
                self.vad_flatness
            );
        }
        Ok(ferrite::speech::VadConfig {
            threshold_db: self.vad_db,
            hangover_ms: self.vad_hangover_ms,
            max_flatness: self.vad_flatness,
            ..Default::default()
        })
    }
}

/// Speculative decoding (llama.cpp's flag names and defaults).
#[derive(Args, Clone, Default)]
pub(crate) struct DraftArgs {
    /// Draft model (a name or GGUF path) with the model's vocabulary, e.g.
    /// qwen2.5-coder-0.5b for qwen2.5-coder-1.5b: it proposes tokens and the
    /// model checks them in one batch. Greedy answers stay the same (up to
    /// rounding in near-ties); sampled ones keep the model's distribution.
    #[arg(
        long = "draft",
        visible_alias = "model-draft",
        value_name = "MODEL",
        conflicts_with = "lookup"
    )]
    pub(crate) draft: Option<String>,
    /// Draft without a second model: propose the tokens that followed the
    /// last few tokens' latest earlier occurrence (prompt lookup; pays off
    /// when the answer repeats the prompt: code edits, summaries, JSON).
    #[arg(long)]
    pub(crate) lookup: bool,
    /// Most draft tokens checked per step.
    #[arg(long = "draft-max", visible_alias = "draft-n", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=ferrite::llm::MAX_DRAFT as i64))]
    pub(crate) draft_max: u32,
    /// Fewer draft tokens than this are not checked (plain decoding instead).
    #[arg(long = "draft-min", default_value_t = 0)]
    pub(crate) draft_min: u32,
    /// The draft model stops proposing below this probability of its top token.
    #[arg(long = "draft-p-min", default_value_t = 0.0)]
    pub(crate) draft_p_min: f32,
}

impl DraftArgs {
    pub(crate) fn options(&self) -> ferrite::llm::DraftOptions {
        ferrite::llm::DraftOptions {
            max: self.draft_max as usize,
            min: self.draft_min as usize,
            p_min: self.draft_p_min,
        }
    }
}

#[derive(Args, Clone)]
pub(crate) struct ModelArgs {
    /// Model name (see `ferrite models list`) or GGUF file path.
    #[arg(short = 'm', long)]
    pub(crate) model: Option<String>,
    /// CPU threads (default: the board's, else all cores).
    #[arg(short = 't', long, value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub(crate) threads: Option<i32>,
    /// Context size in tokens (default: the board's; at most what the model
    /// was trained on).
    #[arg(short = 'c', long = "ctx-size", value_parser = clap::value_parser!(u32).range(16..=1 << 24))]
    pub(crate) ctx_size: Option<u32>,
    /// Layers to offload to the GPU (CUDA builds).
    #[arg(long = "n-gpu-layers", visible_alias = "ngl")]
    pub(crate) gpu_layers: Option<u32>,
    /// KV cache type for K: f16, q8_0 (about half the memory) or q4_0
    /// (default: the board's `kv_type`, else f16).
    #[arg(long = "cache-type-k", visible_alias = "ctk", value_name = "TYPE")]
    pub(crate) cache_type_k: Option<ferrite::board::KvType>,
    /// KV cache type for V, as for K; a quantized V turns flash attention on.
    #[arg(long = "cache-type-v", visible_alias = "ctv", value_name = "TYPE")]
    pub(crate) cache_type_v: Option<ferrite::board::KvType>,
    #[command(flatten)]
    pub(crate) rpc: RpcArgs,
}

/// A model split across boards (llama.cpp's `--rpc` and `--tensor-split`).
#[derive(Args, Clone, Default)]
pub(crate) struct RpcArgs {
    /// Other boards that hold some of the layers, each running `ferrite
    /// rpc-server` (or llama.cpp's rpc-server): HOST:PORT[,HOST:PORT...]
    /// (default: the board's rpc_servers; "" for none). The layers are split
    /// by the memory each side has (--ngl 0, the default), or --ngl N puts
    /// the last N there as llama.cpp does.
    #[arg(long, value_name = "HOST:PORT,...", value_parser = parse_rpc)]
    pub(crate) rpc: Option<RpcList>,
    /// How the remotes share their layers: one weight per --rpc server,
    /// e.g. 3,1 (default: by the free memory each reports).
    #[arg(
        long = "tensor-split",
        visible_alias = "ts",
        value_name = "W,...",
        value_delimiter = ','
    )]
    pub(crate) tensor_split: Vec<f32>,
}

/// `--rpc`'s servers, checked before ggml sees them.
#[derive(Clone, Debug, Default)]
pub(crate) struct RpcList(pub(crate) Vec<ferrite::rpc::Endpoint>);

fn parse_rpc(s: &str) -> Result<RpcList, String> {
    ferrite::rpc::Endpoint::parse_list(s)
        .map(RpcList)
        .map_err(|e| e.to_string())
}

/// `ferrite rpc-server`: serve this board's CPU (or GPUs) to a main board.
#[derive(Args)]
pub(crate) struct RpcServerArgs {
    /// Address to listen on; anything but loopback needs --allow-lan.
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) host: String,
    #[arg(short = 'p', long, default_value_t = 50052, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) port: u16,
    /// CPU threads for the layers served (default: the board's, else every core).
    #[arg(short = 't', long, value_parser = clap::value_parser!(i32).range(1..=1024))]
    pub(crate) threads: Option<i32>,
    /// Report at most this much memory (MiB) to clients, which split layers by it.
    #[arg(short = 'm', long, value_name = "MiB", value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub(crate) mem: Option<u64>,
    /// Serve on a non-loopback address. ggml's RPC protocol has no
    /// authentication and no encryption: use it only on a network you trust.
    #[arg(long = "allow-lan")]
    pub(crate) allow_lan: bool,
    /// Keep large tensors in the store's rpc-cache/ so a model's next load
    /// sends only their hashes (llama.cpp's rpc-server -c).
    #[arg(short = 'c', long)]
    pub(crate) cache: bool,
}

#[derive(Args, Clone)]
pub(crate) struct GenArgs {
    /// Tokens to generate at most; -1 (or -2, llama.cpp's "until the context
    /// is full"): until the model stops or the context is full.
    #[arg(
        short = 'n',
        long = "n-predict",
        default_value_t = 256,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i64).range(-2..=1 << 24)
    )]
    pub(crate) n_predict: i64,
    /// Temperature; 0 (or below, as in llama.cpp) = greedy.
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    pub(crate) temp: f32,
    /// Keep only the K most likely tokens (0 = off; at most the vocabulary).
    #[arg(long = "top-k", default_value_t = 40, value_parser = clap::value_parser!(i32).range(0..))]
    pub(crate) top_k: i32,
    /// Nucleus sampling: keep the most likely tokens whose probabilities add
    /// up to P (1.0 = off).
    #[arg(long = "top-p", default_value_t = 0.95)]
    pub(crate) top_p: f32,
    /// Drop tokens less likely than P times the most likely one (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05)]
    pub(crate) min_p: f32,
    /// Repetition penalty (1.0 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0)]
    pub(crate) repeat_penalty: f32,
    /// Tokens the penalties look back over (-1: the whole context; at most
    /// the context size).
    #[arg(
        long = "repeat-last-n",
        default_value_t = 64,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i32).range(-1..)
    )]
    pub(crate) repeat_last_n: i32,
    /// Subtract this times a token's count in the last --repeat-last-n
    /// tokens from its logit (OpenAI's frequency_penalty; 0 = off).
    #[arg(
        long = "frequency-penalty",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub(crate) frequency_penalty: f32,
    /// Subtract this from the logit of every token seen in the last
    /// --repeat-last-n tokens (OpenAI's presence_penalty; 0 = off).
    #[arg(
        long = "presence-penalty",
        default_value_t = 0.0,
        allow_negative_numbers = true
    )]
    pub(crate) presence_penalty: f32,
    /// Random seed (default, or -1: a fresh one each run).
    #[arg(
        short = 's',
        long,
        allow_negative_numbers = true,
        value_parser = clap::value_parser!(i64).range(-1..=u32::MAX as i64)
    )]
    pub(crate) seed: Option<i64>,
    /// Beam search of this width instead of sampling (short answers).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub(crate) beams: u32,
    /// Stop when this text appears (repeatable).
    #[arg(long = "stop")]
    pub(crate) stop: Vec<String>,
    /// Constrain answers to this GBNF grammar (llama.cpp's format; the rule
    /// `root` is the whole answer).
    #[arg(long, group = "structured")]
    pub(crate) grammar: Option<String>,
    /// Constrain answers to the GBNF grammar in FILE.
    #[arg(long = "grammar-file", group = "structured")]
    pub(crate) grammar_file: Option<PathBuf>,
    /// Constrain answers to JSON that fits this JSON Schema, e.g.
    /// '{"type":"object","properties":{"light":{"enum":["on","off"]}},"required":["light"]}'.
    #[arg(short = 'j', long = "json-schema", group = "structured")]
    pub(crate) json_schema: Option<String>,
    /// Constrain answers to JSON that fits the JSON Schema in FILE.
    #[arg(long = "json-schema-file", group = "structured")]
    pub(crate) json_schema_file: Option<PathBuf>,
}

impl GenArgs {
    /// The generation parameters, with the grammar read and converted.
    pub(crate) fn params(&self) -> Result<GenParams, ferrite::llm::GrammarError> {
        use ferrite::llm::Grammar;
        let grammar = if let Some(g) = &self.grammar {
            Some(Grammar::from_gbnf(g, "--grammar")?)
        } else if let Some(f) = &self.grammar_file {
            Some(Grammar::gbnf_file(f)?)
        } else if let Some(j) = &self.json_schema {
            Some(Grammar::from_json_schema(j, "--json-schema")?)
        } else {
            self.json_schema_file
                .as_deref()
                .map(Grammar::json_schema_file)
                .transpose()?
        };
        Ok(GenParams {
            // -1 and -2: no limit but the context.
            n_predict: usize::try_from(self.n_predict).ok(),
            temperature: self.temp,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repeat_penalty: self.repeat_penalty,
            frequency_penalty: self.frequency_penalty,
            presence_penalty: self.presence_penalty,
            repeat_last_n: self.repeat_last_n,
            seed: self
                .seed
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(0xFFFF_FFFF),
            beams: self.beams as usize,
            stop: self.stop.clone(),
            grammar,
            logprobs: None,
        })
    }
}

/// `--parity` (the library's `board::Parity`, which knows nothing of clap).
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum ParityArg {
    None,
    Odd,
    Even,
}

impl From<ParityArg> for ferrite::board::Parity {
    fn from(p: ParityArg) -> Self {
        match p {
            ParityArg::None => Self::None,
            ParityArg::Odd => Self::Odd,
            ParityArg::Even => Self::Even,
        }
    }
}

/// `--flow-control`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum FlowArg {
    /// No flow control.
    None,
    /// XON/XOFF in band.
    Software,
    /// RTS/CTS lines.
    Hardware,
}

impl From<FlowArg> for ferrite::board::FlowControl {
    fn from(f: FlowArg) -> Self {
        match f {
            FlowArg::None => Self::None,
            FlowArg::Software => Self::Software,
            FlowArg::Hardware => Self::Hardware,
        }
    }
}

/// A switch, as `--barge-in on|off`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OnOff {
    On,
    Off,
}

/// `--http`'s address: `ADDR:PORT`, `HOST:PORT` (resolved; the first
/// address), or a bare `PORT`/`:PORT` on loopback (127.0.0.1).
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let port_only = s.strip_prefix(':').unwrap_or(s);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{s}` resolves to no address")),
        Err(e) => Err(format!("`{s}` is not ADDR:PORT, HOST:PORT or PORT ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listen;

    #[test]
    fn http_addresses_take_a_port_a_host_or_an_address() {
        let lo = |p| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        assert_eq!(parse_listen("8080"), Ok(lo(8080)));
        assert_eq!(parse_listen(":8081"), Ok(lo(8081)));
        assert_eq!(
            parse_listen("0.0.0.0:80").unwrap().to_string(),
            "0.0.0.0:80"
        );
        assert_eq!(parse_listen("[::1]:9").unwrap().to_string(), "[::1]:9");
        assert!(parse_listen("localhost:8080").unwrap().ip().is_loopback());
        for bad in ["", "1.2.3", "host:port", "70000"] {
            assert!(parse_listen(bad).is_err(), "{bad}");
        }
    }
}
