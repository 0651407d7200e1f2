//! The few fused operations the trainer needs, as candle custom ops with
//! hand-written backward passes.
//!
//! candle's own fused kernels (`rms_norm`, `rope_i`, `softmax_last_dim`) drop
//! gradients, and its matmul always computes the weight gradient, which for
//! frozen base weights is as much work as the forward pass and then thrown
//! away. Each op here does one row-wise job in one pass, returns only the
//! gradient that is used, and works in f32 (training) and f64 (the
//! finite-difference gradient check).

use std::sync::Arc;

use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use num_traits::Float;
use rayon::prelude::*;

/// The contiguous data of a custom op's argument.
fn slice<'a, T: WithDType>(s: &'a CpuStorage, l: &Layout) -> Result<&'a [T]> {
    let data = s.as_slice::<T>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("ferrite op needs a contiguous tensor"),
    }
}

fn to_vec<T: WithDType>(t: &Tensor) -> Result<Vec<T>> {
    t.flatten_all()?.to_vec1::<T>()
}

/// Run `$f::<T>` for the storage's float type.
macro_rules! by_dtype {
    ($s:expr, $f:ident($($arg:expr),*)) => {
        match $s {
            CpuStorage::F32(_) => $f::<f32>($($arg),*),
            CpuStorage::F64(_) => $f::<f64>($($arg),*),
            _ => bail!("ferrite ops run in f32 or f64"),
        }
    };
}

/// Same for a tensor in a backward pass.
macro_rules! by_tensor_dtype {
    ($t:expr, $f:ident($($arg:expr),*)) => {
        match $t.dtype() {
            candle_core::DType::F32 => $f::<f32>($($arg),*),
            candle_core::DType::F64 => $f::<f64>($($arg),*),
            d => bail!("ferrite ops run in f32 or f64, not {d:?}"),
        }
    };
}

fn c<T: WithDType>(v: f64) -> T {
    T::from_f64(v)
}

/// Frozen weight data in the training dtype.
enum WeightData {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl WeightData {
    fn get<T: 'static>(&self) -> Result<&[T]> {
        let v: &dyn std::any::Any = match self {
            WeightData::F32(v) => v,
            WeightData::F64(v) => v,
        };
        match v.downcast_ref::<Vec<T>>() {
            Some(v) => Ok(v),
            None => bail!("frozen weight and activations have different dtypes"),
        }
    }
}

/// A strided matrix view over a slice: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
struct Mat<'a, T> {
    data: &'a [T],
    rs: usize,
    cs: usize,
}

impl<'a, T> Mat<'a, T> {
    /// Row-major `rows × cols`.
    fn rows(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose of a row-major `rows × cols` matrix.
    fn transposed(data: &'a [T], cols: usize) -> Self {
        Mat {
            data,
            rs: 1,
            cs: cols,
        }
    }

    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// `dst[m, n] = (accumulate ? dst : 0) + scale · lhs[m, k] · rhs[k, n]`,
/// row-major `dst`, on rayon's threads.
fn gemm_into<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    scale: f64,
) {
    assert!(dst.len() >= m * n && lhs.fits(m, k) && rhs.fits(k, n));
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::zero());
        }
        return;
    }
    let threads = candle_core::utils::get_num_threads();
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above keeps every index gemm forms from these shapes
    // and strides inside the three slices; `dst` is `&mut`, so it aliases
    // neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            T::one(),
            T::from_f64(scale),
            false,
            false,
            false,
            par,
        );
    }
}

/// Run `f` on the contiguous CPU data of a tensor, without copying when it is
/// already contiguous.
fn with_data<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (st, l) = t.storage_and_layout();
    match &*st {
        candle_core::Storage::Cpu(cpu) => f(slice::<T>(cpu, l)?),
        _ => bail!("ferrite's training ops run on the CPU"),
    }
}

/// `x · Wᵀ` for a frozen `W` ([out, in]); the backward pass returns only the
/// input gradient `g · W`, never the weight gradient. Both run straight
/// into gemm on the op's own copy of `W`, so no temporary tensors are made.
#[derive(Clone)]
pub(crate) struct FrozenLinear {
    w: Arc<WeightData>,
    n_out: usize,
    n_in: usize,
}

