//! Reader for CTranslate2 `model.bin` files, the format the registries ship
//! Whisper in (faster-whisper conversions).
//!
//! Layout (little-endian): `u32 version`, spec name, `u32 revision`, `u32
//! n_vars`, then per variable: name, `u8 rank`, rank × `u32` dims, `u8 dtype`,
//! `u32 nbytes`, row-major data; then `u32 n_aliases` and name pairs. Strings
//! are `u16 len` (counting a trailing NUL) and bytes. The file is memory-mapped
//! and every length is checked against what is left, so a truncated or foreign
//! file is an error naming the byte offset, never a panic; parsing must end
//! exactly at the end of the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::SpeechError;

/// Element type of a CTranslate2 variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ct2Type {
    F32,
    I8,
    I16,
    I32,
    F16,
    Bf16,
}

impl Ct2Type {
    fn from_u8(v: u8) -> Option<Ct2Type> {
        Some(match v {
            0 => Ct2Type::F32,
            1 => Ct2Type::I8,
            2 => Ct2Type::I16,
            3 => Ct2Type::I32,
            4 => Ct2Type::F16,
            5 => Ct2Type::Bf16,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Ct2Type::I8 => 1,
            Ct2Type::I16 | Ct2Type::F16 | Ct2Type::Bf16 => 2,
            Ct2Type::F32 | Ct2Type::I32 => 4,
        }
    }
}

/// One variable: its shape (row-major, outermost first), type and bytes.
#[derive(Debug, Clone)]
pub struct Variable {
    pub dims: Vec<usize>,
    pub dtype: Ct2Type,
    offset: usize,
    nbytes: usize,
}

impl Variable {
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
}

/// A parsed CTranslate2 model file.
pub struct Ct2Model {
    path: PathBuf,
    map: Mmap,
    pub spec: String,
    pub version: u32,
    vars: BTreeMap<String, Variable>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl Cursor<'_> {
    fn err(&self, what: &str) -> SpeechError {
        SpeechError::Ct2 {
            path: self.path.to_path_buf(),
            msg: format!(
                "{what} at byte {} (file is {} bytes): the file is truncated or not a CTranslate2 model",
                self.pos,
                self.buf.len()
            ),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], SpeechError> {
        if self.buf.len() - self.pos < n {
            return Err(self.err(&format!("{what} runs past the end")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &str) -> Result<u8, SpeechError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, SpeechError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, SpeechError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn string(&mut self, what: &str) -> Result<String, SpeechError> {
        let n = self.u16(what)? as usize;
        let b = self.take(n, what)?;
        let b = b.strip_suffix(&[0]).unwrap_or(b);
        String::from_utf8(b.to_vec()).map_err(|_| self.err(&format!("{what} is not UTF-8")))
    }
}

impl Ct2Model {
    /// Parse `path` (a `model.bin`).
    pub fn open(path: &Path) -> Result<Ct2Model, SpeechError> {
        let file = std::fs::File::open(path).map_err(|e| SpeechError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        // SAFETY: the map is read-only and the store never rewrites a file in
        // place (pulls write a new file and rename).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| SpeechError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
        let mut c = Cursor {
            buf: &map,
            pos: 0,
            path,
        };
        let version = c.u32("version")?;
        if !(1..=100).contains(&version) {
            return Err(c.err(&format!("unsupported version {version}")));
        }
        let spec = c.string("spec name")?;
        let _revision = c.u32("spec revision")?;
        let n_vars = c.u32("variable count")? as usize;
        let mut vars = BTreeMap::new();
        for _ in 0..n_vars {
            let name = c.string("variable name")?;
            let rank = c.u8("rank")? as usize;
            if rank > 8 {
                return Err(c.err(&format!("variable `{name}` has rank {rank}")));
            }
            let mut dims = Vec::with_capacity(rank);
            for _ in 0..rank {
                dims.push(c.u32("dimension")? as usize);
            }
            let raw = c.u8("dtype")?;
            let dtype = Ct2Type::from_u8(raw)
                .ok_or_else(|| c.err(&format!("variable `{name}` has unknown dtype {raw}")))?;
            let nbytes = c.u32("byte count")? as usize;
            let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if numel.and_then(|n| n.checked_mul(dtype.size())) != Some(nbytes) {
                return Err(c.err(&format!(
                    "variable `{name}`: {nbytes} bytes do not match shape {dims:?} of {dtype:?}"
                )));
            }
            let offset = c.pos;
            c.take(nbytes, &format!("data of `{name}`"))?;
            vars.insert(
                name,
                Variable {
                    dims,
                    dtype,
                    offset,
                    nbytes,
                },
            );
        }
        let n_aliases = c.u32("alias count")?;
        for _ in 0..n_aliases {
            c.string("alias")?;
            c.string("alias target")?;
        }
        if c.pos != map.len() {
            return Err(c.err("trailing bytes after the aliases"));
        }
        Ok(Ct2Model {
            path: path.to_path_buf(),
            map,
            spec,
            version,
            vars,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn get(&self, name: &str) -> Result<&Variable, SpeechError> {
        self.vars.get(name).ok_or_else(|| SpeechError::Ct2 {
            path: self.path.clone(),
            msg: format!("no variable `{name}`: not a CTranslate2 Whisper model"),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    pub fn bytes(&self, v: &Variable) -> &[u8] {
        &self.map[v.offset..v.offset + v.nbytes]
    }

    /// A floating-point variable (f32, f16 or bf16); integer ones are the
    /// weights of int8-quantized models, which do not convert.
    pub fn float(&self, name: &str) -> Result<&Variable, SpeechError> {
        let v = self.get(name)?;
        match v.dtype {
            Ct2Type::F32 | Ct2Type::F16 | Ct2Type::Bf16 => Ok(v),
            other => Err(SpeechError::Ct2 {
                path: self.path.clone(),
                msg: format!(
                    "variable `{name}` is {other:?}: only float16/float32 models convert \
                     (int8-quantized CTranslate2 models do not)"
                ),
            }),
        }
    }

    /// A variable's values as f32 (from f32, f16 or bf16).
    pub fn f32s(&self, name: &str) -> Result<Vec<f32>, SpeechError> {
        let n = self.get(name)?.numel();
        self.f32s_range(name, 0..n)
    }

    /// Elements `range` (row-major) of a variable as f32.
    pub fn f32s_range(
        &self,
        name: &str,
        range: std::ops::Range<usize>,
    ) -> Result<Vec<f32>, SpeechError> {
        let v = self.float(name)?;
        let size = v.dtype.size();
        let b = &self.bytes(v)[range.start * size..range.end * size];
        Ok(match v.dtype {
            Ct2Type::F32 => b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Ct2Type::F16 => b
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            _ => b
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        })
    }

    /// A scalar integer attribute (`encoder/num_heads`, flags).
    pub fn int(&self, name: &str) -> Result<i64, SpeechError> {
        let v = self.get(name)?;
        let b = self.bytes(v);
        let bad = || SpeechError::Ct2 {
            path: self.path.clone(),
            msg: format!("attribute `{name}` is not an integer scalar"),
        };
        if v.numel() != 1 {
            return Err(bad());
        }
        Ok(match v.dtype {
            Ct2Type::I8 => b[0] as i8 as i64,
            Ct2Type::I16 => i16::from_le_bytes([b[0], b[1]]) as i64,
            Ct2Type::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => return Err(bad()),
        })
    }
}
