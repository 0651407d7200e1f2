//! GGUF reader, validator and writer of our own.
//!
//! llama.cpp answers many malformed files with a `GGML_ASSERT` that aborts the
//! whole process, which on an unattended board means the service dies. So every
//! file is read here first, through a memory map and with every offset checked
//! against the file length, before any C code sees it: magic, version, the
//! key/value table, the tensor table, each tensor's data range and the
//! architecture. The writer exists for LoRA adapters and for the tiny models the
//! tests generate; it writes atomically (temp file, fsync, rename).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

/// `GGUF` in little-endian byte order.
const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// Architectures that the vendored llama.cpp is known to load and that ferrite
/// has been run against or that share the llama graph closely enough.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "llama",
    "gemma",
    "gemma2",
    "gemma3",
    "qwen2",
    "qwen3",
    "phi3",
    "mistral3",
    "granite",
    "olmo",
    "olmo2",
    "stablelm",
    "smollm3",
    "exaone",
    "internlm2",
    "starcoder2",
    "falcon",
];

/// What was wrong with a file, always naming the file.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: cannot read: {source}")]
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

/// A value in the key/value table.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    /// Arrays keep their element type so the writer can round-trip them.
    Array(ValueType, Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

/// GGUF value type tags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum ValueType {
    U8 = 0,
    I8 = 1,
    U16 = 2,
    I16 = 3,
    U32 = 4,
    I32 = 5,
    F32 = 6,
    Bool = 7,
    Str = 8,
    Array = 9,
    U64 = 10,
    I64 = 11,
    F64 = 12,
}

impl ValueType {
    fn from_u32(v: u32) -> Option<Self> {
        use ValueType::*;
        Some(match v {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => Str,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }
}

impl Value {
    /// The value as an unsigned integer, if it is any integer type.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Value::F32(v) => Some(v),
            Value::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    fn value_type(&self) -> ValueType {
        match self {
            Value::U8(_) => ValueType::U8,
            Value::I8(_) => ValueType::I8,
            Value::U16(_) => ValueType::U16,
            Value::I16(_) => ValueType::I16,
            Value::U32(_) => ValueType::U32,
            Value::I32(_) => ValueType::I32,
            Value::F32(_) => ValueType::F32,
            Value::Bool(_) => ValueType::Bool,
            Value::Str(_) => ValueType::Str,
            Value::Array(..) => ValueType::Array,
            Value::U64(_) => ValueType::U64,
            Value::I64(_) => ValueType::I64,
            Value::F64(_) => ValueType::F64,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::U8(v) => write!(f, "{v}"),
            Value::I8(v) => write!(f, "{v}"),
            Value::U16(v) => write!(f, "{v}"),
            Value::I16(v) => write!(f, "{v}"),
            Value::U32(v) => write!(f, "{v}"),
            Value::I32(v) => write!(f, "{v}"),
            Value::F32(v) => write!(f, "{v}"),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Str(v) => write!(f, "{v:?}"),
            Value::Array(_, v) => write!(f, "[{} items]", v.len()),
            Value::U64(v) => write!(f, "{v}"),
            Value::I64(v) => write!(f, "{v}"),
            Value::F64(v) => write!(f, "{v}"),
        }
    }
}

/// A ggml tensor type with its block geometry, as in ggml's `type_traits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q8_0: GgmlType = GgmlType(8);

    /// (name, elements per block, bytes per block)
    fn traits(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 36),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            40 => ("NVFP4", 64, 36),
            41 => ("Q1_0", 128, 18),
            42 => ("Q2_0", 64, 18),
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        self.traits().map_or("unknown", |t| t.0)
    }