impl FrozenLinear {
    pub(crate) fn new(w: Tensor) -> Result<Self> {
        let (n_out, n_in) = w.dims2()?;
        let data = match w.dtype() {
            candle_core::DType::F32 => WeightData::F32(to_vec(&w)?),
            candle_core::DType::F64 => WeightData::F64(to_vec(&w)?),
            d => bail!("frozen weights are f32 or f64, not {d:?}"),
        };
        Ok(FrozenLinear {
            w: Arc::new(data),
            n_out,
            n_in,
        })
    }

    /// `x`: [n, in] → [n, out].
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

fn linear_fwd<T: WithDType>(
    op: &FrozenLinear,
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (m, k) = l.shape().dims2()?;
    if k != op.n_in {
        bail!("linear: input width {k}, weight expects {}", op.n_in);
    }
    let mut y = vec![T::zero(); m * op.n_out];
    let w = Mat::transposed(op.w.get::<T>()?, k);
    gemm_into(
        (m, op.n_out, k),
        &mut y,
        false,
        Mat::rows(slice::<T>(s, l)?, k),
        w,
        1.0,
    );
    Ok((T::to_cpu_storage_owned(y), Shape::from((m, op.n_out))))
}

/// The backward half: `g · W`.
struct LinearBwd<'a>(&'a FrozenLinear);

fn linear_bwd<T: WithDType>(
    op: &FrozenLinear,
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let (m, k) = l.shape().dims2()?;
    if k != op.n_out {
        bail!(
            "linear backward: gradient width {k}, weight has {}",
            op.n_out
        );
    }
    let mut dx = vec![T::zero(); m * op.n_in];
    let w = Mat::rows(op.w.get::<T>()?, op.n_in);
    gemm_into(
        (m, op.n_in, k),
        &mut dx,
        false,
        Mat::rows(slice::<T>(s, l)?, k),
        w,
        1.0,
    );
    Ok((T::to_cpu_storage_owned(dx), Shape::from((m, op.n_in))))
}

impl CustomOp1 for LinearBwd<'_> {
    fn name(&self) -> &'static str {
        "frozen-linear-bwd"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s, linear_bwd(self.0, s, l))
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s, linear_fwd(self, s, l))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(g.contiguous()?.apply_op1_no_bwd(&LinearBwd(self))?))
    }
}

/// A frozen projection with a LoRA update, fused:
/// `y = x·Wᵀ + s·(x·Aᵀ)·Bᵀ` for `x` [m, in], `A` [r, in], `B` [out, r].
/// The backward pass gives `dx = g·W + s·(g·B)·A`, `dA = s·(g·B)ᵀ·x` and
/// `dB = s·gᵀ·(x·Aᵀ)`, every product straight into gemm, with no
/// intermediate tensors for candle to track and accumulate.
#[derive(Clone)]
pub(crate) struct LoraLinear {
    pub(crate) base: FrozenLinear,
    pub(crate) scale: f64,
}

impl LoraLinear {
    pub(crate) fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let (r, n_in) = a.dims2()?;
        if n_in != self.base.n_in || b.dims2()? != (self.base.n_out, r) {
            bail!(
                "lora: A {:?} / B {:?} do not fit a {}→{} projection",
                a.dims(),
                b.dims(),
                self.base.n_in,
                self.base.n_out
            );
        }
        x.contiguous()?
            .apply_op3(&a.contiguous()?, &b.contiguous()?, self.clone())
    }
}

fn lora_fwd<T: WithDType>(
    op: &LoraLinear,
    (xs, xl): (&CpuStorage, &Layout),
    (as_, al): (&CpuStorage, &Layout),
    (bs, bl): (&CpuStorage, &Layout),
) -> Result<(CpuStorage, Shape)> {
    let (m, k) = xl.shape().dims2()?;
    let (r, _) = al.shape().dims2()?;
    let n = op.base.n_out;
    let x = Mat::rows(slice::<T>(xs, xl)?, k);
    let mut y = vec![T::zero(); m * n];
    gemm_into(
        (m, n, k),
        &mut y,
        false,
        x,
        Mat::transposed(op.base.w.get::<T>()?, k),
        1.0,
    );
    let mut mid = vec![T::zero(); m * r];
    gemm_into(
        (m, r, k),
        &mut mid,
        false,
        x,
        Mat::transposed(slice::<T>(as_, al)?, k),
        1.0,
    );
    gemm_into(
        (m, n, r),
        &mut y,
        true,
        Mat::rows(&mid, r),
        Mat::transposed(slice::<T>(bs, bl)?, r),
        op.scale,
    );
    Ok((T::to_cpu_storage_owned(y), Shape::from((m, n))))
}

