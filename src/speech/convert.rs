//! CTranslate2 Whisper → whisper.cpp ggml model conversion
//! (`ferrite models convert-whisper`, and the last step of pulling a Whisper
//! model).
//!
//! whisper.cpp reads its own pre-GGUF format: magic, eleven i32 hyper-
//! parameters, the mel filterbank, the byte vocabulary, then named tensors.
//! CTranslate2 fuses some projections that whisper.cpp keeps apart, so those
//! are split by rows: self-attention `linear_0` is Q, K, V stacked;
//! cross-attention `linear_1` is K then V. whisper.cpp has no key bias; the
//! one CTranslate2 stores is zero, and is checked to be. 2-D weights are
//! written f16 (copied as they are when the source is f16), everything else
//! f32, as whisper.cpp allocates them. The output is written atomically and
//! is byte-for-byte deterministic, so a pull can pin its sha256.

use std::io::Write;
use std::path::Path;

use super::ct2::{Ct2Model, Ct2Type};
use super::SpeechError;

/// whisper.cpp's file magic, `ggml` read as a little-endian u32.
pub const GGML_MAGIC: u32 = 0x6767_6d6c;
const N_FFT_BINS: usize = 201; // n_fft 400 / 2 + 1
const SAMPLE_RATE: f64 = 16_000.0;

/// Hyper-parameters in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Hparams {
    pub n_vocab: i32,
    pub n_audio_ctx: i32,
    pub n_audio_state: i32,
    pub n_audio_head: i32,
    pub n_audio_layer: i32,
    pub n_text_ctx: i32,
    pub n_text_state: i32,
    pub n_text_head: i32,
    pub n_text_layer: i32,
    pub n_mels: i32,
    pub ftype: i32,
}

impl Hparams {
    pub fn to_array(self) -> [i32; 11] {
        [
            self.n_vocab,
            self.n_audio_ctx,
            self.n_audio_state,
            self.n_audio_head,
            self.n_audio_layer,
            self.n_text_ctx,
            self.n_text_state,
            self.n_text_head,
            self.n_text_layer,
            self.n_mels,
            self.ftype,
        ]
    }

    pub fn from_array(a: [i32; 11]) -> Hparams {
        Hparams {
            n_vocab: a[0],
            n_audio_ctx: a[1],
            n_audio_state: a[2],
            n_audio_head: a[3],
            n_audio_layer: a[4],
            n_text_ctx: a[5],
            n_text_state: a[6],
            n_text_head: a[7],
            n_text_layer: a[8],
            n_mels: a[9],
            ftype: a[10],
        }
    }

    /// End-of-text token id: the vocabulary file holds ids below it.
    pub fn eot(&self) -> usize {
        if self.n_vocab >= 51865 {
            50257
        } else {
            50256
        }
    }
}

/// What a conversion produced, for the CLI to report.
#[derive(Debug, Clone)]
pub struct Converted {
    pub hparams: Hparams,
    pub tensors: usize,
    pub bytes: u64,
}

fn bad(ct2: &Ct2Model, msg: impl Into<String>) -> SpeechError {
    SpeechError::Ct2 {
        path: ct2.path().to_path_buf(),
        msg: msg.into(),
    }
}

