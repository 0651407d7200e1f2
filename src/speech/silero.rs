//! Silero VAD, converted from the `silero-vad` package's safetensors into
//! whisper.cpp's VAD model format, so the detector runs on the same ggml as
//! whisper and llama.cpp (no ONNX Runtime, no second tensor library).
//!
//! Format (whisper.cpp `whisper_vad_init_with_params`, the layout its
//! `models/convert-silero-vad-to-ggml.py` writes): the ggml magic; the model
//! type as a length-prefixed string (`silero-16k`); a version (3 × i32,
//! logged only); window 512 and context 64 samples; 4 encoder layers as
//! (in, out, kernel); LSTM input and hidden sizes; final conv in/out; then
//! tensors as whisper models store them (n_dims, name length, type 0 = f32
//! or 1 = f16, dims fastest first, name, data). Convolution weights and the
//! STFT basis are f16, the rest f32, as whisper.cpp's loader expects.
//!
//! Name map (safetensors → whisper.cpp): `stft_conv.weight` →
//! `_model.stft.forward_basis_buffer`, `conv{1..4}` →
//! `_model.encoder.{0..3}.reparam_conv`, `lstm_cell` → `_model.decoder.rnn`,
//! `final_conv` → `_model.decoder.decoder.2`.

use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use super::SpeechError;

/// The package version the output is pinned for (whisper.cpp only logs it).
const VERSION: [i32; 3] = [6, 2, 3];
/// Samples per detector step at 16 kHz (32 ms), and the context carried.
pub const WINDOW: usize = 512;
const CONTEXT: i32 = 64;

/// The hyper-parameters after the version, as written here and checked by
/// `neural_vad::check_model`: window, context, layers, (in, out, kernel) ×
/// 4, LSTM input and hidden sizes, final conv in and out.
pub const HEADER: [i32; 19] = [
    WINDOW as i32,
    CONTEXT,
    4,
    129,
    128,
    3,
    128,
    64,
    3,
    64,
    64,
    3,
    64,
    128,
    3,
    128,
    128,
    128,
    1,
];
const MODEL_TYPE: &str = "silero-16k";