fn lora_bwd<T: WithDType>(
    op: &LoraLinear,
    x: &Tensor,
    a: &Tensor,
    b: &Tensor,
    g: &Tensor,
) -> Result<(Tensor, Tensor, Tensor)> {
    let (m, k) = x.dims2()?;
    let (r, _) = a.dims2()?;
    let n = op.base.n_out;
    let s = op.scale;
    let w = op.base.w.get::<T>()?;
    let mut dx = vec![T::zero(); m * k];
    let mut da = vec![T::zero(); r * k];
    let mut db = vec![T::zero(); n * r];
    with_data::<T, _>(g, |g| {
        with_data::<T, _>(x, |xv| {
            with_data::<T, _>(a, |av| {
                with_data::<T, _>(b, |bv| {
                    let g = Mat::rows(g, n);
                    let x = Mat::rows(xv, k);
                    let mut gb = vec![T::zero(); m * r];
                    gemm_into((m, r, n), &mut gb, false, g, Mat::rows(bv, r), 1.0);
                    gemm_into((m, k, n), &mut dx, false, g, Mat::rows(w, k), 1.0);
                    gemm_into(
                        (m, k, r),
                        &mut dx,
                        true,
                        Mat::rows(&gb, r),
                        Mat::rows(av, k),
                        s,
                    );
                    gemm_into((r, k, m), &mut da, false, Mat::transposed(&gb, r), x, s);
                    let mut mid = vec![T::zero(); m * r];
                    gemm_into((m, r, k), &mut mid, false, x, Mat::transposed(av, k), 1.0);
                    gemm_into(
                        (n, r, m),
                        &mut db,
                        false,
                        Mat::transposed(g.data, n),
                        Mat::rows(&mid, r),
                        s,
                    );
                    Ok(())
                })
            })
        })
    })?;
    let dev = x.device();
    Ok((
        Tensor::from_vec(dx, (m, k), dev)?,
        Tensor::from_vec(da, (r, k), dev)?,
        Tensor::from_vec(db, (n, r), dev)?,
    ))
}

impl candle_core::CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s1, lora_fwd(self, (s1, l1), (s2, l2), (s3, l3)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, da, db) = by_tensor_dtype!(x, lora_bwd(self, x, a, b, g))?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// RMSNorm with its (frozen) weight folded in: `y = x / rms(x) · w`, row by
/// row over the last dimension.
#[derive(Clone)]
pub(crate) struct RmsNorm {
    w: Arc<Vec<f64>>,
    eps: f64,
}

impl RmsNorm {
    pub(crate) fn new(w: &Tensor, eps: f64) -> Result<Self> {
        Ok(RmsNorm {
            w: Arc::new(to_vec::<f64>(&w.to_dtype(candle_core::DType::F64)?)?),
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if x.dims().last() != Some(&self.w.len()) {
            bail!("rms_norm: width {:?} != weight {}", x.dims(), self.w.len());
        }
        x.contiguous()?.apply_op1(self.clone())
    }
}

fn rms_fwd<T: WithDType + Float>(
    op: &RmsNorm,
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let x = slice::<T>(s, l)?;
    let d = op.w.len();
    let w: Vec<T> = op.w.iter().map(|&v| c(v)).collect();
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(d).zip(x.par_chunks(d)).for_each(|(y, x)| {
        let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / c(d as f64);
        let r = T::one() / (ms + c(op.eps)).sqrt();
        for i in 0..d {
            y[i] = x[i] * r * w[i];
        }
    });
    Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
}

fn rms_bwd<T: WithDType + Float>(op: &RmsNorm, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    with_data::<T, _>(x, |xs| {
        with_data::<T, _>(g, |gs| {
            let d = op.w.len();
            let w: Vec<T> = op.w.iter().map(|&v| c(v)).collect();
            let mut dx = vec![T::zero(); xs.len()];
            dx.par_chunks_mut(d)
                .zip(xs.par_chunks(d).zip(gs.par_chunks(d)))
                .for_each(|(dx, (x, g))| {
                    let ms = x.iter().fold(T::zero(), |a, &v| a + v * v) / c(d as f64);
                    let r = T::one() / (ms + c(op.eps)).sqrt();
                    // dx = r·(g·w − y₀·mean(g·w·y₀)), y₀ = x·r
                    let mut dot = T::zero();
                    for i in 0..d {
                        dot += g[i] * w[i] * x[i] * r;
                    }
                    let mean = dot / c(d as f64);
                    for i in 0..d {
                        dx[i] = r * (g[i] * w[i] - x[i] * r * mean);
                    }
                });
            Tensor::from_vec(dx, x.shape(), x.device())
        })
    })
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s, rms_fwd(self, s, l))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        by_tensor_dtype!(x, rms_bwd(self, x, g)).map(Some)
    }
}