/// Convert the CTranslate2 model in `ct2_dir` (`model.bin` and
/// `vocabulary.txt`) to a whisper.cpp model at `out`.
pub fn convert_whisper(ct2_dir: &Path, out: &Path) -> Result<Converted, SpeechError> {
    let model_path = ct2_dir.join("model.bin");
    let vocab_path = ct2_dir.join("vocabulary.txt");
    if !model_path.is_file() {
        return Err(SpeechError::Ct2 {
            path: model_path,
            msg: "no such file: a CTranslate2 model folder holds model.bin and vocabulary.txt"
                .into(),
        });
    }
    let ct2 = Ct2Model::open(&model_path)?;
    if ct2.spec != "WhisperSpec" {
        return Err(bad(
            &ct2,
            format!("spec is `{}`, not WhisperSpec", ct2.spec),
        ));
    }
    let hp = hparams(&ct2)?;
    let vocab_text = std::fs::read_to_string(&vocab_path).map_err(|e| SpeechError::Io {
        path: vocab_path.clone(),
        source: e,
    })?;
    let vocab = vocabulary(&vocab_text, &hp).map_err(|msg| SpeechError::Ct2 {
        path: vocab_path.clone(),
        msg,
    })?;
    let tensors = plan(&ct2, &hp)?;
    let filters = mel_filters(hp.n_mels as usize);

    let mut bytes = 0u64;
    crate::gguf::write_atomic(out, |w| {
        let mut put = |b: &[u8]| -> std::io::Result<()> {
            bytes += b.len() as u64;
            w.write_all(b)
        };
        put(&GGML_MAGIC.to_le_bytes())?;
        for v in hp.to_array() {
            put(&v.to_le_bytes())?;
        }
        put(&(hp.n_mels).to_le_bytes())?;
        put(&(N_FFT_BINS as i32).to_le_bytes())?;
        for v in &filters {
            put(&v.to_le_bytes())?;
        }
        put(&(vocab.len() as i32).to_le_bytes())?;
        for t in &vocab {
            put(&(t.len() as u32).to_le_bytes())?;
            put(t)?;
        }
        for t in &tensors {
            let n_dims = t.dims.len() as i32;
            put(&n_dims.to_le_bytes())?;
            put(&(t.name.len() as i32).to_le_bytes())?;
            put(&(if t.f16 { 1i32 } else { 0 }).to_le_bytes())?;
            for d in t.dims.iter().rev() {
                put(&(*d as i32).to_le_bytes())?;
            }
            put(t.name.as_bytes())?;
            t.write(&ct2, &mut put)?;
        }
        Ok(())
    })
    .map_err(|e| SpeechError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    Ok(Converted {
        hparams: hp,
        tensors: tensors.len(),
        bytes,
    })
}

fn dim(ct2: &Ct2Model, name: &str, axis: usize) -> Result<i32, SpeechError> {
    let v = ct2.get(name)?;
    v.dims
        .get(axis)
        .map(|&d| d as i32)
        .ok_or_else(|| bad(ct2, format!("`{name}` has shape {:?}", v.dims)))
}

fn count_layers(ct2: &Ct2Model, stack: &str) -> i32 {
    (0..)
        .take_while(|i| {
            ct2.names()
                .any(|n| n.starts_with(&format!("{stack}/layer_{i}/")))
        })
        .count() as i32
}

fn hparams(ct2: &Ct2Model) -> Result<Hparams, SpeechError> {
    // whisper.cpp implements exactly this architecture: pre-norm, GELU,
    // unscaled embeddings.
    for (flag, want) in [("decoder/pre_norm", 1), ("decoder/scale_embeddings", 0)] {
        if let Ok(v) = ct2.int(flag) {
            if v != want {
                return Err(bad(
                    ct2,
                    format!("`{flag}` is {v}: not a standard Whisper model"),
                ));
            }
        }
    }
    let hp = Hparams {
        n_vocab: dim(ct2, "decoder/embeddings/weight", 0)?,
        n_audio_ctx: dim(ct2, "encoder/position_encodings/encodings", 0)?,
        n_audio_state: dim(ct2, "encoder/position_encodings/encodings", 1)?,
        n_audio_head: ct2.int("encoder/num_heads")? as i32,
        n_audio_layer: count_layers(ct2, "encoder"),
        n_text_ctx: dim(ct2, "decoder/position_encodings/encodings", 0)?,
        n_text_state: dim(ct2, "decoder/embeddings/weight", 1)?,
        n_text_head: ct2.int("decoder/num_heads")? as i32,
        n_text_layer: count_layers(ct2, "decoder"),
        n_mels: dim(ct2, "encoder/conv1/weight", 1)?,
        ftype: 1,
    };
    if hp.n_audio_state != hp.n_text_state
        || hp.n_audio_layer == 0
        || hp.n_text_layer == 0
        || hp.n_audio_head <= 0
        || hp.n_text_head <= 0
        || hp.n_vocab < 51864
    {
        return Err(bad(ct2, format!("implausible Whisper shape {hp:?}")));
    }
    Ok(hp)
}

/// GPT-2's byte-level alphabet: byte → the character that stands for it in
/// `vocabulary.txt`.
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).expect("latin-1")
        } else {
            extra += 1;
            char::from_u32(255 + extra).expect("BMP")
        };
    }
    map
}

