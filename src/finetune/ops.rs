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

use super::qweight::QuantRows;

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

/// Most floats one thread dequantizes at once: a block of rows of up to
/// 4 MiB in f32 (large blocks keep gemm efficient; one per thread at least).
const DEQUANT_ELEMS: usize = 1 << 20;

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
    dims: (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    scale: f64,
) {
    gemm_at(dims, dst, dims.1, accumulate, lhs, rhs, scale, true)
}

/// `gemm_into` with rows of `dst` `dst_rs` apart (a block of columns of a
/// wider matrix), on rayon's threads when `parallel`, else on this one.
#[allow(clippy::too_many_arguments)]
fn gemm_at<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    accumulate: bool,
    lhs: Mat<'_, T>,
    rhs: Mat<'_, T>,
    scale: f64,
    parallel: bool,
) {
    assert!(
        dst_rs >= n
            && (m == 0 || dst.len() >= (m - 1) * dst_rs + n)
            && lhs.fits(m, k)
            && rhs.fits(k, n)
    );
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
    let par = if parallel && threads > 1 {
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
            dst_rs as isize,
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

/// `x · Wᵀ` for a frozen `W` ([out, in], as the GGUF stores it); the
/// backward pass returns only the input gradient `g · W`, never the weight
/// gradient. Both run straight into gemm: on the dense copy of `W` while the
/// model holds one (`materialize`, one layer at a time), else on blocks of
/// `W`'s rows dequantized in turn.
#[derive(Clone)]
pub(crate) struct FrozenLinear {
    w: Arc<QuantRows>,
    dense: Arc<std::sync::Mutex<Option<Arc<Dense>>>>,
    n_out: usize,
    n_in: usize,
}

/// A dequantized copy of a frozen weight, in the activations' type.
enum Dense {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Dense {
    fn get<T: 'static>(&self) -> Option<&[T]> {
        let v: &dyn std::any::Any = match self {
            Dense::F32(v) => v,
            Dense::F64(v) => v,
        };
        v.downcast_ref::<Vec<T>>().map(Vec::as_slice)
    }
}

impl FrozenLinear {
    /// A weight kept as its file stores it.
    pub(crate) fn quantized(q: QuantRows) -> Self {
        FrozenLinear {
            n_out: q.rows,
            n_in: q.cols,
            w: Arc::new(q),
            dense: Arc::default(),
        }
    }

    /// Dequantize the whole weight once, in `dtype`, for the matmuls that
    /// follow until `release` (one layer's forward and backward: each
    /// weight is then dequantized once per pass instead of per matmul, and
    /// multiplied in one parallel gemm).
    pub(crate) fn materialize(&self, dtype: candle_core::DType) {
        let (r, q) = (self.n_out, &*self.w);
        let d = if dtype == candle_core::DType::F64 {
            let mut v = Vec::new();
            q.dequant::<f64>(0, r, &mut v);
            Dense::F64(v)
        } else {
            let mut v = Vec::new();
            q.dequant::<f32>(0, r, &mut v);
            Dense::F32(v)
        };
        *self.dense.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(d));
    }

    /// Drop the dense copy.
    pub(crate) fn release(&self) {
        *self.dense.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn dense(&self) -> Option<Arc<Dense>> {
        self.dense.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The row blocks of `W` dequantized at once, split into one run of
    /// consecutive blocks per thread: a fixed split, so sums are added in
    /// the same order on every run (bit-exact `--resume`).
    fn block_runs(&self) -> Vec<Vec<(usize, usize)>> {
        let n = self.n_out;
        let threads = candle_core::utils::get_num_threads().max(1);
        // As few blocks as fit DEQUANT_ELEMS, and a whole number per thread.
        let n_blocks = (n * self.n_in).div_ceil(DEQUANT_ELEMS).div_ceil(threads) * threads;
        let step = n.div_ceil(n_blocks.max(1)).max(1);
        let blocks: Vec<(usize, usize)> = (0..n)
            .step_by(step)
            .map(|r0| (r0, (r0 + step).min(n)))
            .collect();
        let per = blocks.len().div_ceil(threads).max(1);
        blocks.chunks(per).map(<[_]>::to_vec).collect()
    }

    /// `y[m, out] = x[m, in] · Wᵀ`: each thread dequantizes its blocks of
    /// `W`'s rows in turn and multiplies them on its own (many small
    /// parallel gemm calls would spend their time waking threads).
    fn x_wt<T: WithDType>(&self, m: usize, x: &[T], y: &mut [T]) -> Result<()> {
        let (k, n) = (self.n_in, self.n_out);
        if let Some(d) = self.dense() {
            if let Some(w) = d.get::<T>() {
                gemm_into(
                    (m, n, k),
                    y,
                    false,
                    Mat::rows(x, k),
                    Mat::transposed(w, k),
                    1.0,
                );
                return Ok(());
            }
        }
        let parts: Vec<Vec<(usize, usize, Vec<T>)>> = self
            .block_runs()
            .into_par_iter()
            .map(|run| {
                let mut buf = Vec::new();
                run.into_iter()
                    .map(|(r0, r1)| {
                        self.w.dequant::<T>(r0, r1, &mut buf);
                        let mut yc = vec![T::zero(); m * (r1 - r0)];
                        let wt = Mat::transposed(&buf, k);
                        gemm_at(
                            (m, r1 - r0, k),
                            &mut yc,
                            r1 - r0,
                            false,
                            Mat::rows(x, k),
                            wt,
                            1.0,
                            false,
                        );
                        (r0, r1, yc)
                    })
                    .collect()
            })
            .collect();
        for (r0, r1, yc) in parts.into_iter().flatten() {
            let w = r1 - r0;
            for (row, src) in yc.chunks_exact(w).enumerate() {
                y[row * n + r0..row * n + r1].copy_from_slice(src);
            }
        }
        Ok(())
    }

    /// `dx[m, in] = g[m, out] · W`: each thread sums its blocks' products
    /// into its own `dx`, and those are added in thread order.
    fn g_w<T: WithDType>(&self, m: usize, g: &[T], dx: &mut [T]) -> Result<()> {
        let (k, n) = (self.n_in, self.n_out);
        if let Some(d) = self.dense() {
            if let Some(w) = d.get::<T>() {
                gemm_into((m, k, n), dx, false, Mat::rows(g, n), Mat::rows(w, k), 1.0);
                return Ok(());
            }
        }
        let sums: Vec<Vec<T>> = self
            .block_runs()
            .into_par_iter()
            .map(|run| {
                let mut buf = Vec::new();
                let mut acc = vec![T::zero(); m * k];
                for (i, (r0, r1)) in run.into_iter().enumerate() {
                    self.w.dequant::<T>(r0, r1, &mut buf);
                    let gc = Mat {
                        data: &g[r0..],
                        rs: n,
                        cs: 1,
                    };
                    gemm_at(
                        (m, k, r1 - r0),
                        &mut acc,
                        k,
                        i > 0,
                        gc,
                        Mat::rows(&buf, k),
                        1.0,
                        false,
                    );
                }
                acc
            })
            .collect();
        let mut sums = sums.into_iter();
        dx[..m * k].copy_from_slice(&sums.next().expect("one run at least"));
        for s in sums {
            for (d, v) in dx.iter_mut().zip(s) {
                *d += v;
            }
        }
        Ok(())
    }

    /// Bytes the weight takes as stored.
    pub(crate) fn nbytes(&self) -> usize {
        self.w.nbytes()
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
    op.x_wt(m, slice::<T>(s, l)?, &mut y)?;
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
    op.g_w(m, slice::<T>(s, l)?, &mut dx)?;
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
    op.base.x_wt(m, x.data, &mut y)?;
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
                    op.base.g_w(m, g.data, &mut dx)?;
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

/// GELU, tanh approximation: `gelu(x) = x/2 · (1 + tanh(u))`,
/// `u = √(2/π)·(x + 0.044715·x³)` (Hendrycks & Gimpel 2016; ggml's
/// `ggml_gelu`, Gemma's `gelu_pytorch_tanh`), with its exact derivative
/// `(1 + tanh u)/2 + x/2 · (1 − tanh²u) · √(2/π)·(1 + 3·0.044715·x²)`.
/// (candle's own `gelu` backward rounds these constants to six digits,
/// which the f64 gradient check sees.)
#[derive(Clone, Copy)]
pub(crate) struct Gelu;

const GELU_A: f64 = 0.044715;
const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

impl Gelu {
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(*self)
    }
}

fn gelu_fwd<T: WithDType + Float>(s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
    let (a, k): (T, T) = (c(GELU_A), c(SQRT_2_OVER_PI));
    let half: T = c(0.5);
    let y: Vec<T> = slice::<T>(s, l)?
        .par_iter()
        .map(|&x| half * x * (T::one() + (k * (x + a * x * x * x)).tanh()))
        .collect();
    Ok((T::to_cpu_storage_owned(y), l.shape().clone()))
}

fn gelu_bwd<T: WithDType + Float>(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    with_data::<T, _>(x, |xs| {
        with_data::<T, _>(g, |gs| {
            let (a, k): (T, T) = (c(GELU_A), c(SQRT_2_OVER_PI));
            let (half, three): (T, T) = (c(0.5), c(3.0));
            let dx: Vec<T> = xs
                .par_iter()
                .zip(gs.par_iter())
                .map(|(&x, &g)| {
                    let th = (k * (x + a * x * x * x)).tanh();
                    let du = k * (T::one() + three * a * x * x);
                    g * (half * (T::one() + th) + half * x * (T::one() - th * th) * du)
                })
                .collect();
            Tensor::from_vec(dx, x.shape(), x.device())
        })
    })
}

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        by_dtype!(s, gelu_fwd(s, l))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        by_tensor_dtype!(x, gelu_bwd(x, g)).map(Some)
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
    /// The offset of a dimension's partner: `rope_dim/2` for NEOX (pairs
    /// `i`, `i + rope_dim/2`), else adjacent pairs (`2i`, `2i+1`).
    neox_offset: Option<usize>,
}

impl Rope {
    /// GGML's two RoPE modes: adjacent pairs (llama) or, with `neox`, the
    /// first and second half of the rotated dimensions (GPT-NeoX, qwen2).
    /// `freq_scale` multiplies every position (linear RoPE scaling, ggml's
    /// `freq_scale`; 1 without).
    pub(crate) fn with_mode(
        head_dim: usize,
        rope_dim: usize,
        (base, freq_scale): (f64, f64),
        max_pos: usize,
        neox: bool,
    ) -> Self {
        let mut r = Rope::scaled(head_dim, rope_dim, (base, freq_scale), max_pos);
        r.neox_offset = neox.then_some(rope_dim / 2);
        r
    }

    /// θ(p, i) = freq_scale · p · base^(−2i/rope_dim) (RoFormer, Su et al.
    /// 2021; ggml's `rope_yarn` without extrapolation).
    fn scaled(
        head_dim: usize,
        rope_dim: usize,
        (base, freq_scale): (f64, f64),
        max_pos: usize,
    ) -> Self {
        let half = head_dim / 2;
        let mut cos = vec![1.0; max_pos * half];
        let mut sin = vec![0.0; max_pos * half];
        for p in 0..max_pos {
            // Dimensions past rope_dim are not rotated (partial RoPE).
            for i in 0..rope_dim / 2 {
                let theta = freq_scale * p as f64 * base.powf(-2.0 * i as f64 / rope_dim as f64);
                cos[p * half + i] = theta.cos();
                sin[p * half + i] = theta.sin();
            }
        }
        Rope {
            cos: Arc::new(cos),
            sin: Arc::new(sin),
            half,
            max_pos,
            neox_offset: None,
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
                y.copy_from_slice(x);
                let pairs = self.neox_offset.unwrap_or(self.half);
                for i in 0..pairs {
                    let (ia, ib) = match self.neox_offset {
                        Some(off) => (i, i + off),
                        None => (2 * i, 2 * i + 1),
                    };
                    let cs: T = c(self.cos[p * self.half + i]);
                    let sn: T = c(sign * self.sin[p * self.half + i]);
                    let (a, b) = (x[ia], x[ib]);
                    y[ia] = a * cs - b * sn;
                    y[ib] = a * sn + b * cs;
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
/// row `r` is the query at position `p = r mod T` and sees keys `0..=p`, or
/// with a sliding `window` only keys `p - window < k ≤ p` (llama.cpp's
/// `is_masked_swa`, `LLAMA_SWA_TYPE_STANDARD`).
#[derive(Clone)]
pub(crate) struct CausalSoftmax {
    pub(crate) scale: f64,
    pub(crate) window: Option<usize>,
}

impl CausalSoftmax {
    /// The keys row `row` of a `t`-wide score matrix sees.
    fn keys(&self, row: usize, t: usize) -> std::ops::Range<usize> {
        let n = row % t + 1;
        self.window.map_or(0, |w| n.saturating_sub(w))..n
    }

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
            let keys = op.keys(row, t);
            let max = x[keys.clone()]
                .iter()
                .fold(T::neg_infinity(), |m, &v| Float::max(m, v * scale));
            let mut sum = T::zero();
            for j in keys.clone() {
                y[j] = (x[j] * scale - max).exp();
                sum += y[j];
            }
            for v in &mut y[keys] {
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
                    let keys = op.keys(row, t);
                    let dot = keys.clone().fold(T::zero(), |a, j| a + y[j] * g[j]);
                    for j in keys {
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
