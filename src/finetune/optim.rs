//! AdamW over the adapter's variables only, with global gradient-norm
//! clipping and a warm-up + cosine learning-rate schedule. The moments are
//! plain tensors so a checkpoint can store them and `--resume` continues
//! bit for bit.

use candle_core::{backprop::GradStore, Result, Tensor, Var};

pub(crate) struct AdamW {
    pub(crate) lr: f64,
    pub(crate) beta1: f64,
    pub(crate) beta2: f64,
    pub(crate) eps: f64,
    pub(crate) weight_decay: f64,
    pub(crate) clip_norm: f64,
    /// First and second moments, one pair per variable, flat.
    pub(crate) m: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    /// Updates applied so far.
    pub(crate) t: u64,
}

/// Lifetime-free copy of a tensor's f32 values.
fn values(t: &Tensor) -> Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Learning rate at `step` of `total`: linear warm-up over the first
/// `warmup` steps, then cosine decay to a tenth of the peak.
pub(crate) fn lr_at(peak: f64, step: usize, total: usize, warmup: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1);
    let progress = ((step - warmup) as f64 / span as f64).min(1.0);
    let floor = 0.1 * peak;
    floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
}

impl AdamW {
    pub(crate) fn new(vars: &[&Var], lr: f64) -> Result<AdamW> {
        Ok(AdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            clip_norm: 1.0,
            m: vars.iter().map(|v| vec![0.0; v.elem_count()]).collect(),
            v: vars.iter().map(|v| vec![0.0; v.elem_count()]).collect(),
            t: 0,
        })
    }

    /// Clip, then update every variable, one pass over each (hundreds of
    /// small adapter matrices: per-element tensor ops would cost more than
    /// the arithmetic). Returns the gradient norm before clipping.
    pub(crate) fn step(&mut self, vars: &[&Var], grads: &GradStore) -> Result<f64> {
        let gs: Vec<Option<Vec<f32>>> = vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).map(values).transpose())
            .collect::<Result<_>>()?;
        let sq: f64 = gs
            .iter()
            .flatten()
            .map(|g| g.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>())
            .sum();
        let norm = sq.sqrt();
        let clip = if norm > self.clip_norm && norm.is_finite() {
            self.clip_norm / norm
        } else {
            1.0
        };
        self.t += 1;
        let t = self.t as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        let (b1, b2) = (self.beta1 as f32, self.beta2 as f32);
        let (lr, eps) = (self.lr as f32, self.eps as f32);
        let decay = 1.0 - (self.lr * self.weight_decay) as f32;
        let (c1, c2) = ((1.0 / bc1) as f32, (1.0 / bc2) as f32);
        for (i, (var, g)) in vars.iter().zip(gs).enumerate() {
            let Some(g) = g else { continue };
            let mut p = values(var.as_tensor())?;
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for j in 0..p.len() {
                let gj = g[j] * clip as f32;
                m[j] = b1 * m[j] + (1.0 - b1) * gj;
                v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                p[j] = p[j] * decay - lr * (m[j] * c1) / ((v[j] * c2).sqrt() + eps);
            }
            var.set(&Tensor::from_vec(p, var.shape(), var.device())?)?;
        }
        Ok(norm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!((lr_at(1.0, 0, 100, 10) - 0.1).abs() < 1e-12);
        assert!((lr_at(1.0, 9, 100, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, 10, 100, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(1.0, 100, 100, 10) - 0.1).abs() < 1e-12);
        assert!(lr_at(1.0, 50, 100, 10) < 1.0 && lr_at(1.0, 50, 100, 10) > 0.1);
    }

    #[test]
    fn adamw_descends_a_quadratic() {
        let x = Var::new(&[3.0f32, -2.0], &candle_core::Device::Cpu).unwrap();
        let mut opt = AdamW::new(&[&x], 0.1).unwrap();
        for _ in 0..200 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            opt.step(&[&x], &g).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
    }
}
