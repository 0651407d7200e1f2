//! LoRA adapter files: llama.cpp's adapter GGUF, written by the trainer and
//! checked here before llama.cpp sees one.
//!
//! Format (what `llama_adapter_lora_init` reads): `general.type = adapter`,
//! `adapter.type = lora`, `adapter.lora.alpha` (f32), `general.architecture`
//! equal to the base's; tensors `<base tensor>.lora_a` with ggml shape
//! [n_in, rank] and `.lora_b` with [rank, n_out]. ferrite adds the base
//! model's sha256 (`ferrite.base.sha256`) so an adapter is never applied to a
//! model it was not trained on: llama.cpp itself only checks shapes, and an
//! adapter on the wrong base of the same shape silently produces garbage.

use std::path::{Path, PathBuf};

use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value};

pub const KEY_BASE_SHA256: &str = "ferrite.base.sha256";
pub const KEY_BASE_NAME: &str = "ferrite.base.name";
pub const KEY_RANK: &str = "ferrite.lora.rank";
pub const KEY_TARGETS: &str = "ferrite.lora.targets";

#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: not a LoRA adapter: {what}")]
    NotAdapter { path: PathBuf, what: String },
    #[error("{path}: adapter was trained on a different base model (sha256 {adapter}…, this model is {model}…): train it again on this model or load its base with -m")]
    WrongBase {
        path: PathBuf,
        adapter: String,
        model: String,
    },
    #[error("{path}: adapter does not fit this model: {what}")]
    Mismatch { path: PathBuf, what: String },
    #[error("{path}: cannot write")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What an adapter file says about itself.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterInfo {
    pub name: String,
    pub arch: String,
    pub alpha: f32,
    pub rank: u64,
    pub targets: String,
    pub base_sha256: Option<String>,
    pub base_name: Option<String>,
    pub n_pairs: usize,
    pub n_params: u64,
}

/// One A/B pair to write: the base tensor name and row-major f32 data,
/// A [rank, n_in] and B [n_out, rank].
pub struct Pair<'a> {
    pub base_tensor: String,
    pub n_in: usize,
    pub n_out: usize,
    pub a: &'a [f32],
    pub b: &'a [f32],
}

