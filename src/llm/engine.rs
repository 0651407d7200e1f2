//! Loading a model: our GGUF validation first, then llama.cpp's memory-mapped
//! loader. The engine is shared by every session (one model in memory, any
//! number of contexts) and reports its own load time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;

use super::adapters::{AdapterId, Loaded};
use super::chat::Template;
use super::{backend, LlmError};
use crate::gguf::{GgufFile, ModelSummary};

/// How to load a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Layers to offload to the GPU (CUDA builds); 0 keeps all on the CPU.
    pub gpu_layers: u32,
    /// Load the tokenizer and chat template only, no weights (llama.cpp's
    /// `vocab_only`): the trainer, which maps the weights itself, needs no
    /// second copy.
    pub vocab_only: bool,
    /// Remote boards (`--rpc`) that hold some of the layers: `gpu_layers` of
    /// them (0: split by the memory each side has, `rpc::remote_layers`),
    /// spread over the remotes by their free memory or `tensor_split`.
    pub rpc: Vec<crate::rpc::Endpoint>,
    /// `--tensor-split`: one weight per `rpc` server (empty: by memory).
    pub tensor_split: Vec<f32>,
    /// This board's memory for the split by memory (the board profile's
    /// budget or `MemAvailable`, `board::memory_limit`); `None`:
    /// `MemAvailable`.
    pub local_bytes: Option<u64>,
}

/// A loaded model.
pub struct Engine {
    pub(crate) model: LlamaModel,
    pub(crate) template: Template,
    name: String,
    path: PathBuf,
    summary: ModelSummary,
    load_ms: f64,
    pub(crate) adapters: super::adapters::Adapters,
    /// The remote boards holding layers; watched after every decode.
    links: Vec<std::sync::Arc<crate::rpc::Link>>,
    /// Layers on the remotes (0 without `--rpc`).
    remote_layers: u32,
}

impl Engine {
    /// Whether llama.cpp's grammar parser takes `g` for this model's
    /// vocabulary (a setting is checked when it is made, not at the next
    /// answer).
    ///
    /// # Errors
    /// `GrammarError::Parse` as `Grammar::sampler`.
    pub fn check_grammar(&self, g: &super::Grammar) -> Result<(), super::GrammarError> {
        g.sampler(&self.model).map(drop)
    }

    /// Validate and load `path`. `name` is what the user calls it.
    pub fn load(name: &str, path: &Path, opts: &LoadOptions) -> Result<Engine, LlmError> {
        Self::from_gguf(name, GgufFile::open(path)?, opts)
    }

    /// Load a model whose header the caller has already read (e.g. for the
    /// board's memory check), so it is not parsed twice. The load time
    /// counted starts here.
    pub fn from_gguf(name: &str, gguf: GgufFile, opts: &LoadOptions) -> Result<Engine, LlmError> {
        let t0 = Instant::now();
        gguf.check_model()?;
        let summary = gguf.summary();
        let path = gguf.path().to_path_buf();
        drop(gguf);
        let path = path.as_path();
        let backend = backend()?;
        warn_without_gpu(opts)?;
        // ggml's features, as ggml sees them at run time (its CPU backend
        // picks kernels by the CPU it runs on, not by how Rust was compiled).
        tracing::info!(
            ggml = %super::system_info().unwrap_or_default(),
            cuda = cfg!(feature = "cuda"),
            gpu_layers = opts.gpu_layers,
            "backend"
        );
        let Placement {
            links,
            devices,
            gpu_layers,
            output_here,
        } = place_layers(opts, &summary)?;
        let mut params = LlamaModelParams::default()
            .with_n_gpu_layers(gpu_layers)
            .with_vocab_only(opts.vocab_only);
        if let Some(devices) = devices {
            params = params
                .with_devices(&devices)
                .map_err(|e| LlmError::Param(format!("device list: {e}")))?;
        }
        let mut params = Box::pin(params);
        if output_here {
            params.as_mut().add_cpu_buft_override(OUTPUT_TENSORS);
        }
        let _span = tracing::info_span!("load", model = %name).entered();
        let loaded = LlamaModel::load_from_file(backend, path, &params);
        // A remote that stopped answering during the load is why it failed
        // (the relay answered ggml's allocations with zeros), or why the
        // weights it holds cannot be trusted.
        crate::rpc::check(&links)?;
        let model = loaded.map_err(|source| LlmError::Load {
            path: path.to_path_buf(),
            source,
        })?;
        let template = Template::for_model(&model);
        let load_ms = t0.elapsed().as_secs_f64() * 1e3;
        tracing::info!(
            model = %name,
            arch = %summary.arch,
            params = summary.n_params,
            load_ms = format!("{load_ms:.0}"),
            template = ?template.kind(),
            "model loaded"
        );
        Ok(Engine {
            model,
            template,
            name: name.to_string(),
            path: path.to_path_buf(),
            summary,
            load_ms,
            adapters: Default::default(),
            remote_layers: if links.is_empty() { 0 } else { gpu_layers },
            links,
        })
    }

