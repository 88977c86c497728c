//! The transformer's element-wise and attention ops, in forms that train.
//!
//! Several fused candle ops have no backward (`candle_nn::rotary_emb::rope*`, `LayerNorm::forward` on contiguous
//! input, `ops::softmax_last_dim`, `rms_norm`). Everything here is differentiable. The functions at this level are
//! what layers and models call; each has a slow twin in [`slow`], built from plain candle ops, that tests compare
//! against (forward values and gradients). Faster fused versions replace the bodies here without changing the
//! signatures.
//!
//! On CUDA (feature `cuda-untested`), LayerNorm, GELU, dropout, the rotary embedding, the causal attention softmax and the
//! cross-entropy have CUDA kernels (`cuda/ops.cu`), used when [`set_cuda_fused_ops`] (or the environment variable
//! `CANDLE_STRUCTURED_CUDA_OPS=1`) turns them on: attention is then cuBLAS for `q·kᵀ` and `P·v` around one
//! softmax-and-dropout kernel each way. They are checked in emulation on the CPU (`tests/cuda_emulated.rs`) but
//! not yet on a GPU, so the slow twins stay the default there.

mod attention;
mod attn_softmax;
#[cfg(feature = "cuda-untested")]
mod cuda;
mod denormals;
mod dropout;
mod fastfood;
mod gelu;
pub(crate) mod kernels;
mod layer_norm;
mod linear;
mod linear_xent;
mod rotary;
mod rotary_attention;
pub mod slow;
mod softmax_xent;

pub use denormals::{flushes_denormals, set_flush_denormals, set_flush_denormals_on_this_thread};

use candle_core::{Result, Tensor, D};
use kernels::fused_ok;

/// Whether the fused CPU kernels are switched off (`CANDLE_STRUCTURED_SLOW_OPS=1`): every op then runs its slow
/// twin. Read once.
fn forced_slow() -> bool {
    use std::sync::OnceLock;
    static SLOW: OnceLock<bool> = OnceLock::new();
    *SLOW.get_or_init(|| {
        std::env::var("CANDLE_STRUCTURED_SLOW_OPS").is_ok_and(|v| !v.is_empty() && v != "0")
    })
}

/// Whether these tensors take the fused path: CPU, `f32`/`f64`, one dtype, and not forced slow.
fn fused(ts: &[&Tensor]) -> bool {
    !forced_slow() && fused_ok(ts)
}

static CUDA_OPS: crate::gpu::EnvSetting =
    crate::gpu::EnvSetting::flag("CANDLE_STRUCTURED_CUDA_OPS");

/// Turns the CUDA kernels of the ops on or off for every later call (process-wide); see the module docs.
pub fn set_cuda_fused_ops(on: bool) {
    CUDA_OPS.set(on as u32);
}

/// Whether the ops run their CUDA kernels on CUDA tensors: the last [`set_cuda_fused_ops`], else the
/// environment variable `CANDLE_STRUCTURED_CUDA_OPS` (`1`, `true` or `yes`), else off. Always `false` without
/// the `cuda` feature.
pub fn cuda_fused_ops() -> bool {
    cfg!(feature = "cuda-untested") && CUDA_OPS.get() == 1
}

/// Whether these tensors take the CUDA kernels: on CUDA, `f32`/`f16`/`bf16`, one dtype, the kernels switched on
/// ([`cuda_fused_ops`]) and not forced slow.
fn cuda_fused(ts: &[&Tensor]) -> bool {
    use candle_core::{DType, Device};
    cuda_fused_ops()
        && !forced_slow()
        && kernels::all_on(ts, Device::is_cuda, &[DType::F32, DType::F16, DType::BF16])
}

use crate::rng::splitmix64;

/// How a forward pass runs: evaluation (no dropout), or training with dropout masks drawn from a seed. The seed
/// travels with the call as a value: the training loop passes `Mode::train(f(run seed, step))`, so that a resumed
/// run draws the masks of an uninterrupted one; each dropout site takes its own seed with [`Mode::fork`].
/// `bool` converts into it for callers that only say whether they train: `true` draws a fresh random seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No dropout.
    Eval,
    /// Dropout masks from `seed`.
    Train {
        /// Seed of this site's mask.
        seed: u64,
    },
}

