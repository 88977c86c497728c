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
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let var = &self.params[i].1;
            let mut theta = var.as_tensor().detach();
            if weight_decay != 0.0 && theta.rank() >= 2 {
                theta = (theta * (1.0 - lr * weight_decay))?;
            }
            let m = ((&self.m[i] * beta1)? + (g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let denom = ((&v * (1.0 / bc2))?.sqrt()? + eps)?;
            let update = ((&m * (lr / bc1))? / denom)?;
            var.set(&(theta - update)?)?;
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