    /// After a decode on `ctx`: whether the remote boards holding layers
    /// still stand, so its logits can be trusted (`rpc::check`). llama.cpp
    /// decodes asynchronously and fetches the logits when they are first
    /// read, so with remotes this waits for the decode first (the logits
    /// are read next anyway); without, it does nothing.
    ///
    /// # Errors
    /// `LlmError::Rpc(RpcError::Lost)`.
    pub(crate) fn check_remote(&self, ctx: &mut LlamaContext<'_>) -> Result<(), LlmError> {
        if self.links.is_empty() {
            return Ok(());
        }
        ctx.synchronize();
        Ok(crate::rpc::check(&self.links)?)
    }

    /// Whether a remote board holding this model's layers stopped answering
    /// (the model must be loaded again).
    pub fn remote_lost(&self) -> bool {
        crate::rpc::check(&self.links).is_err()
    }

    /// Bytes sent to and received from the remote boards so far, summed.
    pub fn remote_traffic(&self) -> (u64, u64) {
        self.links
            .iter()
            .map(|l| l.traffic())
            .fold((0, 0), |(s, r), (a, b)| (s + a, r + b))
    }

    /// The remote devices this model's layers are on, and how many layers.
    pub fn remote(&self) -> (Vec<crate::rpc::RemoteDevice>, u32) {
        let devs = self.links.iter().flat_map(|l| l.devices.clone()).collect();
        (devs, self.remote_layers)
    }

