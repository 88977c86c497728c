//! Slow, obviously-correct twins of [`super`]'s ops, built only from differentiable candle primitives.

use candle_core::{DType, Device, Result, Tensor, D};
use std::collections::HashMap;
use std::sync::Mutex;

/// See [`super::layer_norm`].
pub fn layer_norm(
    xs: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let mut ys = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    if let Some(w) = weight {
        ys = ys.broadcast_mul(w)?;
    }
    if let Some(b) = bias {
        ys = ys.broadcast_add(b)?;
    }
    Ok(ys)
}

/// See [`super::linear`].
pub fn linear(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let weight = &super::follow_dtype(weight, xs)?;
    let bias = bias.map(|b| super::follow_dtype(b, xs)).transpose()?;
    let bias = bias.as_ref();
    // As candle-nn's `Linear`: one 2-D matmul over all rows (a broadcast batched matmul is much slower on the
    // CPU and on CUDA).
    let (out, inp) = weight.dims2()?;
    let mut dims = xs.dims().to_vec();
    let rows = xs.elem_count() / inp.max(1);
    let ys = xs.reshape((rows, inp))?.matmul(&weight.t()?)?;
    let ys = match bias {
        Some(b) => ys.broadcast_add(b)?,
        None => ys,
    };
    if let Some(last) = dims.last_mut() {
        *last = out;
    }
    ys.reshape(dims)
}

/// See [`super::rotary_attention`].
pub fn rotary_attention(
    qkv: &Tensor,
    n_heads: usize,
    cos: &Tensor,
    sin: &Tensor,
    dropout: f32,
    train: bool,
) -> Result<Tensor> {
    split_heads_and_attend(qkv, n_heads, |q, k, v| {
        causal_attention(
            &rotary(q, cos, sin)?,
            &rotary(k, cos, sin)?,
            v,
            dropout,
            train,
        )
    })
}

/// Splits `qkv` `(batch, seq, 3·d)` into contiguous queries, keys and values `(batch, heads, seq, head_dim)`,
/// runs `attend(q, k, v)` (rotation and attention) and puts the heads back side by side `(batch, seq, d)`.
pub(super) fn split_heads_and_attend(
    qkv: &Tensor,
    n_heads: usize,
    attend: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (b, t, w) = qkv.dims3()?;
    if n_heads == 0 || w % (3 * n_heads) != 0 {
        candle_core::bail!(
            "rotary_attention: last dimension {w} is not a multiple of 3 · {n_heads} heads"
        )
    }
    let (d, hd) = (w / 3, w / (3 * n_heads));
    let qkv = qkv
        .reshape((b, t, 3, n_heads, hd))?
        .permute((2, 0, 3, 1, 4))?;
    let q = qkv.get(0)?.contiguous()?;
    let k = qkv.get(1)?.contiguous()?;
    let v = qkv.get(2)?.contiguous()?;
    attend(&q, &k, &v)?.transpose(1, 2)?.reshape((b, t, d))
}

/// See [`super::linear_cross_entropy`].
pub fn linear_cross_entropy(xs: &Tensor, weight: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logits = linear(xs, weight, None)?;
    let vocab = weight.dim(0)?;
    // Half-precision logits: the log-softmax and the mean in f32.
    let logits = match logits.dtype() {
        DType::BF16 | DType::F16 => logits.to_dtype(DType::F32)?,
        _ => logits,
    };
    cross_entropy(&logits.reshape(((), vocab))?, &targets.flatten_all()?)
}

/// See [`super::gelu`].
pub fn gelu(xs: &Tensor) -> Result<Tensor> {
    xs.gelu_erf()
}

/// See [`super::rotary`].
pub fn rotary(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = xs.dim(D::Minus1)? / 2;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let cos = Tensor::cat(&[cos, cos], D::Minus1)?;
    let sin = Tensor::cat(&[sin, sin], D::Minus1)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    xs.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
}

/// See [`super::causal_attention`].
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dropout: f32,
    train: bool,
) -> Result<Tensor> {
    let (_, _, seq, head_dim) = q.dims4()?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (head_dim as f64).sqrt()))?;
    // Half-precision scores: the softmax (its sums over up to `seq` keys) in f32, the probabilities back in the
    // scores' dtype for the product with `v`.
    let dtype = scores.dtype();
    let scores = match dtype {
        DType::BF16 | DType::F16 => scores.to_dtype(DType::F32)?,
        _ => scores,
    };
    let mask = causal_mask(seq, scores.dtype(), scores.device())?;
    let scores = scores.broadcast_add(&mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(dtype)?;
    let probs = self::dropout(&probs, dropout, train)?;
    probs.matmul(&v.contiguous()?)
}

/// An additive causal mask `(seq, seq)`: 0 on and below the diagonal, -inf above. Cached per size, dtype and
/// device, so it is built once per sequence length.
fn causal_mask(seq: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    type Key = (usize, DType, String);
    static CACHE: Mutex<Option<HashMap<Key, Tensor>>> = Mutex::new(None);
    let key = (seq, dtype, format!("{:?}", device.location()));
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(mask) = cache.get(&key) {
        return Ok(mask.clone());
    }
    let data: Vec<f32> = (0..seq * seq)
        .map(|k| {
            if k % seq > k / seq {
                f32::NEG_INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_vec(data, (seq, seq), device)?.to_dtype(dtype)?;
    cache.insert(key, mask.clone());
    Ok(mask)
}

/// See [`super::cross_entropy`].
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, targets)
}

/// See [`super::dropout`]: candle's mask-tensor dropout.
pub fn dropout(xs: &Tensor, p: f32, train: bool) -> Result<Tensor> {
    if !train || p == 0.0 {
        return Ok(xs.clone());
    }
    candle_nn::ops::dropout(xs, p)
}
