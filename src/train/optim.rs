//! AdamW over named candle `Var`s, with its moments exposed for checkpoints.

use crate::error::Error;
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor, Var};

/// AdamW hyper-parameters (Loshchilov & Hutter 2019, PyTorch's `torch.optim.AdamW` semantics).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε, added to `√v̂`.
    pub eps: f64,
    /// Decoupled weight decay, applied to parameters of rank ≥ 2 only (matrices, not biases, gains or diagonals).
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW. For each parameter `θ` with gradient `g`, at step `t` (from 1) and learning rate `lr`:
///
/// ```text
/// θ ← θ · (1 − lr · λ)                      (rank ≥ 2 only)
/// m ← β1 m + (1 − β1) g
/// v ← β2 v + (1 − β2) g²
/// θ ← θ − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)
/// ```
///
/// Unlike `candle_nn::AdamW`, the moments `m`, `v` and the step count are public state
/// ([`AdamW::state`], [`AdamW::load_state`]), so a checkpoint can restore them exactly.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
    cfg: AdamWConfig,
}

impl AdamW {
    /// An optimizer over named variables (e.g. a `VarMap`'s, sorted by name), moments at zero.
    pub fn new(mut params: Vec<(String, Var)>, cfg: AdamWConfig) -> Result<Self> {
        // Integer variables are buffers (FastFood's permutations), not parameters, as for candle's optimizers.
        params.retain(|(_, v)| v.dtype().is_float());
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params
            .iter()
            .map(|(_, p)| p.as_tensor().zeros_like())
            .collect::<Result<Vec<_>>>()?;
        let v = m.clone();
        Ok(Self {
            params,
            m,
            v,
            t: 0,
            cfg,
        })
    }

    /// The variables, sorted by name.
    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.cfg
    }

    /// Steps taken.
    pub fn step_count(&self) -> u64 {
        self.t
    }

    /// One update with learning rate `lr` from `grads` (`grads[i]` is the gradient of `params()[i]`; `None`
    /// leaves that parameter and its moments untouched).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        if grads.len() != self.params.len() {
            return Err(Error::Config(format!(
                "AdamW::step: {} gradients for {} parameters",
                grads.len(),
                self.params.len()
            ))
            .into());
        }
        self.t += 1;
        let AdamWConfig {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.cfg;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        let k = Coeffs {
            beta1,
            beta2,
            one_minus_beta1: 1.0 - beta1,
            one_minus_beta2: 1.0 - beta2,
            inv_bc2: 1.0 / bc2,
            eps,
            step: lr / bc1,
            decay: 1.0 - lr * weight_decay,
            weight_decay: weight_decay != 0.0,
        };
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let var = &self.params[i].1;
            let theta = var.as_tensor().detach();
            let decay = k.weight_decay && theta.rank() >= 2;
            let slot = Slot {
                theta: &theta,
                m: &self.m[i],
                v: &self.v[i],
                g,
            };
            let (theta, m, v) = match fused_cpu(&slot, &k, decay)? {
                Some(new) => new,
                None => composed(&slot, &k, decay)?,
            };
            var.set(&theta)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Gradients of every parameter from a backward pass, in parameter order, detached.
    ///
    /// A parameter's gradient from candle's backward can still record the ops that made it (for a matmul, the
    /// forward activations it was multiplied by). Kept in the optimizer moments, such a tensor would keep every
    /// step's forward graph alive (seen: +450 MB per step for the block-diagonal preset), so it is detached here.
    pub fn grads_of(&self, store: &GradStore) -> Vec<Option<Tensor>> {
        self.params
            .iter()
            .map(|(_, p)| store.get(p.as_tensor()).map(Tensor::detach))
            .collect()
    }

    /// The state to checkpoint: `(name, m, v)` per parameter and the step count.
    pub fn state(&self) -> (Vec<(String, Tensor, Tensor)>, u64) {
        let rows = self
            .params
            .iter()
            .zip(self.m.iter().zip(&self.v))
            .map(|((n, _), (m, v))| (n.clone(), m.clone(), v.clone()))
            .collect();
        (rows, self.t)
    }

    /// Restores moments (looked up by parameter name) and the step count. Errors if one is missing or has
    /// another shape.
    pub fn load_state(
        &mut self,
        lookup: impl Fn(&str) -> Option<(Tensor, Tensor)>,
        t: u64,
    ) -> Result<()> {
        let mut m = Vec::with_capacity(self.params.len());
        let mut v = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let Some((mi, vi)) = lookup(name) else {
                return Err(Error::Checkpoint(format!(
                    "the optimizer state has no moments for parameter {name}"
                ))
                .into());
            };
            if mi.dims() != p.dims() || vi.dims() != p.dims() {
                return Err(Error::Checkpoint(format!(
                    "optimizer moments of {name} have shape {:?}, the parameter {:?}",
                    mi.dims(),
                    p.dims()
                ))
                .into());
            }
            m.push(mi.to_device(p.device())?.to_dtype(p.dtype())?);
            v.push(vi.to_device(p.device())?.to_dtype(p.dtype())?);
        }
        self.m = m;
        self.v = v;
        self.t = t;
        Ok(())
    }
}