    /// A llama.cpp context on this model; every context in ferrite is made here.
    pub(crate) fn context(
        &self,
        params: LlamaContextParams,
        ctx_tokens: u32,
    ) -> Result<LlamaContext<'_>, LlmError> {
        let made = self.model.new_context(backend()?, params);
        // A remote lost while the context's buffers were made is why it
        // failed (or why they cannot be trusted).
        crate::rpc::check(&self.links)?;
        made.map_err(|source| LlmError::Context { ctx_tokens, source })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How prompts are rendered: the model's Jinja template, llama.cpp's
    /// approximation of it, or plain text (no template).
    pub fn template_kind(&self) -> super::TemplateKind {
        self.template.kind()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The tokenizer's end-of-sequence token (an end-of-generation token:
    /// sampling stops at it).
    pub fn eos_token(&self) -> u32 {
        self.model.vocab().eos().0 as u32
    }

    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    pub fn summary(&self) -> &ModelSummary {
        &self.summary
    }

    /// The context length the model was trained with.
    pub fn n_ctx_train(&self) -> u32 {
        self.model.n_ctx_train()
    }

    /// Refuse a context the user asked for (`-c`) that is larger than the
    /// model was trained on: llama.cpp would run past it without RoPE
    /// scaling, and the answers degrade silently.
    pub fn check_ctx(&self, ctx_tokens: u32) -> Result<(), LlmError> {
        let train = self.n_ctx_train();
        if train > 0 && ctx_tokens > train {
            return Err(LlmError::Param(format!(
                "a context of {ctx_tokens} tokens is more than the {train} the model was trained on: use -c {train} or less"
            )));
        }
        Ok(())
    }

    /// Bytes of weights, as llama.cpp counts them (llama-bench's `size`).
    pub fn size_bytes(&self) -> u64 {
        self.model.size()
    }

    /// Tokens in the model's vocabulary.
    pub fn n_vocab(&self) -> i32 {
        self.model.n_vocab()
    }

    pub fn n_params(&self) -> u64 {
        self.model.n_params()
    }

    /// Tokenize with the model's tokenizer (BOS as the model wants it,
    /// special tokens parsed).
    pub fn tokenize(&self, text: &str) -> Vec<llama_cpp_2::token::LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), true, true)
    }

    /// Tokenize a piece of text that continues earlier tokens: no BOS,
    /// special tokens parsed (the trainer tokenizes a chat turn by turn).
    pub fn tokenize_continuation(&self, text: &str) -> Vec<llama_cpp_2::token::LlamaToken> {
        self.model.vocab().tokenize(text.as_bytes(), false, true)
    }

    /// Render `messages` with the model's chat template (see
    /// `chat::Template::render_with`).
    pub fn render_chat(
        &self,
        messages: &[super::Message],
        open_assistant: bool,
    ) -> Result<String, LlmError> {
        self.template
            .render_with(&self.model, messages, open_assistant)
    }

    /// llama-bench's `model_type` column: `<arch> <size> <ftype>`.
    pub fn description(&self) -> String {
        let size = self
            .model
            .meta_val_str("general.size_label")
            .unwrap_or_else(|_| "?B".into());
        let ftype = self
            .model
            .meta_val_str("general.file_type")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or("?", crate::gguf::ftype_name);
        format!("{} {} {}", self.summary.arch, size, ftype)
    }
}

impl Engine {
    /// Validate `path` against this model (architecture, base sha256,
    /// tensor shapes) and load it, or return the id of the copy already
    /// loaded. `base_sha256` is this model's file hash, when known.
    pub fn load_adapter(
        &mut self,
        name: &str,
        path: &Path,
        base_sha256: Option<&str>,
    ) -> Result<AdapterId, LlmError> {
        {
            let list = self.adapters.0.lock().expect("adapter list");
            if let Some(i) = list.iter().position(|a| a.path == path) {
                return Ok(AdapterId(i));
            }
        }
        let base = GgufFile::open(self.path())?;
        let info = crate::adapter::check_against(path, &base, base_sha256)?;
        drop(base);
        let handle = self
            .model
            .lora_adapter_init(path)
            .map_err(|e| LlmError::Adapter {
                name: format!(
                    "{name} ({}; run with -v to see llama.cpp's log)",
                    path.display()
                ),
                source: e.into(),
            })?;
        tracing::info!(adapter = %name, rank = info.rank, alpha = info.alpha, "adapter loaded");
        let mut list = self.adapters.0.lock().expect("adapter list");
        list.push(Loaded {
            name: name.to_string(),
            path: path.to_path_buf(),
            handle,
        });
        Ok(AdapterId(list.len() - 1))
    }

    /// The id of an adapter already loaded under `name`.
    pub fn adapter_by_name(&self, name: &str) -> Option<AdapterId> {
        let list = self.adapters.0.lock().expect("adapter list");
        list.iter().position(|a| a.name == name).map(AdapterId)
    }
}

/// Where a model's layers go (`place_layers`).
struct Placement {
    /// The remote boards holding layers.
    links: Vec<std::sync::Arc<crate::rpc::Link>>,
    /// llama.cpp's device list; `None`: its default.
    devices: Option<Vec<usize>>,
    /// Layers on the devices (llama.cpp's `n_gpu_layers`: the last ones, and
    /// the output layer with them).
    gpu_layers: u32,
    /// Keep the output layer's matrix on this board's CPU.
    output_here: bool,
}