impl Mode {
    /// Training with masks from `seed`.
    pub fn train(seed: u64) -> Mode {
        Mode::Train { seed }
    }

    /// Whether dropout is on.
    pub fn is_train(self) -> bool {
        matches!(self, Mode::Train { .. })
    }

    /// The mode of sub-site `k` (a layer, a branch): the same kind, an independent seed.
    pub fn fork(self, k: u64) -> Mode {
        match self {
            Mode::Eval => Mode::Eval,
            Mode::Train { seed } => Mode::Train {
                seed: splitmix64(seed ^ splitmix64(k.wrapping_add(1))),
            },
        }
    }

    /// The seed of this site's mask (0 in evaluation).
    fn seed(self) -> u64 {
        match self {
            Mode::Eval => 0,
            Mode::Train { seed } => seed,
        }
    }
}

impl From<bool> for Mode {
    /// `false`: [`Mode::Eval`]; `true`: training with a fresh random seed.
    fn from(train: bool) -> Mode {
        if train {
            Mode::train(rand::random::<u64>())
        } else {
            Mode::Eval
        }
    }
}

/// `param` in the dtype of `like`, or `param` itself when they match: the rule by which parameters kept in f32
/// (the master weights of mixed-precision training) follow a bf16 or f16 activation. The cast is differentiable:
/// the gradient flows back in the parameter's own dtype.
///
/// Any other pair is refused ([`crate::Error::DTypeMismatch`]), as `candle_nn::Linear` refuses a mismatch: an f64
/// input to an f32 layer is an error, not a silent computation in f64.
pub(crate) fn follow_dtype(param: &Tensor, like: &Tensor) -> Result<Tensor> {
    check_dtype("layer", like, param)?;
    if param.dtype() == like.dtype() {
        Ok(param.clone())
    } else {
        param.to_dtype(like.dtype())
    }
}

/// Refuses an input `xs` whose dtype parameters `param` do not take (see [`follow_dtype`]); `layer` names the
/// layer in the message.
pub(crate) fn check_dtype(layer: &'static str, xs: &Tensor, param: &Tensor) -> Result<()> {
    use candle_core::DType::{BF16, F16, F32};
    match (param.dtype(), xs.dtype()) {
        (p, x) if p == x => Ok(()),
        (F32, BF16 | F16) => Ok(()),
        (param, input) => Err(crate::Error::DTypeMismatch {
            layer,
            input,
            param,
        }
        .into()),
    }
}

/// Layer normalisation over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
/// `weight` and `bias` have shape `(d,)`; either may be absent (identity). They follow `xs`'s dtype as in
/// [`linear`].
pub fn layer_norm(
    xs: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let weight = weight.map(|w| follow_dtype(w, xs)).transpose()?;
    let bias = bias.map(|b| follow_dtype(b, xs)).transpose()?;
    let (weight, bias) = (weight.as_ref(), bias.as_ref());
    let mut all = vec![xs];
    all.extend(weight);
    all.extend(bias);
    if !(fused(&all) || cuda_fused(&all)) || xs.rank() == 0 {
        return slow::layer_norm(xs, weight, bias, eps);
    }
    let d = xs.dim(D::Minus1)?;
    let w = match weight {
        Some(w) => w.clone(),
        None => Tensor::ones(d, xs.dtype(), xs.device())?,
    };
    let b = match bias {
        Some(b) => b.clone(),
        None => Tensor::zeros(d, xs.dtype(), xs.device())?,
    };
    let x2 = xs.contiguous()?.reshape(((), d))?;
    x2.apply_op3(
        &w.contiguous()?,
        &b.contiguous()?,
        layer_norm::LayerNorm { eps },
    )?
    .reshape(xs.shape())
}