/// Decode `vocabulary.txt` (one byte-level token per line, empty lines kept)
/// into the ids below end-of-text.
fn vocabulary(text: &str, hp: &Hparams) -> Result<Vec<Vec<u8>>, String> {
    let mut rev = std::collections::HashMap::new();
    for (b, c) in byte_alphabet().iter().enumerate() {
        rev.insert(*c, b as u8);
    }
    let lines: Vec<&str> = text.split('\n').collect();
    let eot = hp.eot();
    if lines.len() <= eot || lines[eot] != "<|endoftext|>" {
        return Err(format!(
            "line {} is not <|endoftext|>: the vocabulary does not belong to a {}-token Whisper model",
            eot + 1,
            hp.n_vocab
        ));
    }
    lines[..eot]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            l.chars()
                .map(|c| {
                    rev.get(&c).copied().ok_or_else(|| {
                        format!("line {}: `{c}` is not a byte-level character", i + 1)
                    })
                })
                .collect()
        })
        .collect()
}

/// The Slaney-normalised mel filterbank librosa computes for Whisper
/// (`librosa.filters.mel(sr=16000, n_fft=400, n_mels)`), row-major
/// `[n_mels, 201]`, in f64 then rounded to f32.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    let hz_to_mel = |f: f64| {
        if f >= MIN_LOG_HZ {
            MIN_LOG_MEL + (f / MIN_LOG_HZ).ln() / logstep
        } else {
            f / F_SP
        }
    };
    let mel_to_hz = |m: f64| {
        if m >= MIN_LOG_MEL {
            MIN_LOG_HZ * (logstep * (m - MIN_LOG_MEL)).exp()
        } else {
            F_SP * m
        }
    };
    let fmax = SAMPLE_RATE / 2.0;
    let fft: Vec<f64> = (0..N_FFT_BINS)
        .map(|i| fmax * i as f64 / (N_FFT_BINS - 1) as f64)
        .collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(fmax));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut out = Vec::with_capacity(n_mels * N_FFT_BINS);
    for i in 0..n_mels {
        let enorm = 2.0 / (mel_f[i + 2] - mel_f[i]);
        for &f in &fft {
            let lower = (f - mel_f[i]) / (mel_f[i + 1] - mel_f[i]);
            let upper = (mel_f[i + 2] - f) / (mel_f[i + 2] - mel_f[i + 1]);
            out.push((lower.min(upper).max(0.0) * enorm) as f32);
        }
    }
    out
}

/// One output tensor: a row range of a CTranslate2 variable.
struct Out {
    name: String,
    src: String,
    /// Rows `[start, start + dims[0])` of the source (whole for non-splits).
    row_start: usize,
    /// Output shape, outermost first.
    dims: Vec<usize>,
    f16: bool,
}

impl Out {
    fn write(
        &self,
        ct2: &Ct2Model,
        put: &mut impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let v = ct2.get(&self.src).map_err(std::io::Error::other)?;
        let row: usize = v.dims.iter().skip(1).product();
        let n: usize = self.dims.iter().product();
        let (a, b) = (self.row_start * row, self.row_start * row + n);
        if self.f16 && v.dtype == Ct2Type::F16 {
            return put(&ct2.bytes(v)[a * 2..b * 2]);
        }
        let vals = ct2
            .f32s_range(&self.src, a..b)
            .map_err(std::io::Error::other)?;
        let mut buf = Vec::with_capacity(n * 4);
        for &x in &vals {
            if self.f16 {
                buf.extend_from_slice(&half::f16::from_f32(x).to_le_bytes());
            } else {
                buf.extend_from_slice(&x.to_le_bytes());
            }
        }
        put(&buf)
    }
}

