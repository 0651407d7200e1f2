//! GGUF reader, validator and writer of our own.
//!
//! llama.cpp answers many malformed files with a `GGML_ASSERT` that aborts the
//! whole process, which on an unattended board means the service dies. So every
//! file is read here first, through a memory map and with every offset checked
//! against the file length, before any C code sees it: magic, version, the
//! key/value table, the tensor table, each tensor's data range (`reader`),
//! then what a model needs, the architecture and the tokenizer metadata
//! llama.cpp asserts on (`check`, `vocab`). The writer exists for LoRA
//! adapters and for the tiny models the tests generate; it writes atomically
//! (temp file, fsync, rename). The format: ggml's `docs/gguf.md`.

mod check;
mod hparams;
mod reader;
mod summary;
mod types;
mod value;
mod vocab;
mod writer;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

pub use check::SUPPORTED_ARCHITECTURES;
pub use summary::ModelSummary;
pub use types::{ftype_name, GgmlType};
pub use value::{Value, ValueType};
pub use writer::{write_atomic, GgufWriter};

/// `GGUF` in little-endian byte order.
const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;

/// What was wrong with a file, always naming the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: is a directory, not a model file")]
    Directory { path: PathBuf },
    #[error("{path}: file is empty")]
    Empty { path: PathBuf },
    #[error("{path}: not a GGUF file (starts with \"{found}\", expected \"GGUF\"){hint}")]
    BadMagic {
        path: PathBuf,
        found: String,
        hint: &'static str,
    },
    #[error("{path}: unsupported GGUF version {version} (supported: 2 and 3)")]
    Version { path: PathBuf, version: u32 },
    #[error("{path}: file truncated at byte {offset} of {len} while reading {what}: re-download it (`ferrite models pull NAME`)")]
    Truncated {
        path: PathBuf,
        offset: u64,
        len: u64,
        what: String,
    },
    #[error("{path}: corrupt at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error("{path}: tensor `{tensor}` data ends at byte {end} but the file has {len} bytes: the file is truncated, re-download it")]
    TensorOutOfBounds {
        path: PathBuf,
        tensor: String,
        end: u64,
        len: u64,
    },
    #[error("{path}: {what}")]
    Foreign { path: PathBuf, what: String },
}

/// One entry of the tensor table, with its data range checked.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (row) length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub data_offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A validated GGUF file, memory-mapped.
pub struct GgufFile {
    path: PathBuf,
    map: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("kv", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(Value::as_u64)
    }

    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// The raw bytes of a tensor (validated to lie inside the file).
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        &self.map[t.data_offset as usize..(t.data_offset + t.nbytes) as usize]
    }

    /// The values of an F32 tensor (`None` for any other type).
    pub fn tensor_f32(&self, t: &TensorInfo) -> Option<Vec<f32>> {
        (t.ggml_type == GgmlType::F32).then(|| {
            self.tensor_data(t)
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