/// Affine map `x·Wᵀ + b` over the last dimension: `xs` `(…, in)`, `weight` `(out, in)` (candle-nn's layout),
/// `bias` `(out,)` or absent; returns `(…, out)`. On the CPU this is one graph node with its own backward (see the
/// module `linear`), not candle's transpose, matmul and broadcast add.
///
/// Mixed precision: a weight or bias in another float dtype than `xs` (f32 parameters under a bf16 activation) is
/// cast to `xs`'s dtype first, so the product runs in the activation's precision and the parameters' gradients
/// come back in their own. Any other pair (an f64 input to f32 weights) is refused with
/// [`crate::Error::DTypeMismatch`], as `candle_nn::Linear` refuses it.
pub fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let weight = &follow_dtype(weight, xs)?;
    let bias = bias.map(|b| follow_dtype(b, xs)).transpose()?;
    let bias = bias.as_ref();
    let mut all = vec![xs, weight];
    all.extend(bias);
    if !fused(&all) || xs.rank() == 0 || weight.rank() != 2 {
        return slow::linear(xs, weight, bias);
    }
    let (xs, w) = (xs.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => xs.apply_op3(&w, &b.contiguous()?, linear::LinearBias),
        None => xs.apply_op2(&w, linear::LinearNoBias),
    }
}

/// The fused CPU form of [`crate::AdaptiveFastFood`]'s forward, or `None` where it does not apply (other devices
/// or dtypes, or forced slow), in which case the layer composes candle ops.
#[allow(clippy::too_many_arguments)]
pub(crate) fn fastfood(
    xs: &Tensor,
    [b, g, s]: [&Tensor; 3],
    bias: Option<&Tensor>,
    (in_dim, out_dim, n, k): (usize, usize, usize, usize),
    (scale1, scale2): (f64, f64),
    perm: std::sync::Arc<Vec<u32>>,
) -> Result<Option<Tensor>> {
    let mut all = vec![xs, b, g, s];
    all.extend(bias);
    if !fused(&all) {
        return Ok(None);
    }
    let diag = Tensor::cat(&[b, g, s], 0)?;
    let spec = fastfood::FastFood {
        in_dim,
        out_dim,
        n,
        k,
        scale1,
        scale2,
        perm,
    };
    let xs = xs.contiguous()?;
    Ok(Some(match bias {
        Some(bias) => xs.apply_op3(&diag, &bias.contiguous()?, fastfood::FastFoodBias(spec))?,
        None => xs.apply_op2(&diag, fastfood::FastFoodNoBias(spec))?,
    }))
}

/// GELU with the exact error function, `x · Φ(x)` (PyTorch's `nn.GELU()` default).
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    if !(fused(&[xs]) || cuda_fused(&[xs])) {
        return slow::gelu(xs);
    }
    xs.contiguous()?.apply_op1(gelu::Gelu)
}

/// Rotary position embedding, rotate-half form (GPT-NeoX): `x · cos + rotate_half(x) · sin`, where
/// `rotate_half([x1, x2]) = [-x2, x1]` splits the head dimension in halves.
/// `xs`: `(batch, heads, seq, head_dim)`; `cos`, `sin`: `(seq, head_dim / 2)`.
pub fn rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if !(fused(&[xs, cos, sin]) || cuda_fused(&[xs, cos, sin])) || xs.rank() != 4 {
        return slow::rotary(xs, cos, sin);
    }
    let xs = if kernels::View4::from_layout(xs.layout()).is_some() {
        xs.clone()
    } else {
        xs.contiguous()?
    };
    xs.apply_op3(
        &cos.contiguous()?,
        &sin.contiguous()?,
        rotary::Rotary { inverse: false },
    )
}

/// Causal scaled-dot-product attention: `softmax(q·kᵀ / √d + causal mask) · v`, with dropout `p` on the attention
/// probabilities in training mode (`mode`: [`Mode`], or a `bool`). `q`, `k`, `v`: `(batch, heads, seq, head_dim)`; returns the same shape.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dropout: f32,
    mode: impl Into<Mode>,
) -> Result<Tensor> {
    if q.elem_count() == 0 && q.rank() == 4 {
        // no query (an empty batch or sequence): the empty output, still connected to `v` for the backward
        return v.narrow(2, 0, q.dim(2)?.min(v.dim(2)?))?.affine(0.0, 0.0);
    }
    let mode = mode.into();
    let p_drop = if mode.is_train() { dropout } else { 0.0 };
    if cuda_fused(&[q, k, v]) && q.rank() == 4 && (0.0..1.0).contains(&dropout) {
        return composed_attention(q, k, v, p_drop, mode.seed());
    }
    if !fused(&[q, k, v]) || q.rank() != 4 || !(0.0..1.0).contains(&dropout) {
        return slow::causal_attention(q, k, v, dropout, mode.is_train());
    }
    let view = |t: &Tensor| -> Result<Tensor> {
        if kernels::View4::from_layout(t.layout()).is_some() {
            Ok(t.clone())
        } else {
            t.contiguous()
        }
    };
    let op = attention::CausalAttention {
        p_drop,
        seed: mode.seed(),
    };
    // The op stores (b, t, h, hd); present it as (b, h, t, hd).
    view(q)?
        .apply_op3(&view(k)?, &view(v)?, op)?
        .transpose(1, 2)
}