    /// Bytes taken by a tensor of this type with `dims` (ggml order, `dims[0]`
    /// innermost), or `None` if the row length does not fit the block size or
    /// the size overflows.
    pub fn nbytes(self, dims: &[u64]) -> Option<u64> {
        let (_, block, size) = self.traits()?;
        let (&ne0, rest) = dims.split_first()?;
        if ne0 % block != 0 {
            return None;
        }
        let row = (ne0 / block).checked_mul(size)?;
        rest.iter().try_fold(row, |acc, &d| acc.checked_mul(d))
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.traits() {
            Some((n, ..)) => f.write_str(n),
            None => write!(f, "type{}", self.0),
        }
    }
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

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn truncated(&self, what: &str) -> GgufError {
        GgufError::Truncated {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            len: self.buf.len() as u64,
            what: what.to_string(),
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: self.pos as u64,
            what: what.into(),
        }
    }

    fn bytes(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        let n = usize::try_from(n).map_err(|_| self.truncated(what))?;
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| self.truncated(what))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let b = self.bytes(N as u64, what)?;
        Ok(b.try_into().expect("length checked"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let start = self.pos;
        let b = self.bytes(len, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: start as u64,
            what: format!("{what} is not valid UTF-8"),
        })
    }

    /// The number of bytes left, used to reject counts that cannot possibly
    /// fit before allocating anything for them.
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: u32) -> Result<Value, GgufError> {
        use ValueType as T;
        Ok(match ty {
            T::U8 => Value::U8(self.array::<1>(key)?[0]),
            T::I8 => Value::I8(self.array::<1>(key)?[0] as i8),
            T::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            T::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            T::U32 => Value::U32(self.u32(key)?),
            T::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            T::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            T::Bool => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.corrupt(format!("`{key}`: bool byte {b}"))),
            },
            T::Str => Value::Str(self.string(key)?),
            T::U64 => Value::U64(self.u64(key)?),
            T::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            T::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            T::Array => {
                if depth > 0 {
                    return Err(self.corrupt(format!("`{key}`: nested arrays are not supported")));
                }
                let raw = self.u32(key)?;
                let ety = ValueType::from_u32(raw)
                    .ok_or_else(|| self.corrupt(format!("`{key}`: unknown array type {raw}")))?;
                let n = self.u64(key)?;
                // Every element takes at least one byte: a count larger than
                // what is left is corruption, not a reason to allocate.
                if n > self.remaining() {
                    return Err(self.truncated(&format!("`{key}` ({n} elements)")));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(ety, items)
            }
        })
    }
}

fn align_up(v: u64, a: u64) -> Option<u64> {
    v.checked_add(a - 1).map(|x| x / a * a)
}