/// The scalars of one AdamW step, in f64 (each is rounded to the parameter's dtype where it is used, as candle's
/// scalar ops do).
struct Coeffs {
    beta1: f64,
    beta2: f64,
    one_minus_beta1: f64,
    one_minus_beta2: f64,
    inv_bc2: f64,
    eps: f64,
    /// `lr / (1 − β1ᵗ)`.
    step: f64,
    /// `1 − lr · λ`.
    decay: f64,
    weight_decay: bool,
}

/// One parameter's tensors in an update: its value, its two moments and its gradient.
struct Slot<'a> {
    theta: &'a Tensor,
    m: &'a Tensor,
    v: &'a Tensor,
    g: &'a Tensor,
}

/// One parameter's update from candle's tensor ops (any device and dtype): the definition the fused loop follows.
fn composed(p: &Slot, k: &Coeffs, decay: bool) -> Result<(Tensor, Tensor, Tensor)> {
    let Slot { theta, m, v, g } = *p;
    let theta = if decay {
        (theta * k.decay)?
    } else {
        theta.clone()
    };
    let m = ((m * k.beta1)? + (g * k.one_minus_beta1)?)?;
    let v = ((v * k.beta2)? + (g.sqr()? * k.one_minus_beta2)?)?;
    let denom = ((&v * k.inv_bc2)?.sqrt()? + k.eps)?;
    let update = ((&m * k.step)? / denom)?;
    Ok(((theta - update)?, m, v))
}

/// Calls `f` with the elements of `tensors` when all are contiguous CPU tensors of element type `T` and `n`
/// elements; `None` (without calling it) otherwise.
fn with_cpu_slices<T: candle_core::WithDType, R>(
    tensors: &[&Tensor],
    n: usize,
    f: impl FnOnce(&[&[T]]) -> R,
) -> Option<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            candle_core::Storage::Cpu(c) if layout.is_contiguous() => {
                let all = c.as_slice::<T>().ok()?;
                all.get(layout.start_offset()..layout.start_offset() + n)
            }
            _ => None,
        })
        .collect::<Option<Vec<&[T]>>>()?;
    Some(f(&slices))
}

/// [`composed`] as one loop over the elements on the CPU (f32 or f64, contiguous tensors of one shape): one pass
/// and three allocations instead of a dozen tensor ops. Each operation is the one candle's op performs, with the
/// same scalar rounded to `T` and no fused multiply-add, so the result is the same bit for bit. `None` where it
/// does not apply.
fn fused_cpu(p: &Slot, k: &Coeffs, decay: bool) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    match p.theta.dtype() {
        candle_core::DType::F32 => fused_cpu_typed::<f32>(p, k, decay),
        candle_core::DType::F64 => fused_cpu_typed::<f64>(p, k, decay),
        _ => Ok(None),
    }
}

