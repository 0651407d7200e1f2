//! Will it fit? Before a model is loaded, its weights, the KV cache for the
//! requested context and llama.cpp's compute buffers are estimated from the
//! GGUF header and compared with the board's budget and the memory the
//! kernel says is available. A board that would be pushed into the OOM
//! killer gets a clear refusal with the largest context that would fit.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{Board, BoardError};
use crate::gguf::GgufFile;

const MIB: u64 = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Tensor data (memory-mapped, but resident once used).
    pub model_bytes: u64,
    pub kv_bytes: u64,
    pub compute_bytes: u64,
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.model_bytes + self.kv_bytes + self.compute_bytes
    }
}

/// The element type of the KV cache, as llama.cpp names it (`-ctk`/`-ctv`,
/// `--cache-type-k`/`--cache-type-v`): f16 (llama.cpp's default), or ggml's
/// 8-bit and 4-bit block quantizations, which hold a context in 53% or 28%
/// of the bytes (34 and 18 bytes per block of 32, ggml's `type_traits`).
/// A quantized V cache needs flash attention (llama.cpp's rule), which
/// ferrite then turns on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KvType {
    #[default]
    F16,
    Q8_0,
    Q4_0,
}

impl KvType {
    pub const ALL: [KvType; 3] = [KvType::F16, KvType::Q8_0, KvType::Q4_0];

    /// Bytes for `n` elements (`n` a multiple of the block, as head
    /// dimensions are).
    pub fn bytes(self, n: u64) -> u64 {
        match self {
            KvType::F16 => 2 * n,
            KvType::Q8_0 => n.div_ceil(32) * 34,
            KvType::Q4_0 => n.div_ceil(32) * 18,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
            KvType::Q4_0 => "q4_0",
        }
    }
}

impl std::str::FromStr for KvType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown KV cache type `{s}`: use f16, q8_0 or q4_0"))
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// KV cache bytes per token of context: K and V of every layer, each of
/// its cache type.
pub fn kv_bytes_per_token(g: &GgufFile, (k, v): (KvType, KvType)) -> u64 {
    let arch = g.architecture().unwrap_or("llama");
    let get = |k: &str| g.get_u64(&format!("{arch}.{k}"));
    let n_layer = get("block_count").unwrap_or(0);
    let n_embd = get("embedding_length").unwrap_or(0);
    let n_head = get("attention.head_count").unwrap_or(1).max(1);
    let n_head_kv = get("attention.head_count_kv").unwrap_or(n_head);
    let k_dim = get("attention.key_length").unwrap_or(n_embd / n_head);
    let v_dim = get("attention.value_length").unwrap_or(n_embd / n_head);
    n_layer * n_head_kv * (k.bytes(k_dim) + v.bytes(v_dim))
}

/// The estimate for `ctx_tokens` of context with `ubatch` tokens per step.
/// The compute term is an upper bound of llama.cpp's CPU compute buffer for
/// a llama-style graph: activations of one micro-batch plus its attention
/// scores and the logits.
pub fn estimate(
    g: &GgufFile,
    ctx_tokens: u32,
    ubatch: u32,
    kv: (KvType, KvType),
) -> MemoryEstimate {
    let arch = g.architecture().unwrap_or("llama");
    let get = |k: &str| g.get_u64(&format!("{arch}.{k}")).unwrap_or(0);
    let n_embd = get("embedding_length");
    let n_ff = get("feed_forward_length");
    let n_head = get("attention.head_count").max(1);
    let n_vocab = match g.get("tokenizer.ggml.tokens") {
        Some(crate::gguf::Value::Array(_, v)) => v.len() as u64,
        _ => 0,
    };
    let ub = u64::from(ubatch.min(ctx_tokens));
    let ctx = u64::from(ctx_tokens);
    let compute = 4 * ub * (4 * n_embd + 2 * n_ff + n_head * ctx + n_vocab);
    MemoryEstimate {
        model_bytes: g.tensors.iter().map(|t| t.nbytes).sum(),
        kv_bytes: kv_bytes_per_token(g, kv) * ctx,
        compute_bytes: compute,
    }
}