/// Rotary position embedding over adjacent pairs `(x[2i], x[2i+1])`, which
/// is llama.cpp's "normal" RoPE for the llama architecture (its converter
/// permutes Q and K so this equals the Hugging Face rotate-half form). The
/// tensor is [.., T, head_dim] and row `r` is at position `r mod T`.
#[derive(Clone)]
pub(crate) struct Rope {
    /// [max_pos, head_dim/2] tables.
    cos: Arc<Vec<f64>>,
    sin: Arc<Vec<f64>>,
    half: usize,
    max_pos: usize,
}

impl Rope {
    pub(crate) fn new(head_dim: usize, rope_dim: usize, base: f64, max_pos: usize) -> Self {
        let half = head_dim / 2;
        let mut cos = vec![1.0; max_pos * half];
        let mut sin = vec![0.0; max_pos * half];
        for p in 0..max_pos {
            // Dimensions past rope_dim are not rotated (partial RoPE).
            for i in 0..rope_dim / 2 {
                let theta = p as f64 * base.powf(-2.0 * i as f64 / rope_dim as f64);
                cos[p * half + i] = theta.cos();
                sin[p * half + i] = theta.sin();
            }
        }
        Rope {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            half,
            max_pos,
        }
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        let t = dims[dims.len() - 2];
        if dims[dims.len() - 1] != 2 * self.half || t > self.max_pos {
            bail!("rope: shape {dims:?} does not fit the tables");
        }
        x.contiguous()?.apply_op1(self.clone())
    }

    /// Rotate every row by `sign`·θ.
    fn rotate<T: WithDType + Float>(&self, x: &[T], t: usize, sign: f64) -> Vec<T> {
        let hd = 2 * self.half;
        let mut y = vec![T::zero(); x.len()];
        y.par_chunks_mut(hd)
            .zip(x.par_chunks(hd))
            .enumerate()
            .for_each(|(row, (y, x))| {
                let p = row % t;
                for i in 0..self.half {
                    let cs: T = c(self.cos[p * self.half + i]);
                    let sn: T = c(sign * self.sin[p * self.half + i]);
                    let (a, b) = (x[2 * i], x[2 * i + 1]);
                    y[2 * i] = a * cs - b * sn;
                    y[2 * i + 1] = a * sn + b * cs;
                }
            });
        y
    }
}

fn rope_fwd<T: WithDType + Float>(
    op: &Rope,
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let dims = l.dims();
    let t = dims[dims.len() - 2];
    let y = op.rotate(slice::<T>(s, l)?, t, 1.0);
    Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
}

fn rope_bwd<T: WithDType + Float>(op: &Rope, g: &Tensor) -> Result<Tensor> {
    let dims = g.dims();
    let t = dims[dims.len() - 2];
    let dx = with_data::<T, _>(g, |gs| Ok(op.rotate(gs, t, -1.0)))?;
    Tensor::from_vec(dx, g.shape(), g.device())
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s, rope_fwd(self, s, l))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        by_tensor_dtype!(g, rope_bwd(self, g)).map(Some)
    }
}

/// Scaled, causally masked softmax over attention scores [.., R, T] where
/// row `r` is the query at position `r mod T` and sees keys `0..=r mod T`.
#[derive(Clone)]
pub(crate) struct CausalSoftmax {
    pub(crate) scale: f64,
}

