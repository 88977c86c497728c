//! The transformer's element-wise and attention ops, in forms that train.
//!
//! Several fused candle ops have no backward (`candle_nn::rotary_emb::rope*`, `LayerNorm::forward` on contiguous
//! input, `ops::softmax_last_dim`, `rms_norm`). Everything here is differentiable. The functions at this level are
//! what layers and models call; each has a slow twin in [`slow`], built from plain candle ops, that tests compare
//! against (forward values and gradients). Faster fused versions replace the bodies here without changing the
//! signatures.

pub mod slow;

use candle_core::{Result, Tensor};

/// Layer normalisation over the last dimension: `(x - mean) / sqrt(var + eps) * weight + bias`.
/// `weight` and `bias` have shape `(d,)`; either may be absent (identity).
pub fn layer_norm(
    xs: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    slow::layer_norm(xs, weight, bias, eps)
}

/// GELU with the exact error function, `x · Φ(x)` (PyTorch's `nn.GELU()` default).
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    slow::gelu(xs)
}

/// Rotary position embedding, rotate-half form (GPT-NeoX): `x · cos + rotate_half(x) · sin`, where
/// `rotate_half([x1, x2]) = [-x2, x1]` splits the head dimension in halves.
/// `xs`: `(batch, heads, seq, head_dim)`; `cos`, `sin`: `(seq, head_dim / 2)`.
pub fn rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    slow::rotary(xs, cos, sin)
}

/// Causal scaled-dot-product attention: `softmax(q·kᵀ / √d + causal mask) · v`, with dropout `p` on the attention
/// probabilities when `train` is set. `q`, `k`, `v`: `(batch, heads, seq, head_dim)`; returns the same shape.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dropout: f32,
    train: bool,
) -> Result<Tensor> {
    slow::causal_attention(q, k, v, dropout, train)
}

/// Mean cross-entropy in nats of `logits` `(rows, vocab)` against integer `targets` `(rows,)` (u32).
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    slow::cross_entropy(logits, targets)
}

/// Inverted dropout: zeroes each element with probability `p` and scales the rest by `1 / (1 - p)`.
pub fn dropout(xs: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if !train || p == 0.0 {
        return Ok(xs.clone());
    }
    candle_nn::ops::dropout(xs, p)
}