/// Causal attention as two matrix products around the [`attn_softmax::AttnSoftmax`] op (softmax of the scaled,
/// causally masked scores with dropout `p_drop` from `seed`, the CPU attention op's mask): the form CUDA trains
/// with, on any device. `q`, `k`, `v`: `(batch, heads, seq, head_dim)`.
fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    p_drop: f32,
    seed: u64,
) -> Result<Tensor> {
    let head_dim = q.dim(3)?;
    let scores = q.contiguous()?.matmul(&k.contiguous()?.t()?)?;
    let probs = scores.apply_op1(attn_softmax::AttnSoftmax {
        scale: 1.0 / (head_dim as f64).sqrt(),
        p_drop,
        seed,
    })?;
    probs.matmul(&v.contiguous()?)
}

/// Causal self-attention with rotary embeddings from a fused QKV projection: `qkv` `(batch, seq, 3·d)` holds the
/// queries, keys and values (in that order, each `n_heads` heads of `head_dim = d / n_heads`, heads contiguous);
/// queries and keys are rotated by [`rotary`] with `cos`, `sin` `(seq, head_dim / 2)`, then
/// [`causal_attention`] runs with dropout `p` on the probabilities in training mode. Returns `(batch, seq, d)`,
/// the heads' outputs side by side. On the CPU this is one graph node with its own backward.
pub fn rotary_attention(
    qkv: &Tensor,
    n_heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    dropout: f32,
    mode: impl Into<Mode>,
) -> Result<Tensor> {
    if qkv.elem_count() == 0 && qkv.rank() == 3 {
        // an empty batch or sequence: the empty `(batch, seq, d)`, still connected to `qkv` for the backward
        let d = qkv.dim(2)? / 3;
        return qkv.narrow(2, 0, d)?.affine(0.0, 0.0);
    }
    let mode = mode.into();
    if cuda_fused(&[qkv, cos, sin]) && qkv.rank() == 3 {
        // the heads split as in the slow twin, then the CUDA rotary and attention
        return slow::split_heads_and_attend(qkv, n_heads, |q, k, v| {
            causal_attention(
                &rotary(q, cos, sin)?,
                &rotary(k, cos, sin)?,
                v,
                dropout,
                mode,
            )
        });
    }
    if !fused(&[qkv, cos, sin]) || qkv.rank() != 3 || !(0.0..1.0).contains(&dropout) {
        return slow::rotary_attention(qkv, n_heads, cos, sin, dropout, mode.is_train());
    }
    let p_drop = if mode.is_train() { dropout } else { 0.0 };
    let op = rotary_attention::RotaryAttention::new(n_heads, p_drop, mode.seed());
    qkv.contiguous()?
        .apply_op3(&cos.contiguous()?, &sin.contiguous()?, op)
}

/// Mean cross-entropy in nats of `logits` `(rows, vocab)` against integer `targets` `(rows,)` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if cuda_fused(&[logits]) && logits.rank() == 2 && targets.device().same_device(logits.device())
    {
        let targets = targets.flatten_all()?.to_dtype(candle_core::DType::U32)?;
        return logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, softmax_xent::CrossEntropy);
    }
    if !fused(&[logits]) || !targets.device().is_cpu() || logits.rank() != 2 {
        return slow::cross_entropy(logits, targets);
    }
    logits
        .contiguous()?
        .apply_op2(&targets.contiguous()?, softmax_xent::CrossEntropy)
}