fn bad(path: &Path, msg: impl Into<String>) -> SpeechError {
    SpeechError::Model {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// One tensor to write: its whisper.cpp name, the source name, the shape
/// whisper.cpp reads (dims fastest first) and whether it is stored f16.
struct Planned {
    name: String,
    src: String,
    dims: Vec<usize>,
    f16: bool,
}

/// The tensors in the order whisper.cpp's converter writes them, with their
/// shapes checked against the source.
fn plan(st: &SafeTensors<'_>, path: &Path) -> Result<(Vec<Planned>, Vec<[i32; 3]>), SpeechError> {
    let shape = |n: &str| -> Result<Vec<usize>, SpeechError> {
        let t = st.tensor(n).map_err(|_| {
            bad(
                path,
                format!("no tensor `{n}`: not a Silero VAD 16 kHz model"),
            )
        })?;
        if t.dtype() != Dtype::F32 {
            return Err(bad(path, format!("`{n}` is {:?}, not F32", t.dtype())));
        }
        Ok(t.shape().to_vec())
    };
    let mut out = Vec::new();
    let mut layers = Vec::new();
    let mut prev = None;
    for i in 0..4 {
        let w = format!("conv{}.weight", i + 1);
        let s = shape(&w)?;
        let [o, c, k] = s[..] else {
            return Err(bad(
                path,
                format!("`{w}` has shape {s:?}, not [out, in, kernel]"),
            ));
        };
        if prev.is_some_and(|p| p != c) || (i == 0 && c != 129) {
            return Err(bad(path, format!("`{w}` takes {c} channels")));
        }
        prev = Some(o);
        layers.push([c as i32, o as i32, k as i32]);
        let b = format!("conv{}.bias", i + 1);
        if shape(&b)? != [o] {
            return Err(bad(path, format!("`{b}` is not [{o}]")));
        }
        let name = format!("_model.encoder.{i}.reparam_conv");
        out.push(Planned {
            name: format!("{name}.weight"),
            src: w,
            dims: vec![k, c, o],
            f16: true,
        });
        out.push(Planned {
            name: format!("{name}.bias"),
            src: b,
            dims: vec![o],
            f16: false,
        });
    }
    let hidden = prev.unwrap_or(0);
    for (src, name, dims) in [
        ("lstm_cell.weight_ih", "weight_ih", vec![hidden, 4 * hidden]),
        ("lstm_cell.weight_hh", "weight_hh", vec![hidden, 4 * hidden]),
        ("lstm_cell.bias_ih", "bias_ih", vec![4 * hidden]),
        ("lstm_cell.bias_hh", "bias_hh", vec![4 * hidden]),
    ] {
        let want: Vec<usize> = dims.iter().rev().copied().collect();
        if shape(src)? != want {
            return Err(bad(path, format!("`{src}` is not {want:?}")));
        }
        out.push(Planned {
            name: format!("_model.decoder.rnn.{name}"),
            src: src.into(),
            dims,
            f16: false,
        });
    }
    if shape("final_conv.weight")? != [1, hidden, 1] || shape("final_conv.bias")? != [1] {
        return Err(bad(
            path,
            format!("`final_conv` is not [1, {hidden}, 1] with one bias"),
        ));
    }
    out.push(Planned {
        name: "_model.decoder.decoder.2.weight".into(),
        src: "final_conv.weight".into(),
        dims: vec![hidden],
        f16: true,
    });
    out.push(Planned {
        name: "_model.decoder.decoder.2.bias".into(),
        src: "final_conv.bias".into(),
        dims: vec![1],
        f16: false,
    });
    if shape("stft_conv.weight")? != [258, 1, 256] {
        return Err(bad(path, "`stft_conv.weight` is not [258, 1, 256]"));
    }
    out.push(Planned {
        name: "_model.stft.forward_basis_buffer".into(),
        src: "stft_conv.weight".into(),
        dims: vec![256, 1, 258],
        f16: true,
    });
    Ok((out, layers))
}

/// Convert Silero VAD's safetensors (`src`: the file, or a fetched folder
/// holding it as `model.bin`) into whisper.cpp's VAD format at `out`,
/// atomically. Returns the bytes written.
///
/// # Errors
/// `SpeechError::Io` when a file cannot be read or written;
/// `SpeechError::Model` when the source is not Silero VAD 16 kHz (a missing
/// tensor, a wrong shape or type).
pub fn convert_silero(src: &Path, out: &Path) -> Result<u64, SpeechError> {
    let file = if src.is_dir() {
        src.join("model.bin")
    } else {
        src.to_path_buf()
    };
    let bytes = std::fs::read(&file).map_err(|e| SpeechError::Io {
        path: file.clone(),
        source: e,
    })?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(&file, format!("not a safetensors file: {e}")))?;
    let (tensors, layers) = plan(&st, &file)?;
    let hidden = layers[3][1];
    let mut header = vec![WINDOW as i32, CONTEXT, layers.len() as i32];
    header.extend(layers.iter().flatten());
    header.extend([hidden, hidden, hidden, 1]);
    if header[..] != HEADER[..] {
        return Err(bad(
            &file,
            format!("layer sizes {header:?}, not Silero 16 kHz's {HEADER:?}"),
        ));
    }
    let mut written = 0u64;
    crate::gguf::write_atomic(out, |w| {
        let mut put = |b: &[u8]| -> std::io::Result<()> {
            written += b.len() as u64;
            w.write_all(b)
        };
        put(&super::convert::GGML_MAGIC.to_le_bytes())?;
        put(&(MODEL_TYPE.len() as i32).to_le_bytes())?;
        put(MODEL_TYPE.as_bytes())?;
        for v in VERSION.iter().chain(&header) {
            put(&v.to_le_bytes())?;
        }
        for t in &tensors {
            put(&(t.dims.len() as i32).to_le_bytes())?;
            put(&(t.name.len() as i32).to_le_bytes())?;
            put(&i32::from(t.f16).to_le_bytes())?;
            for d in &t.dims {
                put(&(*d as i32).to_le_bytes())?;
            }
            put(t.name.as_bytes())?;
            let data = st.tensor(&t.src).expect("planned").data().to_vec();
            let mut buf = Vec::with_capacity(data.len());
            for c in data.chunks_exact(4) {
                let x = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                if t.f16 {
                    buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
                } else {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
            }
            put(&buf)?;
        }
        Ok(())
    })
    .map_err(|e| SpeechError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    Ok(written)
}