fn fused_cpu_typed<T>(p: &Slot, k: &Coeffs, decay: bool) -> Result<Option<(Tensor, Tensor, Tensor)>>
where
    T: crate::ops::kernels::Real,
{
    let Slot { theta, m, v, g } = *p;
    let shape = theta.shape();
    if [m, v, g].iter().any(|t| t.shape() != shape) {
        return Ok(None);
    }
    let n = shape.elem_count();
    let c = |x: f64| T::c(x);
    let (b1, b2, ob1, ob2) = (
        c(k.beta1),
        c(k.beta2),
        c(k.one_minus_beta1),
        c(k.one_minus_beta2),
    );
    let (ibc2, eps, step, dec) = (c(k.inv_bc2), c(k.eps), c(k.step), c(k.decay));
    let update = |s: &[&[T]]| {
        let (mut t1, mut m1, mut v1) = (vec![T::ZERO; n], vec![T::ZERO; n], vec![T::ZERO; n]);
        let coeffs = [b1, b2, ob1, ob2, ibc2, eps, step, dec];
        adamw_rows(
            [s[0], s[1], s[2], s[3]],
            [&mut t1, &mut m1, &mut v1],
            coeffs,
            decay,
        );
        (t1, m1, v1)
    };
    let Some((t1, m1, v1)) = with_cpu_slices::<T, _>(&[theta, m, v, g], n, update) else {
        return Ok(None);
    };
    let dev = theta.device();
    Ok(Some((
        Tensor::from_vec(t1, shape, dev)?,
        Tensor::from_vec(m1, shape, dev)?,
        Tensor::from_vec(v1, shape, dev)?,
    )))
}

crate::ops::kernels::multiversion! {
    /// The loop of [`fused_cpu`], in lanes (no fused multiply-add: Rust does not contract `a * b + c`).
    /// `inputs`: θ, m, v, g; `outputs`: θ, m, v; `k`: β1, β2, 1 − β1, 1 − β2, 1 / (1 − β2ᵗ), ε, lr / (1 − β1ᵗ), 1 − lr · λ.
    fn adamw_rows<T: crate::ops::kernels::Real>(
        inputs: [&[T]; 4],
        outputs: [&mut [T]; 3],
        k: [T; 8],
        decay: bool,
    ) {
        let [t0, m0, v0, g0] = inputs;
        let [t1, m1, v1] = outputs;
        let [b1, b2, ob1, ob2, ibc2, eps, step, dec] = k;
        // candle's `tensor * scalar` is `x · s + 0`, which turns −0 into +0: each product below adds `zero` too, so
        // that even the sign of a zero matches. Without decay θ is untouched: `θ · 1 + (−0)` is θ, −0 included.
        let zero = T::ZERO;
        let (dec, dec_zero) = if decay { (dec, zero) } else { (T::ONE, -zero) };
        let inputs = t0.iter().zip(m0).zip(v0).zip(g0);
        let outputs = t1.iter_mut().zip(m1.iter_mut()).zip(v1.iter_mut());
        for ((((&th, &m), &v), &g), ((t, mo), vo)) in inputs.zip(outputs) {
            let th = th * dec + dec_zero;
            let mi = (m * b1 + zero) + (g * ob1 + zero);
            let vi = (v * b2 + zero) + ((g * g) * ob2 + zero);
            let denom = (vi * ibc2 + zero).sqrt() + eps;
            *t = th - (mi * step + zero) / denom;
            *mo = mi;
            *vo = vi;
        }
    }
}

/// Global gradient norm `√(Σ ‖g‖²)` over all gradients (computed in f32 on the gradients' device, one host
/// transfer).
pub fn global_grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut total: Option<Tensor> = None;
    for g in grads.iter().flatten() {
        let s = g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F32)?;
        total = Some(match total {
            None => s,
            Some(t) => (t + s)?,
        });
    }
    match total {
        None => Ok(0.0),
        Some(t) => Ok((t.to_scalar::<f32>()? as f64).sqrt()),
    }
}