impl GgufFile {
    /// Open, map and fully validate a GGUF file. Nothing of it is trusted
    /// before this returns.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.is_dir() {
            return Err(GgufError::Directory {
                path: path.to_path_buf(),
            });
        }
        if meta.len() == 0 {
            return Err(GgufError::Empty {
                path: path.to_path_buf(),
            });
        }
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated by another process
        // while mapped would fault, which is the same contract llama.cpp's own
        // mmap loader has. Model files in the store are never rewritten in place.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        Self::parse(path, map)
    }

    fn parse(path: &Path, map: Mmap) -> Result<GgufFile, GgufError> {
        let len = map.len() as u64;
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            path,
        };
        let head: Vec<u8> = map.iter().take(4).copied().collect();
        if head.len() < 4 || head[..] != MAGIC {
            let hint = match head.as_slice() {
                [0x6c, 0x6d, 0x67, 0x67] => " (a whisper.cpp/legacy ggml file, not a GGUF model)",
                [b'P', b'K', ..] => " (a zip archive: unpack it first)",
                [b'{', ..] | [b'#', ..] => " (a text file)",
                _ if head.len() < 4 => " (file too short)",
                _ => "",
            };
            return Err(GgufError::BadMagic {
                path: path.to_path_buf(),
                found: head.escape_ascii().to_string(),
                hint,
            });
        }
        c.pos = 4;
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(GgufError::Version {
                path: path.to_path_buf(),
                version,
            });
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("key/value count")?;
        // A key takes at least 8+4 bytes, a tensor entry at least 8+4+8+4+8.
        if n_kv > c.remaining() / 12 {
            return Err(c.corrupt(format!("key/value count {n_kv} cannot fit in the file")));
        }
        if n_tensors > c.remaining() / 32 {
            return Err(c.corrupt(format!("tensor count {n_tensors} cannot fit in the file")));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("key #{i}"))?;
            let raw = c.u32(&key)?;
            let ty = ValueType::from_u32(raw)
                .ok_or_else(|| c.corrupt(format!("`{key}`: unknown value type {raw}")))?;
            let v = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(c.corrupt(format!("duplicate key `{key}`")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(c.corrupt(format!("general.alignment {v} is not a power of two"))),
            },
        };
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor #{i} name"))?;
            let n_dims = c.u32(&name)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64(&name)?;
                if d == 0 || d > i64::MAX as u64 {
                    return Err(c.corrupt(format!("tensor `{name}` has dimension {d}")));
                }
                dims.push(d);
            }
            let ggml_type = GgmlType(c.u32(&name)?);
            let rel = c.u64(&name)?;
            if ggml_type.traits().is_none() {
                return Err(c.corrupt(format!(
                    "tensor `{name}` has unknown ggml type {}",
                    ggml_type.0
                )));
            }
            let nbytes = ggml_type.nbytes(&dims).ok_or_else(|| {
                c.corrupt(format!(
                    "tensor `{name}` shape {dims:?} does not fit type {ggml_type}"
                ))
            })?;
            if rel % alignment != 0 {
                return Err(c.corrupt(format!(
                    "tensor `{name}` offset {rel} is not aligned to {alignment}"
                )));
            }
            infos.push((name, dims, ggml_type, rel, nbytes));
        }
        let data_start = align_up(c.pos as u64, alignment)
            .ok_or_else(|| c.corrupt("data section offset overflows"))?;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut seen = std::collections::HashSet::new();
        for (name, dims, ggml_type, rel, nbytes) in infos {
            if !seen.insert(name.clone()) {
                return Err(c.corrupt(format!("duplicate tensor `{name}`")));
            }
            let start = data_start.checked_add(rel);
            let end = start.and_then(|s| s.checked_add(nbytes));
            match (start, end) {
                (Some(start), Some(end)) if end <= len => tensors.push(TensorInfo {
                    name,
                    dims,
                    ggml_type,
                    data_offset: start,
                    nbytes,
                }),
                (_, end) => {
                    return Err(GgufError::TensorOutOfBounds {
                        path: path.to_path_buf(),
                        tensor: name,
                        end: end.unwrap_or(u64::MAX),
                        len,
                    })
                }
            }
        }
        Ok(GgufFile {
            path: path.to_path_buf(),
            map,
            version,
            metadata,
            tensors,
            alignment,
        })
    }

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

    /// Check that this is a language model llama.cpp can run: a known
    /// architecture, not an adapter, with the hyperparameters and tensors the
    /// loader needs. This catches files that are valid GGUF but foreign.
    pub fn check_model(&self) -> Result<(), GgufError> {
        let foreign = |what: String| GgufError::Foreign {
            path: self.path.clone(),
            what,
        };
        let arch = self.architecture().ok_or_else(|| {
            foreign("GGUF file has no `general.architecture`: not a model".into())
        })?;
        if self.get_str("general.type") == Some("adapter") {
            return Err(foreign(format!(
                "this is a LoRA adapter for `{arch}`, not a model: pass it with --lora"
            )));
        }
        if !SUPPORTED_ARCHITECTURES.contains(&arch) {
            return Err(foreign(format!(
                "architecture `{arch}` is not supported (supported: {})",
                SUPPORTED_ARCHITECTURES.join(", ")
            )));
        }
        for key in ["block_count", "embedding_length"] {
            if self.get_u64(&format!("{arch}.{key}")).is_none() {
                return Err(foreign(format!(
                    "missing `{arch}.{key}`: not a complete model"
                )));
            }
        }
        if self.get("tokenizer.ggml.tokens").is_none() {
            return Err(foreign(
                "no tokenizer (`tokenizer.ggml.tokens`) in the file".into(),
            ));
        }
        if self.tensor("token_embd.weight").is_none() {
            return Err(foreign(
                "no `token_embd.weight` tensor: not a complete model".into(),
            ));
        }
        Ok(())
    }

    /// A summary for `ferrite models info`.
    pub fn summary(&self) -> ModelSummary {
        let arch = self.architecture().unwrap_or("?").to_string();
        let mut types: BTreeMap<GgmlType, usize> = BTreeMap::new();
        for t in &self.tensors {
            *types.entry(t.ggml_type).or_default() += 1;
        }
        let file_type = self.get_u64("general.file_type").map(ftype_name);
        ModelSummary {
            name: self.get_str("general.name").map(str::to_string),
            n_params: self.tensors.iter().map(TensorInfo::n_elements).sum(),
            context_length: self.get_u64(&format!("{arch}.context_length")),
            n_layers: self.get_u64(&format!("{arch}.block_count")),
            n_embd: self.get_u64(&format!("{arch}.embedding_length")),
            n_vocab: match self.get("tokenizer.ggml.tokens") {
                Some(Value::Array(_, v)) => Some(v.len() as u64),
                _ => None,
            },
            chat_template: self.get("tokenizer.chat_template").is_some(),
            tensor_types: types.into_iter().map(|(t, n)| (t.to_string(), n)).collect(),
            file_type: file_type.map(str::to_string),
            file_size: self.map.len() as u64,
            version: self.version,
            arch,
        }
    }
}