/// A whole variable as one tensor.
fn whole(
    outs: &mut Vec<Out>,
    ct2: &Ct2Model,
    name: &str,
    src: &str,
    f16: bool,
) -> Result<(), SpeechError> {
    let v = ct2.float(src)?;
    outs.push(Out {
        name: name.into(),
        src: src.into(),
        row_start: 0,
        dims: v.dims.clone(),
        f16,
    });
    Ok(())
}

/// A linear layer: its weight (f16) and bias (f32).
fn linear(outs: &mut Vec<Out>, ct2: &Ct2Model, to: &str, from: &str) -> Result<(), SpeechError> {
    whole(
        outs,
        ct2,
        &format!("{to}.weight"),
        &format!("{from}/weight"),
        true,
    )?;
    whole(
        outs,
        ct2,
        &format!("{to}.bias"),
        &format!("{from}/bias"),
        false,
    )
}

/// A layer norm: gamma and beta as whisper.cpp's weight and bias (f32).
fn norm(outs: &mut Vec<Out>, ct2: &Ct2Model, to: &str, from: &str) -> Result<(), SpeechError> {
    whole(
        outs,
        ct2,
        &format!("{to}.weight"),
        &format!("{from}/gamma"),
        false,
    )?;
    whole(
        outs,
        ct2,
        &format!("{to}.bias"),
        &format!("{from}/beta"),
        false,
    )
}

/// A fused projection `src`, split by rows into `parts` of `d` rows each;
/// a part without bias must have a zero one in the source.
fn split(
    outs: &mut Vec<Out>,
    ct2: &Ct2Model,
    d: usize,
    prefix: &str,
    src: &str,
    parts: &[(&str, bool)],
) -> Result<(), SpeechError> {
    let w = format!("{src}/weight");
    let b = format!("{src}/bias");
    let v = ct2.float(&w)?;
    if v.dims != [parts.len() * d, d] {
        return Err(bad(
            ct2,
            format!(
                "`{w}` has shape {:?}, expected [{}, {d}]",
                v.dims,
                parts.len() * d
            ),
        ));
    }
    let bias = ct2.f32s(&b)?;
    for (k, (part, has_bias)) in parts.iter().enumerate() {
        outs.push(Out {
            name: format!("{prefix}.{part}.weight"),
            src: w.clone(),
            row_start: k * d,
            dims: vec![d, d],
            f16: true,
        });
        if *has_bias {
            outs.push(Out {
                name: format!("{prefix}.{part}.bias"),
                src: b.clone(),
                row_start: k * d,
                dims: vec![d],
                f16: false,
            });
        } else if bias[k * d..(k + 1) * d].iter().any(|x| *x != 0.0) {
            return Err(bad(
                ct2,
                format!("`{b}` has a non-zero {part} bias, which whisper.cpp cannot hold"),
            ));
        }
    }
    Ok(())
}

/// Every tensor whisper.cpp loads, with where it comes from. The order is
/// the file's order, which the pinned sha256s depend on.
fn plan(ct2: &Ct2Model, hp: &Hparams) -> Result<Vec<Out>, SpeechError> {
    let o = &mut Vec::new();
    plan_globals(o, ct2)?;
    let stacks = [("encoder", hp.n_audio_layer), ("decoder", hp.n_text_layer)];
    for (stack, n_layer) in stacks {
        for i in 0..n_layer {
            plan_layer(o, ct2, stack, i)?;
        }
    }
    // The conv biases are [d] in CTranslate2 and [d, 1] in whisper.cpp.
    let d = hp.n_audio_state as usize;
    for conv in ["conv1", "conv2"] {
        ct2.float(&format!("encoder/{conv}/bias"))?;
        o.push(Out {
            name: format!("encoder.{conv}.bias"),
            src: format!("encoder/{conv}/bias"),
            row_start: 0,
            dims: vec![d, 1],
            f16: false,
        });
    }
    for (stack, n_layer) in stacks {
        for i in 0..n_layer {
            plan_attention(o, ct2, d, stack, i)?;
        }
    }
    Ok(std::mem::take(o))
}