/// Write an adapter atomically (temp, fsync, rename).
pub fn write(path: &Path, info: &AdapterInfo, pairs: &[Pair<'_>]) -> Result<(), AdapterError> {
    let mut w = GgufWriter::new();
    w.kv("general.architecture", Value::Str(info.arch.clone()))
        .kv("general.type", Value::Str("adapter".into()))
        .kv("general.name", Value::Str(info.name.clone()))
        .kv("adapter.type", Value::Str("lora".into()))
        .kv("adapter.lora.alpha", Value::F32(info.alpha))
        .kv(KEY_RANK, Value::U32(info.rank as u32))
        .kv(KEY_TARGETS, Value::Str(info.targets.clone()));
    if let Some(s) = &info.base_sha256 {
        w.kv(KEY_BASE_SHA256, Value::Str(s.clone()));
    }
    if let Some(s) = &info.base_name {
        w.kv(KEY_BASE_NAME, Value::Str(s.clone()));
    }
    let r = info.rank;
    for p in pairs {
        assert_eq!(p.a.len(), r as usize * p.n_in, "A of {}", p.base_tensor);
        assert_eq!(p.b.len(), r as usize * p.n_out, "B of {}", p.base_tensor);
        w.tensor_f32(
            &format!("{}.lora_a", p.base_tensor),
            &[p.n_in as u64, r],
            p.a,
        );
        w.tensor_f32(
            &format!("{}.lora_b", p.base_tensor),
            &[r, p.n_out as u64],
            p.b,
        );
    }
    w.write(path).map_err(|source| AdapterError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Validate an adapter file on its own (format, pairs, shapes, finite data)
/// and say what it is.
pub fn inspect(path: &Path) -> Result<(AdapterInfo, GgufFile), AdapterError> {
    let g = GgufFile::open(path)?;
    let bad = |what: String| AdapterError::NotAdapter {
        path: path.to_path_buf(),
        what,
    };
    if g.get_str("general.type") != Some("adapter") {
        return Err(bad(
            "`general.type` is not `adapter` (is this a model? pass it with -m)".into(),
        ));
    }
    if g.get_str("adapter.type") != Some("lora") {
        return Err(bad("`adapter.type` is not `lora`".into()));
    }
    let arch = g
        .architecture()
        .ok_or_else(|| bad("no `general.architecture`".into()))?
        .to_string();
    let alpha = g
        .get("adapter.lora.alpha")
        .and_then(Value::as_f32)
        .filter(|a| a.is_finite())
        .ok_or_else(|| bad("no finite f32 `adapter.lora.alpha`".into()))?;
    let (rank, n_pairs) = check_pairs(&g).map_err(bad)?;
    if n_pairs == 0 {
        return Err(bad("no LoRA tensors".into()));
    }
    let info = AdapterInfo {
        name: g
            .get_str("general.name")
            .map(str::to_string)
            .unwrap_or_else(|| {
                path.file_stem()
                    .map_or("?".into(), |s| s.to_string_lossy().into_owned())
            }),
        arch,
        alpha,
        rank,
        targets: g.get_str(KEY_TARGETS).unwrap_or("?").to_string(),
        base_sha256: g.get_str(KEY_BASE_SHA256).map(str::to_string),
        base_name: g.get_str(KEY_BASE_NAME).map(str::to_string),
        n_pairs,
        n_params: g.tensors.iter().map(|t| t.n_elements()).sum(),
    };
    Ok((info, g))
}

/// Every tensor is half of a 2-D F32/F16 `lora_a`/`lora_b` pair of one
/// shared rank with finite values. Returns (rank, number of pairs), or
/// what is wrong.
fn check_pairs(g: &GgufFile) -> Result<(u64, usize), String> {
    let mut rank = None;
    let mut n_pairs = 0;
    for t in &g.tensors {
        let (base, is_a) = if let Some(b) = t.name.strip_suffix(".lora_a") {
            (b, true)
        } else if let Some(b) = t.name.strip_suffix(".lora_b") {
            (b, false)
        } else {
            return Err(format!("tensor `{}` is neither lora_a nor lora_b", t.name));
        };
        let other = format!("{base}.{}", if is_a { "lora_b" } else { "lora_a" });
        if g.tensor(&other).is_none() {
            return Err(format!("`{}` has no matching `{other}`", t.name));
        }
        if t.dims.len() != 2 {
            return Err(format!("`{}` is not 2-D", t.name));
        }
        let r = if is_a { t.dims[1] } else { t.dims[0] };
        if *rank.get_or_insert(r) != r {
            return Err(format!(
                "`{}` has rank {r}, others {}",
                t.name,
                rank.unwrap_or(0)
            ));
        }
        if !matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16) {
            return Err(format!(
                "`{}` is {}, expected F32 or F16",
                t.name, t.ggml_type
            ));
        }
        if g.tensor_f32(t)
            .is_some_and(|v| v.iter().any(|x| !x.is_finite()))
        {
            return Err(format!("`{}` holds NaN or infinite values", t.name));
        }
        n_pairs += usize::from(is_a);
    }
    Ok((rank.unwrap_or(0), n_pairs))
}

/// Validate an adapter against the base model it is about to be applied to:
/// same architecture, same base file (by sha256, when both are known), and
/// every pair names a base tensor with matching shapes. llama.cpp checks the
/// last itself, but by then it has already read the file.
pub fn check_against(
    path: &Path,
    base: &GgufFile,
    base_sha256: Option<&str>,
) -> Result<AdapterInfo, AdapterError> {
    let (info, g) = inspect(path)?;
    let mismatch = |what: String| AdapterError::Mismatch {
        path: path.to_path_buf(),
        what,
    };
    let base_arch = base.architecture().unwrap_or("?");
    if info.arch != base_arch {
        return Err(mismatch(format!(
            "adapter is for `{}`, model is `{base_arch}`",
            info.arch
        )));
    }
    if let (Some(a), Some(m)) = (&info.base_sha256, base_sha256) {
        if a != m {
            return Err(AdapterError::WrongBase {
                path: path.to_path_buf(),
                adapter: a.chars().take(12).collect(),
                model: m.chars().take(12).collect(),
            });
        }
    }
    for t in g.tensors.iter().filter(|t| t.name.ends_with(".lora_a")) {
        let name = t.name.trim_end_matches(".lora_a");
        let bt = base
            .tensor(name)
            .ok_or_else(|| mismatch(format!("the model has no tensor `{name}`")))?;
        let b = g.tensor(&format!("{name}.lora_b")).expect("pair checked");
        if bt.dims.len() != 2 || t.dims[0] != bt.dims[0] || b.dims[1] != bt.dims[1] {
            return Err(mismatch(format!(
                "`{name}` is {:?} in the model but the adapter is for [{}, {}]",
                bt.dims, t.dims[0], b.dims[1]
            )));
        }
    }
    Ok(info)
}
