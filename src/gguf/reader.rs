//! Parsing a GGUF file from its memory map, every count and offset checked
//! against the bytes that are really there before anything is allocated or
//! read, so no file can make the reader panic, over-allocate or read out of
//! bounds.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use memmap2::Mmap;

use super::{
    GgmlType, GgufError, GgufFile, TensorInfo, Value, ValueType, DEFAULT_ALIGNMENT, MAGIC,
};

/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// The longest array accepted in the key/value table. Real models' largest
/// are the tokenizer's (262,144 tokens for Gemma 3, about as many merges);
/// 4 Mi elements leaves sixteen times that, and bounds what a hostile count
/// can make the reader allocate (about 128 MiB of `Value`s).
const MAX_ARRAY_LEN: u64 = 1 << 22;

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
                // Every element takes at least its encoded size: a count
                // larger than what is left is corruption, not a reason to
                // allocate. A parsed element costs far more memory than its
                // bytes (a `Value` is 32), so the count is also capped, and
                // the vector grows only as elements really parse.
                if n > self.remaining() / ety.min_encoded_len() {
                    return Err(self.truncated(&format!("`{key}` ({n} elements)")));
                }
                if n > MAX_ARRAY_LEN {
                    return Err(self.corrupt(format!(
                        "`{key}` has {n} elements, more than the {MAX_ARRAY_LEN} any model uses"
                    )));
                }
                let mut items = Vec::with_capacity((n as usize).min(1 << 12));
                for _ in 0..n {
                    items.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(ety, items)
            }
        })
    }
}

/// The GGUF magic, or an error that guesses what the file is instead.
fn check_magic(path: &Path, map: &[u8]) -> Result<(), GgufError> {
    let head = &map[..map.len().min(4)];
    if head == MAGIC {
        return Ok(());
    }
    let hint = match head {
        [0x6c, 0x6d, 0x67, 0x67] => " (a whisper.cpp/legacy ggml file, not a GGUF model)",
        [b'P', b'K', ..] => " (a zip archive: unpack it first)",
        [b'{', ..] | [b'#', ..] => " (a text file)",
        _ if head.len() < 4 => " (file too short)",
        _ => "",
    };
    Err(GgufError::BadMagic {
        path: path.to_path_buf(),
        found: head.escape_ascii().to_string(),
        hint,
    })
}

impl Cursor<'_> {
    /// The key/value table of `n_kv` entries; a key may appear once.
    fn metadata(&mut self, n_kv: u64) -> Result<BTreeMap<String, Value>, GgufError> {
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = self.string(&format!("key #{i}"))?;
            let raw = self.u32(&key)?;
            let ty = ValueType::from_u32(raw)
                .ok_or_else(|| self.corrupt(format!("`{key}`: unknown value type {raw}")))?;
            let v = self.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), v).is_some() {
                return Err(self.corrupt(format!("duplicate key `{key}`")));
            }
        }
        Ok(metadata)
    }

    /// Tensor table entry `i`, its shape checked against its type; the
    /// offset is still relative to the data section.
    fn tensor_entry(&mut self, i: u64, alignment: u64) -> Result<TensorInfo, GgufError> {
        let name = self.string(&format!("tensor #{i} name"))?;
        let n_dims = self.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(self.corrupt(format!("tensor `{name}` has {n_dims} dimensions")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = self.u64(&name)?;
            if d == 0 || d > i64::MAX as u64 {
                return Err(self.corrupt(format!("tensor `{name}` has dimension {d}")));
            }
            dims.push(d);
        }
        let ggml_type = GgmlType(self.u32(&name)?);
        let rel = self.u64(&name)?;
        if ggml_type.traits().is_none() {
            return Err(self.corrupt(format!(
                "tensor `{name}` has unknown ggml type {}",
                ggml_type.0
            )));
        }
        let nbytes = ggml_type.nbytes(&dims).ok_or_else(|| {
            self.corrupt(format!(
                "tensor `{name}` shape {dims:?} does not fit type {ggml_type}"
            ))
        })?;
        if rel % alignment != 0 {
            return Err(self.corrupt(format!(
                "tensor `{name}` offset {rel} is not aligned to {alignment}"
            )));
        }
        Ok(TensorInfo {
            name,
            dims,
            ggml_type,
            data_offset: rel,
            nbytes,
        })
    }
}

pub(super) fn align_up(v: u64, a: u64) -> Option<u64> {
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
        check_magic(path, &map)?;
        let mut c = Cursor {
            buf: &map,
            pos: 4,
            path,
        };
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
        let metadata = c.metadata(n_kv)?;
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(c.corrupt(format!("general.alignment {v} is not a power of two"))),
            },
        };
        let infos = (0..n_tensors)
            .map(|i| c.tensor_entry(i, alignment))
            .collect::<Result<Vec<_>, _>>()?;
        let data_start = align_up(c.pos as u64, alignment)
            .ok_or_else(|| c.corrupt("data section offset overflows"))?;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut seen = std::collections::HashSet::new();
        for mut t in infos {
            if !seen.insert(t.name.clone()) {
                return Err(c.corrupt(format!("duplicate tensor `{}`", t.name)));
            }
            // `data_offset` holds the offset into the data section so far.
            let start = data_start.checked_add(t.data_offset);
            match start.and_then(|s| s.checked_add(t.nbytes)) {
                Some(end) if end <= len => {
                    t.data_offset = start.expect("checked");
                    tensors.push(t);
                }
                end => {
                    return Err(GgufError::TensorOutOfBounds {
                        path: path.to_path_buf(),
                        tensor: t.name,
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
}