/// What `ferrite models info` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelSummary {
    pub arch: String,
    pub name: Option<String>,
    pub n_params: u64,
    pub file_type: Option<String>,
    pub context_length: Option<u64>,
    pub n_layers: Option<u64>,
    pub n_embd: Option<u64>,
    pub n_vocab: Option<u64>,
    pub chat_template: bool,
    pub tensor_types: Vec<(String, usize)>,
    pub file_size: u64,
    pub version: u32,
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        writeln!(f, "architecture:   {}", self.arch)?;
        if let Some(n) = &self.name {
            writeln!(f, "name:           {n}")?;
        }
        writeln!(
            f,
            "parameters:     {} ({:.1} M)",
            self.n_params,
            self.n_params as f64 / 1e6
        )?;
        writeln!(
            f,
            "file type:      {}",
            self.file_type.as_deref().unwrap_or("?")
        )?;
        let types: Vec<String> = self
            .tensor_types
            .iter()
            .map(|(t, n)| format!("{t}×{n}"))
            .collect();
        writeln!(f, "tensor types:   {}", types.join(", "))?;
        writeln!(f, "context length: {}", opt(self.context_length))?;
        writeln!(f, "layers:         {}", opt(self.n_layers))?;
        writeln!(f, "embedding:      {}", opt(self.n_embd))?;
        writeln!(f, "vocabulary:     {}", opt(self.n_vocab))?;
        writeln!(
            f,
            "chat template:  {}",
            if self.chat_template {
                "yes"
            } else {
                "no (ChatML fallback)"
            }
        )?;
        write!(
            f,
            "file:           {} bytes, GGUF v{}",
            self.file_size, self.version
        )
    }
}

/// llama.cpp's `llama_ftype` names, as `llama-bench` prints them.
pub fn ftype_name(ftype: u64) -> &'static str {
    match ftype {
        0 => "all F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        7 => "Q8_0",
        8 => "Q5_0",
        9 => "Q5_1",
        10 => "Q2_K - Medium",
        11 => "Q3_K - Small",
        12 => "Q3_K - Medium",
        13 => "Q3_K - Large",
        14 => "Q4_K - Small",
        15 => "Q4_K - Medium",
        16 => "Q5_K - Small",
        17 => "Q5_K - Medium",
        18 => "Q6_K",
        19 => "IQ2_XXS - 2.0625 bpw",
        20 => "IQ2_XS - 2.3125 bpw",
        21 => "Q2_K - Small",
        22 => "IQ3_XS - 3.3 bpw",
        23 => "IQ3_XXS - 3.0625 bpw",
        24 => "IQ1_S - 1.5625 bpw",
        25 => "IQ4_NL - 4.5 bpw",
        26 => "IQ3_S - 3.4375 bpw",
        27 => "IQ3_S mix - 3.66 bpw",
        28 => "IQ2_S - 2.5 bpw",
        29 => "IQ2_M - 2.7 bpw",
        30 => "IQ4_XS - 4.25 bpw",
        31 => "IQ1_M - 1.75 bpw",
        32 => "BF16",
        36 => "TQ1_0 - 1.69 bpw ternary",
        37 => "TQ2_0 - 2.06 bpw ternary",
        38 => "MXFP4 MoE",
        _ => "unknown",
    }
}

