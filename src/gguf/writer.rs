//! Writing GGUF files (LoRA adapters, checkpoints, the tests' tiny models),
//! always atomically.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::reader::align_up;
use super::{GgmlType, Value, DEFAULT_ALIGNMENT, MAGIC};

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
    // 0644 (less the umask) as `File::create` would make it, not the 0600
    // of a temporary file: a store or adapter written by root (`sudo ferrite
    // models pull`) must be readable by the service's own user.
    let mut tmp = tempfile::Builder::new()
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)?;
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
    use crate::gguf::{GgufFile, ValueType};

    #[test]
    fn nbytes_follow_blocks() {
        assert_eq!(GgmlType::Q4_1.nbytes(&[64, 2]), Some(2 * 2 * 20));
        assert_eq!(GgmlType::Q4_1.nbytes(&[33]), None);
        assert_eq!(GgmlType::F32.nbytes(&[3, 5]), Some(60));
        assert_eq!(GgmlType::F32.nbytes(&[u64::MAX, 2]), None);
    }

    #[test]
    fn atomic_writes_are_readable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("receipt.toml");
        write_atomic(&p, |w| w.write_all(b"x")).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        // The umask may take away write bits, never read bits a test runs with.
        assert_eq!(mode & 0o444, 0o444, "mode {mode:o}");
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