impl CausalSoftmax {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

fn softmax_fwd<T: WithDType + Float>(
    op: &CausalSoftmax,
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let x = slice::<T>(s, l)?;
    let t = *l.dims().last().expect("rank ≥ 1");
    let scale: T = c(op.scale);
    let mut y = vec![T::zero(); x.len()];
    y.par_chunks_mut(t)
        .zip(x.par_chunks(t))
        .enumerate()
        .for_each(|(row, (y, x))| {
            let n = row % t + 1;
            let max = x[..n]
                .iter()
                .fold(T::neg_infinity(), |m, &v| Float::max(m, v * scale));
            let mut sum = T::zero();
            for j in 0..n {
                y[j] = (x[j] * scale - max).exp();
                sum += y[j];
            }
            for v in &mut y[..n] {
                *v /= sum;
            }
        });
    Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
}

fn softmax_bwd<T: WithDType + Float>(op: &CausalSoftmax, y: &Tensor, g: &Tensor) -> Result<Tensor> {
    with_data::<T, _>(y, |ys| {
        with_data::<T, _>(g, |gs| {
            let t = *y.dims().last().expect("rank ≥ 1");
            let scale: T = c(op.scale);
            let mut dx = vec![T::zero(); ys.len()];
            dx.par_chunks_mut(t)
                .zip(ys.par_chunks(t).zip(gs.par_chunks(t)))
                .enumerate()
                .for_each(|(row, (dx, (y, g)))| {
                    let n = row % t + 1;
                    let dot = (0..n).fold(T::zero(), |a, j| a + y[j] * g[j]);
                    for j in 0..n {
                        dx[j] = scale * y[j] * (g[j] - dot);
                    }
                });
            Tensor::from_vec(dx, y.shape(), y.device())
        })
    })
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s, softmax_fwd(self, s, l))
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        by_tensor_dtype!(y, softmax_bwd(self, y, g)).map(Some)
    }
}

/// Per-row negative log-likelihood of `targets` under `logits` [N, V]; the
/// softmax is recomputed in the backward pass instead of kept (N × V floats).
#[derive(Clone)]
pub(crate) struct CrossEntropy {
    pub(crate) targets: Arc<Vec<u32>>,
}

impl CrossEntropy {
    pub(crate) fn forward(&self, logits: &Tensor) -> Result<Tensor> {
        let (n, _) = logits.dims2()?;
        if n != self.targets.len() {
            bail!("cross-entropy: {n} rows, {} targets", self.targets.len());
        }
        logits.contiguous()?.apply_op1(self.clone())
    }
}

/// Log-sum-exp of a row.
fn lse<T: WithDType + Float>(x: &[T]) -> T {
    let max = x.iter().fold(T::neg_infinity(), |m, &v| Float::max(m, v));
    max + x.iter().fold(T::zero(), |a, &v| a + (v - max).exp()).ln()
}

fn ce_fwd<T: WithDType + Float>(
    op: &CrossEntropy,
    s: &CpuStorage,
    l: &Layout,
) -> Result<(CpuStorage, Shape)> {
    let x = slice::<T>(s, l)?;
    let (n, v) = l.shape().dims2()?;
    if op.targets.iter().any(|&t| t as usize >= v) {
        bail!("cross-entropy: a target is outside the vocabulary of {v}");
    }
    let out: Vec<T> = x
        .par_chunks(v)
        .zip(op.targets.par_iter())
        .map(|(row, &t)| lse(row) - row[t as usize])
        .collect();
    Ok((T::to_cpu_storage_owned(out), Shape::from(n)))
}

fn ce_bwd<T: WithDType + Float>(op: &CrossEntropy, x: &Tensor, g: &Tensor) -> Result<Tensor> {
    with_data::<T, _>(x, |xs| {
        with_data::<T, _>(g, |gs| {
            let (_, v) = x.dims2()?;
            let mut dx = vec![T::zero(); xs.len()];
            dx.par_chunks_mut(v)
                .zip(xs.par_chunks(v))
                .zip(gs.par_iter().zip(op.targets.par_iter()))
                .for_each(|((dx, row), (&g, &t))| {
                    let l = lse(row);
                    for j in 0..v {
                        dx[j] = (row[j] - l).exp() * g;
                    }
                    dx[t as usize] -= g;
                });
            Tensor::from_vec(dx, x.shape(), x.device())
        })
    })
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s, ce_fwd(self, s, l))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        by_tensor_dtype!(x, ce_bwd(self, x, g)).map(Some)
    }
}