/// Builds a GGUF file in memory order and writes it atomically.
#[derive(Default)]
pub struct GgufWriter {
    kv: Vec<(String, Value)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
    alignment: u64,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            ..Default::default()
        }
    }

    /// Set a key (replacing an earlier value of the same key).
    pub fn kv(&mut self, key: &str, value: Value) -> &mut Self {
        match self.kv.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.kv.push((key.to_string(), value)),
        }
        self
    }

    /// Add a tensor; `dims` in ggml order, `data` already in the type's layout.
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> &mut Self {
        assert_eq!(
            ty.nbytes(dims),
            Some(data.len() as u64),
            "tensor `{name}` data length does not match its shape"
        );
        self.tensors
            .push((name.to_string(), dims.to_vec(), ty, data));
        self
    }

    /// An f32 tensor from values.
    pub fn tensor_f32(&mut self, name: &str, dims: &[u64], values: &[f32]) -> &mut Self {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, GgmlType::F32, data)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.kv.len() as u64).to_le_bytes());
        fn put_str(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        fn put_val(out: &mut Vec<u8>, v: &Value) {
            match v {
                Value::U8(x) => out.push(*x),
                Value::I8(x) => out.push(*x as u8),
                Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::Bool(x) => out.push(u8::from(*x)),
                Value::Str(s) => put_str(out, s),
                Value::Array(t, items) => {
                    out.extend_from_slice(&(*t as u32).to_le_bytes());
                    out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                    for i in items {
                        put_val(out, i);
                    }
                }
                Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
                Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
            }
        }
        for (k, v) in &self.kv {
            put_str(&mut out, k);
            out.extend_from_slice(&(v.value_type() as u32).to_le_bytes());
            put_val(&mut out, v);
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.0.to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = align_up(offset + data.len() as u64, self.alignment).expect("size");
        }
        let start = align_up(out.len() as u64, self.alignment).expect("size") as usize;
        out.resize(start, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(start + off as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }

    /// Write atomically: a temp file beside `path`, fsync, rename.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, |w| w.write_all(&self.to_bytes()))
    }
}

/// Write a file atomically: a temp file in the same directory, fsync, rename,
/// fsync the directory. A crash at any moment leaves the old file or the new.
pub fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<&mut File>) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    {
        let mut w = BufWriter::new(tmp.as_file_mut());
        fill(&mut w)?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nbytes_follow_blocks() {
        assert_eq!(GgmlType::Q4_1.nbytes(&[64, 2]), Some(2 * 2 * 20));
        assert_eq!(GgmlType::Q4_1.nbytes(&[33]), None);
        assert_eq!(GgmlType::F32.nbytes(&[3, 5]), Some(60));
        assert_eq!(GgmlType::F32.nbytes(&[u64::MAX, 2]), None);
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gguf");
        let mut w = GgufWriter::new();
        w.kv("general.architecture", Value::Str("llama".into()))
            .kv("a.list", Value::Array(ValueType::U32, vec![Value::U32(7)]))
            .tensor_f32("t", &[3], &[1.0, 2.0, 3.0]);
        w.write(&p).unwrap();
        let g = GgufFile::open(&p).unwrap();
        assert_eq!(g.architecture(), Some("llama"));
        let t = g.tensor("t").unwrap();
        assert_eq!(
            g.tensor_data(t),
            &[1f32, 2.0, 3.0].map(f32::to_le_bytes).concat()[..]
        );
    }
}
