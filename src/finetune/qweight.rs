//! Frozen base weights kept as the GGUF stores them (Q4_0, Q4_1, Q4_K,
//! Q5_0, Q6_K, Q8_0, F16, ... : whatever the file holds), memory-mapped, and
//! dequantized a block of rows at a time inside the trainer's matmuls, as
//! QLoRA does (Dettmers et al. 2023, "QLoRA: Efficient Finetuning of
//! Quantized LLMs"). The dequantizer is ggml's own (`ggml_get_type_traits
//! (type)->to_float`, the one llama.cpp's CPU backend uses), so the trainer
//! sees exactly the values llama.cpp computes with.
//!
//! A 135M-parameter model held in f32 needs 540 MB; held as its Q4_1 file,
//! 98 MB, mapped from the page cache and shared with the runtime's own copy.

use std::sync::Arc;

use candle_core::{bail, Result, WithDType};
use rayon::prelude::*;

use crate::gguf::{GgufFile, TensorInfo};

/// ggml's F32 type id, which has no `to_float` (it is float already).
const GGML_F32: u32 = 0;

/// One 2-D weight [rows, cols] in its stored type.
pub(crate) struct QuantRows {
    file: Arc<GgufFile>,
    info: TensorInfo,
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    row_bytes: usize,
    to_float: Option<unsafe extern "C" fn(*const std::ffi::c_void, *mut f32, i64)>,
}

impl std::fmt::Debug for QuantRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantRows[{}, {}]", self.rows, self.cols)
    }
}

impl QuantRows {
    /// The 2-D tensor `t` of `file` ([rows, cols] in row-major terms: ggml's
    /// `dims` = [cols, rows]).
    ///
    /// Errors: a tensor that is not 2-D, or whose type ggml cannot turn into
    /// floats, or whose rows are not whole blocks.
    pub(crate) fn new(file: Arc<GgufFile>, t: &TensorInfo) -> Result<QuantRows> {
        let [cols, rows] = t.dims[..] else {
            bail!("{}: a weight matrix must be 2-D, not {:?}", t.name, t.dims);
        };
        let (cols, rows) = (cols as usize, rows as usize);
        let Some(row_bytes) = t.ggml_type.nbytes(&[cols as u64]) else {
            bail!(
                "{}: rows of {cols} are not whole {} blocks",
                t.name,
                t.ggml_type.name()
            );
        };
        let to_float = if t.ggml_type.0 == GGML_F32 {
            None
        } else {
            // SAFETY: ggml's type-traits table is static; the pointer is valid
            // for every type id below GGML_TYPE_COUNT, which GgufFile's checks
            // guarantee for every tensor it lists.
            let f = unsafe {
                let traits = llama_cpp_sys_2::ggml_get_type_traits(t.ggml_type.0 as _);
                traits.as_ref().and_then(|tr| tr.to_float)
            };
            if f.is_none() {
                bail!("{}: ggml cannot dequantize {}", t.name, t.ggml_type.name());
            }
            f
        };
        Ok(QuantRows {
            info: t.clone(),
            rows,
            cols,
            row_bytes: row_bytes as usize,
            to_float,
            file,
        })
    }

    fn row_data(&self, r: usize) -> &[u8] {
        let all = self.file.tensor_data(&self.info);
        &all[r * self.row_bytes..(r + 1) * self.row_bytes]
    }

    /// Dequantize row `r` into `out` (`cols` floats).
    fn row_f32(&self, r: usize, out: &mut [f32]) {
        let src = self.row_data(r);
        match self.to_float {
            // SAFETY: `src` holds exactly one row of whole blocks of this
            // type (checked in `new`) and `out` has room for `cols` floats.
            Some(f) => unsafe { f(src.as_ptr().cast(), out.as_mut_ptr(), self.cols as i64) },
            None => {
                for (o, b) in out.iter_mut().zip(src.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
        }
    }

    /// Rows `r0..r1` as floats of type `T`, row-major, into `buf` (resized),
    /// on this thread.
    pub(crate) fn dequant<T: WithDType>(&self, r0: usize, r1: usize, buf: &mut Vec<T>) {
        let cols = self.cols;
        buf.resize((r1 - r0) * cols, T::zero());
        if let Some(f32s) = (buf as &mut dyn std::any::Any).downcast_mut::<Vec<f32>>() {
            for (i, out) in f32s.chunks_exact_mut(cols).enumerate() {
                self.row_f32(r0 + i, out);
            }
            return;
        }
        let mut tmp = vec![0f32; cols];
        for (i, out) in buf.chunks_exact_mut(cols).enumerate() {
            self.row_f32(r0 + i, &mut tmp);
            for (o, &v) in out.iter_mut().zip(tmp.iter()) {
                *o = T::from_f64(v as f64);
            }
        }
    }

    /// The rows named by `ids` (an embedding lookup), as f32.
    pub(crate) fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let cols = self.cols;
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.rows) {
            bail!(
                "token {bad} is outside the {} rows of the embedding",
                self.rows
            );
        }
        let mut out = vec![0f32; ids.len() * cols];
        out.par_chunks_mut(cols)
            .zip(ids.par_iter())
            .for_each(|(o, &id)| self.row_f32(id as usize, o));
        Ok(out)
    }

    /// Bytes this weight takes in the file.
    pub(crate) fn nbytes(&self) -> usize {
        self.rows * self.row_bytes
    }
}