/// Clips gradients to a global norm of at most `max_norm` (scales all by `max_norm / (norm + 1e-6)` when the
/// norm exceeds it, as `torch.nn.utils.clip_grad_norm_`). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let norm = global_grad_norm(grads)?;
    if max_norm > 0.0 && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * scale)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn slot<'a>(theta: &'a Tensor, m: &'a Tensor, v: &'a Tensor, g: &'a Tensor) -> Slot<'a> {
        Slot { theta, m, v, g }
    }

    /// The fused CPU loop gives candle's composed ops bit for bit: f32 and f64, with and without weight decay,
    /// over several steps (moments carried), on seeded random values, with some elements zero and some gradients
    /// tiny, so that rounding differences would show.
    #[test]
    fn fused_update_equals_the_composed_ops_bit_for_bit() -> Result<()> {
        let dev = Device::Cpu;
        for dtype in [DType::F32, DType::F64] {
            for (wd, rank2) in [(0.0, true), (0.1, true), (0.1, false)] {
                let shape: &[usize] = if rank2 { &[7, 13] } else { &[91] };
                let rnd = |seed: u64, scale: f64| -> Result<Tensor> {
                    let mut s = seed;
                    let v: Vec<f64> = (0..91)
                        .map(|i| {
                            s = s
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            let u = (s >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
                            // Zeros of both signs: candle's scalar ops turn −0 into +0, the loop must too.
                            if i % 17 == 0 {
                                0.0
                            } else if i % 13 == 0 {
                                -0.0
                            } else {
                                u * scale
                            }
                        })
                        .collect();
                    Tensor::from_vec(v, shape, &dev)?.to_dtype(dtype)
                };
                let (mut t_a, mut m_a, mut v_a) = (rnd(1, 2.0)?, rnd(2, 0.0)?, rnd(3, 0.0)?);
                let (mut t_b, mut m_b, mut v_b) = (t_a.clone(), m_a.clone(), v_a.clone());
                for step in 1..=5u64 {
                    let g = rnd(10 + step, if step == 3 { 1e-6 } else { 1.0 })?;
                    let lr = 3e-3 * step as f64;
                    let (b1, b2): (f64, f64) = (0.9, 0.95);
                    let k = Coeffs {
                        beta1: b1,
                        beta2: b2,
                        one_minus_beta1: 1.0 - b1,
                        one_minus_beta2: 1.0 - b2,
                        inv_bc2: 1.0 / (1.0 - b2.powi(step as i32)),
                        eps: 1e-8,
                        step: lr / (1.0 - b1.powi(step as i32)),
                        decay: 1.0 - lr * wd,
                        weight_decay: wd != 0.0,
                    };
                    let decay = k.weight_decay && rank2;
                    let a = composed(&slot(&t_a, &m_a, &v_a, &g), &k, decay)?;
                    (t_a, m_a, v_a) = a;
                    (t_b, m_b, v_b) =
                        fused_cpu(&slot(&t_b, &m_b, &v_b, &g), &k, decay)?.expect("fused path");
                    for (a, b) in [(&t_a, &t_b), (&m_a, &m_b), (&v_a, &v_b)] {
                        let bits = |t: &Tensor| -> Result<Vec<u64>> {
                            Ok(t.to_dtype(DType::F64)?
                                .flatten_all()?
                                .to_vec1::<f64>()?
                                .iter()
                                .map(|x| x.to_bits())
                                .collect())
                        };
                        assert_eq!(
                            bits(a)?,
                            bits(b)?,
                            "{dtype:?} wd {wd} rank2 {rank2} step {step}"
                        );
                    }
                }
                // The parameters moved: the comparison is not between two untouched tensors.
                assert!(
                    (t_a - rnd(1, 2.0)?)?
                        .abs()?
                        .sum_all()?
                        .to_dtype(DType::F64)?
                        .to_scalar::<f64>()?
                        > 0.0
                );
            }
        }
        // A non-contiguous tensor takes the composed path.
        let t = Tensor::ones((3, 4), DType::F32, &dev)?.t()?;
        let k = Coeffs {
            beta1: 0.9,
            beta2: 0.95,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.05,
            inv_bc2: 1.0,
            eps: 1e-8,
            step: 1e-3,
            decay: 1.0,
            weight_decay: false,
        };
        let slot = Slot {
            theta: &t,
            m: &t,
            v: &t,
            g: &t,
        };
        assert!(fused_cpu(&slot, &k, false)?.is_none());
        Ok(())
    }
}