/// A `Key:  N kB` field of a `/proc` file (`meminfo`, `<pid>/status`), in bytes.
pub(crate) fn proc_kib_field(path: &Path, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// `MemAvailable` from `<root>/proc/meminfo`.
pub fn available_bytes(root: &Path) -> Option<u64> {
    proc_kib_field(&root.join("proc/meminfo"), "MemAvailable")
}

/// The bytes a process may use here, and why: the smaller of the board's
/// `memory_budget_mb` and `MemAvailable`, less `taken` (a model already
/// mapped, not yet counted by the kernel); `None` when neither is known.
pub fn memory_limit(board: &Board, root: &Path, taken: u64) -> Option<(u64, String)> {
    let budget =
        (board.memory_budget_mb > 0).then(|| (board.memory_budget_mb * MIB).saturating_sub(taken));
    let avail = available_bytes(root).map(|a| a.saturating_sub(taken));
    match (budget, avail) {
        (Some(b), Some(a)) if a < b => Some((
            a,
            format!(
                "available memory; the {} profile allows {} MiB",
                board.name,
                b / MIB
            ),
        )),
        (Some(b), _) => Some((b, format!("the {} profile's memory_budget_mb", board.name))),
        (None, Some(a)) => Some((a, "available memory".to_string())),
        (None, None) => None,
    }
}

/// Refuse to load when the estimate exceeds the board's budget or the
/// available memory, naming the largest context that would fit.
pub fn check_fits(
    board: &Board,
    g: &GgufFile,
    ctx_tokens: u32,
    ubatch: u32,
    kv: (KvType, KvType),
    root: &Path,
) -> Result<MemoryEstimate, BoardError> {
    check_fits_beside(board, g, (ctx_tokens, ubatch, kv), root, None)
}

/// `check_fits` for a model loaded beside another (a draft model beside
/// the model it drafts for): `beside`'s estimate is taken off the budget
/// and off the available memory first (the other model is memory-mapped,
/// so the kernel has not counted it yet).
pub fn check_fits_beside(
    board: &Board,
    g: &GgufFile,
    settings: (u32, u32, (KvType, KvType)),
    root: &Path,
    beside: Option<MemoryEstimate>,
) -> Result<MemoryEstimate, BoardError> {
    check_fits_pooled(board, g, settings, root, beside, 0)
}

/// `check_fits_beside` for a model split across boards (`--rpc`): the
/// remotes' free memory, `remote_bytes`, is added to this board's limit
/// (llama.cpp puts the layers where the memory is: `rpc::remote_layers`).
pub fn check_fits_pooled(
    board: &Board,
    g: &GgufFile,
    (ctx_tokens, ubatch, kv): (u32, u32, (KvType, KvType)),
    root: &Path,
    beside: Option<MemoryEstimate>,
    remote_bytes: u64,
) -> Result<MemoryEstimate, BoardError> {
    let est = estimate(g, ctx_tokens, ubatch, kv);
    let taken = beside.map_or(0, |b| b.total());
    let Some((mut limit, mut why)) = memory_limit(board, root, taken) else {
        return Ok(est);
    };
    if remote_bytes > 0 {
        limit += remote_bytes;
        why.push_str(&format!(
            ", plus {} MiB free on the --rpc servers",
            remote_bytes / MIB
        ));
    }
    if est.total() <= limit {
        return Ok(est);
    }
    if taken > 0 {
        why.push_str(&format!(
            ", after {} MiB for the model beside it",
            taken.div_ceil(MIB)
        ));
    }
    // The largest context (multiple of 256, or the trained context itself)
    // whose estimate still fits; never past the trained context, which -c
    // refuses.
    let train = g
        .summary()
        .context_length
        .map_or(0, |t| t.min(u64::from(u32::MAX)) as u32);
    let top = if train > 0 {
        ctx_tokens.min(train)
    } else {
        ctx_tokens
    };
    let mut best = 0;
    let mut c = 256;
    while c < top {
        if estimate(g, c, ubatch, kv).total() <= limit {
            best = c;
        }
        c += 256;
    }
    if top < ctx_tokens && estimate(g, top, ubatch, kv).total() <= limit {
        best = top;
    }
    let hint = if best > 0 {
        format!("the largest context that fits is -c {best}")
    } else {
        "even a 256-token context does not fit: use a smaller model".to_string()
    };
    Err(BoardError::OutOfMemory {
        what: g.path().display().to_string(),
        need_mib: est.total().div_ceil(MIB),
        model_mib: est.model_bytes.div_ceil(MIB),
        kv_mib: est.kv_bytes.div_ceil(MIB),
        compute_mib: est.compute_bytes.div_ceil(MIB),
        limit_mib: limit / MIB,
        why,
        hint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{GgufWriter, Value};

    const F16: (KvType, KvType) = (KvType::F16, KvType::F16);

    /// A llama-shaped header (8 layers, 256 wide, 4 KV heads of 64) with one
    /// 1 MiB tensor standing in for the weights.
    fn model(dir: &Path) -> GgufFile {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", Value::Str("llama".into()))
            .kv("llama.block_count", Value::U32(8))
            .kv("llama.embedding_length", Value::U32(256))
            .kv("llama.feed_forward_length", Value::U32(1024))
            .kv("llama.attention.head_count", Value::U32(4))
            .kv("llama.attention.head_count_kv", Value::U32(4))
            .tensor_f32("token_embd.weight", &[256, 1024], &vec![0.0; 256 * 1024]);
        let p = dir.join("m.gguf");
        w.write(&p).unwrap();
        GgufFile::open(&p).unwrap()
    }

    fn meminfo(dir: &Path, avail_mib: u64) {
        std::fs::create_dir_all(dir.join("proc")).unwrap();
        std::fs::write(
            dir.join("proc/meminfo"),
            format!(
                "MemTotal: 999999 kB\nMemAvailable: {} kB\n",
                avail_mib * 1024
            ),
        )
        .unwrap();
    }

    #[test]
    fn kv_cache_follows_the_header() {
        let d = tempfile::tempdir().unwrap();
        let g = model(d.path());
        let e = estimate(&g, 1024, 512, F16);
        // 8 layers × 4 heads × (64 + 64) × 2 bytes × 1024 tokens
        assert_eq!(e.kv_bytes, 8 * 4 * 128 * 2 * 1024);
        assert_eq!(e.model_bytes, 1 << 20);
        // q8_0: 34 bytes per 32; q4_0 V beside f16 K: 18 per 32.
        let q8 = estimate(&g, 1024, 512, (KvType::Q8_0, KvType::Q8_0));
        assert_eq!(q8.kv_bytes, 8 * 4 * (2 * 34 * 2) * 1024);
        let mixed = estimate(&g, 1024, 512, (KvType::F16, KvType::Q4_0));
        assert_eq!(mixed.kv_bytes, 8 * 4 * (64 * 2 + 2 * 18) * 1024);
        assert_eq!("q4_0".parse::<KvType>(), Ok(KvType::Q4_0));
        assert!("q5_1"
            .parse::<KvType>()
            .unwrap_err()
            .contains("f16, q8_0 or q4_0"));
    }

    #[test]
    fn refuses_with_the_largest_context_that_fits() {
        let d = tempfile::tempdir().unwrap();
        let g = model(d.path());
        let board = Board {
            memory_budget_mb: 64,
            ..Board::default()
        };
        meminfo(d.path(), 8192);
        assert!(check_fits(&board, &g, 2048, 512, F16, d.path()).is_ok());
        let e = check_fits(&board, &g, 1 << 20, 512, F16, d.path())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("memory_budget_mb") && e.contains("largest context that fits is -c"),
            "{e}"
        );
        // Less available than the budget: the kernel's figure wins.
        meminfo(d.path(), 16);
        let e = check_fits(&board, &g, 16384, 512, F16, d.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("available memory"), "{e}");
        let fit: u32 = e.rsplit("-c ").next().unwrap().parse().unwrap();
        assert!(check_fits(&board, &g, fit, 512, F16, d.path()).is_ok());
        assert!(check_fits(&board, &g, fit + 256, 512, F16, d.path()).is_err());
        // Beside another model, what that one needs is taken off first.
        meminfo(d.path(), 8192);
        let alone = check_fits(&board, &g, 2048, 512, F16, d.path()).unwrap();
        let big = MemoryEstimate {
            model_bytes: 60 * MIB,
            ..alone
        };
        let e = check_fits_beside(&board, &g, (2048, 512, F16), d.path(), Some(big))
            .unwrap_err()
            .to_string();
        assert!(e.contains("MiB for the model beside it"), "{e}");
    }

    #[test]
    fn the_rpc_servers_free_memory_counts() {
        let d = tempfile::tempdir().unwrap();
        let g = model(d.path());
        let need = estimate(&g, 2048, 512, F16).total();
        let board = Board {
            memory_budget_mb: 1,
            ..Board::default()
        };
        let e = check_fits(&board, &g, 2048, 512, F16, d.path()).unwrap_err();
        assert!(matches!(e, BoardError::OutOfMemory { .. }), "{e}");
        let settings = (2048, 512, F16);
        assert!(check_fits_pooled(&board, &g, settings, d.path(), None, need).is_ok());
        let e = check_fits_pooled(&board, &g, settings, d.path(), None, need / 4).unwrap_err();
        assert!(e.to_string().contains("free on the --rpc servers"), "{e}");
    }
}