/// Embeddings, convolutions and the final norms.
fn plan_globals(o: &mut Vec<Out>, ct2: &Ct2Model) -> Result<(), SpeechError> {
    let pos = "position_encodings/encodings";
    whole(
        o,
        ct2,
        "encoder.positional_embedding",
        &format!("encoder/{pos}"),
        false,
    )?;
    whole(o, ct2, "encoder.conv1.weight", "encoder/conv1/weight", true)?;
    whole(o, ct2, "encoder.conv2.weight", "encoder/conv2/weight", true)?;
    norm(o, ct2, "encoder.ln_post", "encoder/layer_norm")?;
    whole(
        o,
        ct2,
        "decoder.positional_embedding",
        &format!("decoder/{pos}"),
        false,
    )?;
    whole(
        o,
        ct2,
        "decoder.token_embedding.weight",
        "decoder/embeddings/weight",
        true,
    )?;
    norm(o, ct2, "decoder.ln", "decoder/layer_norm")
}

/// A block's norms, MLP and attention output projection.
fn plan_layer(o: &mut Vec<Out>, ct2: &Ct2Model, stack: &str, i: i32) -> Result<(), SpeechError> {
    let (p, q) = (format!("{stack}/layer_{i}"), format!("{stack}.blocks.{i}"));
    norm(
        o,
        ct2,
        &format!("{q}.attn_ln"),
        &format!("{p}/self_attention/layer_norm"),
    )?;
    norm(
        o,
        ct2,
        &format!("{q}.mlp_ln"),
        &format!("{p}/ffn/layer_norm"),
    )?;
    if stack == "decoder" {
        norm(
            o,
            ct2,
            &format!("{q}.cross_attn_ln"),
            &format!("{p}/attention/layer_norm"),
        )?;
    }
    linear(o, ct2, &format!("{q}.mlp.0"), &format!("{p}/ffn/linear_0"))?;
    linear(o, ct2, &format!("{q}.mlp.2"), &format!("{p}/ffn/linear_1"))?;
    linear(
        o,
        ct2,
        &format!("{q}.attn.out"),
        &format!("{p}/self_attention/linear_1"),
    )
}

/// A block's fused Q/K/V (and the decoder's cross-attention Q and K/V)
/// split into whisper.cpp's separate tensors.
fn plan_attention(
    o: &mut Vec<Out>,
    ct2: &Ct2Model,
    d: usize,
    stack: &str,
    i: i32,
) -> Result<(), SpeechError> {
    let (p, q) = (format!("{stack}/layer_{i}"), format!("{stack}.blocks.{i}"));
    let qkv = [("query", true), ("key", false), ("value", true)];
    split(
        o,
        ct2,
        d,
        &format!("{q}.attn"),
        &format!("{p}/self_attention/linear_0"),
        &qkv,
    )?;
    if stack == "decoder" {
        let cross = format!("{q}.cross_attn");
        split(
            o,
            ct2,
            d,
            &cross,
            &format!("{p}/attention/linear_0"),
            &qkv[..1],
        )?;
        split(
            o,
            ct2,
            d,
            &cross,
            &format!("{p}/attention/linear_1"),
            &qkv[1..],
        )?;
        linear(
            o,
            ct2,
            &format!("{cross}.out"),
            &format!("{p}/attention/linear_2"),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alphabet_is_a_bijection() {
        let a = byte_alphabet();
        let set: std::collections::HashSet<char> = a.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
    }

    #[test]
    fn mel_rows_are_triangles_with_slaney_area() {
        let f = mel_filters(80);
        assert_eq!(f.len(), 80 * 201);
        // librosa's first filter peaks at bin 1 with 2/(f2-f0) = 0.024862...
        let row0 = &f[..201];
        assert_eq!(row0[0], 0.0);
        assert!((row0[1] - 0.024_862).abs() < 1e-4, "{}", row0[1]);
        assert!(f.iter().all(|v| *v >= 0.0));
        // Every filter has some weight.
        for r in f.chunks(201) {
            assert!(r.iter().sum::<f32>() > 0.0);
        }
    }
}