/// Mean cross-entropy in nats of the logits `xs·Wᵀ` against `targets`: a language-model head and its loss in one.
/// `xs` `(…, d)`, `weight` `(vocab, d)`, `targets` integer with one entry per row of `xs` (any shape with that many
/// elements). Equals `cross_entropy(&linear(xs, weight, None)?.reshape(((), vocab))?, targets)`; on the CPU it is
/// one graph node that keeps the probabilities for the backward instead of a logits tensor and its gradient.
pub fn linear_cross_entropy(xs: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let weight = &follow_dtype(weight, xs)?;
    if cuda_fused(&[xs, weight]) && weight.rank() == 2 {
        // cuBLAS for the logits, then the CUDA cross-entropy (half-precision logits read as they are)
        let logits = slow::linear(xs, weight, None)?;
        return cross_entropy(&logits.reshape(((), weight.dim(0)?))?, targets);
    }
    if !fused(&[xs, weight]) || !targets.device().is_cpu() || xs.rank() == 0 || weight.rank() != 2 {
        return slow::linear_cross_entropy(xs, weight, targets);
    }
    let vocab = weight.dim(0)?;
    let t = targets
        .flatten_all()?
        .to_dtype(candle_core::DType::U32)?
        .to_vec1::<u32>()?;
    if let Some(&bad) = t.iter().find(|&&x| x as usize >= vocab) {
        candle_core::bail!("cross_entropy: target {bad} out of range for {vocab} classes")
    }
    let op = linear_xent::LinearCrossEntropy::new(t);
    xs.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`, in training
/// mode (`mode`: [`Mode`], whose seed draws the mask, or a `bool`); the identity in evaluation.
pub fn dropout(xs: &Tensor, p: f32, mode: impl Into<Mode>) -> Result<Tensor> {
    let mode = mode.into();
    if !mode.is_train() || p == 0.0 {
        return Ok(xs.clone());
    }
    if !(fused(&[xs]) || cuda_fused(&[xs])) || !(0.0..1.0).contains(&p) {
        return slow::dropout(xs, p, true);
    }
    xs.contiguous()?.apply_op1(dropout::Dropout {
        p,
        seed: mode.seed(),
    })
}

/// `residual + dropout(xs, p, mode)`, the residual connection of a pre-norm block, as one graph node on the CPU
/// (the same mask as [`dropout`] would draw from the same seed).
pub fn residual_dropout(
    residual: &Tensor,
    xs: &Tensor,
    p: f32,
    mode: impl Into<Mode>,
) -> Result<Tensor> {
    let mode = mode.into();
    let ok = fused(&[residual, xs]) || cuda_fused(&[residual, xs]);
    if !mode.is_train() || p == 0.0 || !ok || !(0.0..1.0).contains(&p) {
        return residual + dropout(xs, p, mode)?;
    }
    let op = dropout::ResidualDropout(dropout::Dropout {
        p,
        seed: mode.seed(),
    });
    residual.contiguous()?.apply_op2(&xs.contiguous()?, op)
}

/// [`causal_attention`] in training mode with a given dropout seed instead of a fresh one, so that repeated calls
/// draw the same mask (for gradient checks). CPU `f32`/`f64` only.
#[doc(hidden)]
pub fn causal_attention_seeded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dropout: f32,
    seed: u64,
) -> Result<Tensor> {
    if !fused_ok(&[q, k, v]) {
        candle_core::bail!("causal_attention_seeded: CPU f32/f64 only")
    }
    let op = attention::CausalAttention {
        p_drop: dropout,
        seed,
    };
    q.apply_op3(k, v, op)?.transpose(1, 2)
}

/// [`causal_attention`] in its CUDA form ([`composed_attention`]: matmuls around the softmax op) on any device,
/// with a given dropout seed, for tests that compare it with the fused CPU op (same masks).
#[doc(hidden)]
pub fn causal_attention_composed_seeded(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dropout: f32,
    seed: u64,
) -> Result<Tensor> {
    composed_attention(q, k, v, dropout, seed)
}

/// [`dropout`] with a given seed (for gradient checks). CPU `f32`/`f64` only.
#[doc(hidden)]
pub fn dropout_seeded(xs: &Tensor, p: f32, seed: u64) -> Result<Tensor> {
    if !fused_ok(&[xs]) {
        candle_core::bail!("dropout_seeded: CPU f32/f64 only")
    }
    xs.contiguous()?.apply_op1(dropout::Dropout { p, seed })
}