/// The output layer's matrix (or the token embeddings it shares): kept on
/// this board when the other layers are on remotes without a local GPU, so
/// that each token sends the remotes one hidden state and gets one back
/// (n_embd floats) instead of fetching every logit from the last remote
/// (n_vocab floats: 608 KB per token for Qwen2.5; benches/README.md).
const OUTPUT_TENSORS: &std::ffi::CStr = c"^(output|token_embd)\\.weight$";

/// Where the layers go: with `--rpc`, the remotes attached and named as
/// llama.cpp's devices (before any local GPU, as llama.cpp orders them), the
/// layer count for them, and, when ferrite chose that count and there is no
/// local GPU, the output layer kept here; without, the local GPUs only, so that a remote
/// registered earlier in the process (one since lost) is never picked by
/// llama.cpp's default device list.
fn place_layers(opts: &LoadOptions, summary: &ModelSummary) -> Result<Placement, LlmError> {
    let local_gpus = || {
        llama_cpp_2::list_llama_ggml_backend_devices()
            .into_iter()
            .filter(|d| {
                d.backend != "RPC"
                    && !matches!(
                        d.device_type,
                        llama_cpp_2::LlamaBackendDeviceType::Cpu
                            | llama_cpp_2::LlamaBackendDeviceType::Accelerator
                    )
            })
            .map(|d| d.index)
            .collect::<Vec<_>>()
    };
    if opts.rpc.is_empty() {
        let any_rpc = llama_cpp_2::list_llama_ggml_backend_devices()
            .iter()
            .any(|d| d.backend == "RPC");
        return Ok(Placement {
            links: Vec::new(),
            devices: any_rpc.then(local_gpus),
            gpu_layers: opts.gpu_layers,
            output_here: false,
        });
    }
    let links = crate::rpc::attach(&opts.rpc)?;
    if !opts.tensor_split.is_empty() {
        crate::rpc::set_split(&links, &opts.tensor_split)?;
    }
    let mut devices: Vec<usize> = links
        .iter()
        .flat_map(|l| l.devices.iter().map(|d| d.index))
        .collect();
    let gpus = local_gpus();
    // An explicit -ngl places the layers as llama.cpp does (the output layer
    // counts as one of them and goes with the last).
    let output_here = gpus.is_empty() && opts.gpu_layers == 0;
    devices.extend(gpus);
    let n_layer = summary.n_layers.unwrap_or(0).min(u64::from(u32::MAX)) as u32;
    let layers = if opts.gpu_layers > 0 {
        opts.gpu_layers
    } else {
        // The repeating layers by memory, plus the output layer llama.cpp
        // counts with them (kept here by `output_here` when no GPU is).
        let local = opts
            .local_bytes
            .or_else(|| crate::board::available_bytes(Path::new("/")));
        crate::rpc::remote_layers(n_layer, local, crate::rpc::free_bytes(&links)) + 1
    };
    tracing::info!(remote_layers = layers, n_layer, devices = ?devices, "layers split across boards");
    Ok(Placement {
        links,
        devices: Some(devices),
        gpu_layers: layers,
        output_here,
    })
}

/// `--ngl` without a GPU to put layers on: said, not silent. llama.cpp's own
/// `supports_gpu_offload` is true in every build now (it counts the RPC
/// backend), so a local GPU is what is asked for.
fn warn_without_gpu(opts: &LoadOptions) -> Result<(), LlmError> {
    if opts.gpu_layers == 0 || !opts.rpc.is_empty() || !super::gpu_devices()?.is_empty() {
        return Ok(());
    }
    if cfg!(feature = "cuda") {
        tracing::error!(
            gpu_layers = opts.gpu_layers,
            "this is a CUDA build but no GPU was found: every layer runs on the CPU"
        );
    } else {
        tracing::warn!(
            gpu_layers = opts.gpu_layers,
            "this build has no GPU backend (build with --features cuda): every layer runs on the CPU"
        );
    }
    Ok(())
}
