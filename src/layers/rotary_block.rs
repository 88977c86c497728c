//! The pre-LayerNorm GPT block with rotary attention and pluggable linear layers.

use super::block_hadamard::{block_hadamard_mlp, BlockHadamardMlp};
use super::linear::{projection, LinearKind, Projection};
use crate::error::Error;
use crate::ops::Mode;
use crate::params::{CountParams, ParamCount, ParamCounts};
use crate::rng::derive_seed;
use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use std::collections::HashMap;
use std::sync::Mutex;

/// Which layers of a [`RotaryGptBlock`] are structured (paper Table 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum BlockKind {
    /// Every linear layer dense (the baseline).
    Dense,
    /// Every linear layer an [`crate::AdaptiveFastFood`]: the fused q/k/v projection, the output projection and
    /// both MLP layers ("Structured Adaptive FastFood").
    FastFood,
    /// Dense attention, [`BlockHadamardMlp`] as the MLP ("Block Diagonal"); the paper uses `n_blocks = 4`.
    BlockHadamard {
        /// Number of diagonal blocks (a power of two dividing `d_model` and the hidden width).
        n_blocks: usize,
    },
}

/// Configuration of a [`RotaryGptBlock`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BlockConfig {
    /// Model width `d`.
    pub d_model: usize,
    /// Attention heads; the head dimension `d_model / n_heads` must be even (rotary pairs).
    pub n_heads: usize,
    /// MLP hidden width (default `4·d_model`).
    pub hidden: usize,
    /// Dense, FastFood or block-Hadamard layers.
    pub kind: BlockKind,
    /// Dropout on attention probabilities and on both residual branches, in training only (default 0.1).
    pub dropout: f32,
    /// LayerNorm epsilon (default 1e-5).
    pub ln_eps: f64,
    /// Rotary base θ (default 10 000): frequency `i` of a head is `θ^(-2i/head_dim)`.
    pub rotary_base: f64,
    /// Seed of the initial weights (and FastFood permutations); each sub-layer derives its own stream.
    pub seed: u64,
}

impl BlockConfig {
    /// Defaults of the paper: hidden `4·d`, dropout 0.1, LayerNorm ε 1e-5, rotary base 10 000, seed 0.
    pub fn new(d_model: usize, n_heads: usize, kind: BlockKind) -> Self {
        Self {
            d_model,
            n_heads,
            hidden: 4 * d_model,
            kind,
            dropout: 0.1,
            ln_eps: 1e-5,
            rotary_base: 10_000.0,
            seed: 0,
        }
    }

    /// The same configuration with another seed (e.g. one per layer of a model).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Head dimension `d_model / n_heads`.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads.max(1)
    }

    /// Checks that the sizes are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(format!("BlockConfig: {msg}")).into());
        if self.d_model == 0 || self.n_heads == 0 || self.hidden == 0 {
            return bad(format!(
                "d_model ({}), n_heads ({}) and hidden ({}) must be positive",
                self.d_model, self.n_heads, self.hidden
            ));
        }
        if !self.d_model.is_multiple_of(self.n_heads) || !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "d_model ({}) must be n_heads ({}) times an even head dimension",
                self.d_model, self.n_heads
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if let BlockKind::BlockHadamard { n_blocks } = self.kind {
            if n_blocks == 0
                || !n_blocks.is_power_of_two()
                || !self.d_model.is_multiple_of(n_blocks)
                || !self.hidden.is_multiple_of(n_blocks)
            {
                return bad(format!(
                    "n_blocks ({n_blocks}) must be a power of two dividing d_model ({}) and hidden ({})",
                    self.d_model, self.hidden
                ));
            }
        }
        Ok(())
    }
}

/// The MLP of a [`RotaryGptBlock`].
#[derive(Debug, Clone)]
pub enum BlockMlp {
    /// `proj(GELU(fc(h)))`, dense or FastFood projections `d → hidden → d`.
    Linear {
        /// `d → hidden` (`mlp.c_fc`).
        fc: Projection,
        /// `hidden → d` (`mlp.c_proj`).
        proj: Projection,
    },
    /// A block-diagonal MLP with Hadamard mixing (`mlp`).
    BlockHadamard(BlockHadamardMlp),
}

impl Module for BlockMlp {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            BlockMlp::Linear { fc, proj } => proj.forward(&crate::ops::gelu(&fc.forward(xs)?)?),
            BlockMlp::BlockHadamard(m) => m.forward(xs),
        }
    }
}

impl CountParams for BlockMlp {
    fn param_counts(&self) -> ParamCounts {
        match self {
            BlockMlp::Linear { fc, proj } => fc.param_counts() + proj.param_counts(),
            BlockMlp::BlockHadamard(m) => m.param_counts(),
        }
    }
}

/// Cos/sin tables, keyed by (seq, head_dim, base bits, dtype, device).
type TableKey = (usize, usize, u64, DType, String);
static ROTARY_TABLES: Mutex<Option<HashMap<TableKey, (Tensor, Tensor)>>> = Mutex::new(None);

/// Rotary tables `(cos, sin)`, each `(seq, head_dim / 2)`: `angle[t, i] = t · base^(-2i/head_dim)`, computed in
/// f64 and converted to `dtype` on `device`. Cached per (seq, head_dim, base, dtype, device), so each sequence length
/// is computed once for all the blocks of a model.
pub fn rotary_tables(
    seq: usize,
    head_dim: usize,
    base: f64,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(Error::Config(format!("rotary: head_dim {head_dim} must be even")).into());
    }
    let key = (
        seq,
        head_dim,
        base.to_bits(),
        dtype,
        format!("{:?}", device.location()),
    );
    let mut cache = ROTARY_TABLES.lock().unwrap_or_else(|e| e.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if let Some(t) = cache.get(&key) {
        return Ok(t.clone());
    }
    let half = head_dim / 2;
    let mut cos = Vec::with_capacity(seq * half);
    let mut sin = Vec::with_capacity(seq * half);
    for t in 0..seq {
        for i in 0..half {
            let freq = base.powf(-2.0 * i as f64 / head_dim as f64);
            let (s, c) = (t as f64 * freq).sin_cos();
            cos.push(c);
            sin.push(s);
        }
    }
    let to = |v: Vec<f64>| -> Result<Tensor> {
        Tensor::from_vec(v, (seq, half), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(device)
    };
    let tables = (to(cos)?, to(sin)?);
    cache.insert(key, tables.clone());
    Ok(tables)
}

/// A pre-LayerNorm GPT block with causal rotary self-attention (Chatelain et al. 2021, section 4 and Table 3):
///
/// ```text
/// x ← x + Dropout(Attn(LN_1(x)))
/// x ← x + Dropout(MLP(LN_2(x)))          MLP(h) = W_2 · GELU(W_1 h + b_1) + b_2, hidden 4·d
/// Attn(h): [q, k, v] = W_qkv h + b_qkv; q, k ← rotary(q), rotary(k) (rotate-half, per head);
///          softmax(q kᵀ / √head_dim + causal mask) with dropout on the probabilities, · v; then W_o · + b_o
/// ```
///
/// Dropout (`BlockConfig::dropout`, default 0.1) is active only through [`ModuleT::forward_t`] with `train = true`.
/// The linear layers are pluggable ([`BlockKind`]): dense, [`crate::AdaptiveFastFood`] everywhere (the fused
/// `d → 3d` q/k/v FastFood has `⌈3d/n⌉` independent blocks, the same parameters as three separate ones when `d` is
/// a power of two), or a [`BlockHadamardMlp`] MLP. Everything is differentiable through [`crate::ops`]; the causal
/// mask and the rotary tables ([`rotary_tables`]) are cached per sequence length.
///
/// Variables: `ln_1.{weight,bias}`, `attn.c_attn.*` (`d → 3d`, q, k, v in that order), `attn.c_proj.*`,
/// `ln_2.{weight,bias}`, `mlp.c_fc.*`, `mlp.c_proj.*` (dense or FastFood), or `mlp.{w1,b1,w2,b2}` (block Hadamard).
///
/// # Parameters (dense)
///
/// `12·d² + 13·d` trainable (for d = 768: 7 087 872). FastFood and block-Hadamard variants report their
/// trainable counts with the same dense emulated count ([`CountParams`]).
///
/// # Example
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_structured::{rotary_gpt_block, BlockConfig, BlockKind, CountParams};
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let cfg = BlockConfig::new(64, 4, BlockKind::FastFood);
/// let block = rotary_gpt_block(&cfg, vb.pp("h.0"))?;
/// let x = Tensor::randn(0f32, 1., (2, 10, 64), &Device::Cpu)?;
/// assert_eq!(block.forward_t(&x, true)?.dims(), &[2, 10, 64]);
/// assert_eq!(block.param_counts().non_embedding.emulated, 12 * 64 * 64 + 13 * 64);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RotaryGptBlock {
    cfg: BlockConfig,
    ln1_w: Tensor,
    ln1_b: Tensor,
    qkv: Projection,
    proj: Projection,
    ln2_w: Tensor,
    ln2_b: Tensor,
    mlp: BlockMlp,
}

/// Builds a [`RotaryGptBlock`] from its configuration, its variables under `vb`'s prefix.
pub fn rotary_gpt_block(cfg: &BlockConfig, vb: VarBuilder) -> Result<RotaryGptBlock> {
    RotaryGptBlock::new(cfg, vb)
}

impl RotaryGptBlock {
    /// See [`rotary_gpt_block`].
    pub fn new(cfg: &BlockConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.d_model;
        let seed = |name: &str| derive_seed(cfg.seed, name);
        let linear_kind = match cfg.kind {
            BlockKind::FastFood => LinearKind::FastFood,
            BlockKind::Dense | BlockKind::BlockHadamard { .. } => LinearKind::Dense,
        };
        let ln = |name: &str| -> Result<(Tensor, Tensor)> {
            let vb = vb.pp(name);
            Ok((
                vb.get_with_hints(d, "weight", Init::Const(1.0))?,
                vb.get_with_hints(d, "bias", Init::Const(0.0))?,
            ))
        };
        let (ln1_w, ln1_b) = ln("ln_1")?;
        let (ln2_w, ln2_b) = ln("ln_2")?;
        let attn = vb.pp("attn");
        let qkv = projection(
            d,
            3 * d,
            linear_kind,
            seed("attn.c_attn"),
            attn.pp("c_attn"),
        )?;
        let proj = projection(d, d, linear_kind, seed("attn.c_proj"), attn.pp("c_proj"))?;
        let mlp_vb = vb.pp("mlp");
        let mlp =
            match cfg.kind {
                BlockKind::BlockHadamard { n_blocks } => BlockMlp::BlockHadamard(
                    block_hadamard_mlp(d, cfg.hidden, n_blocks, seed("mlp"), mlp_vb)?,
                ),
                _ => BlockMlp::Linear {
                    fc: projection(
                        d,
                        cfg.hidden,
                        linear_kind,
                        seed("mlp.c_fc"),
                        mlp_vb.pp("c_fc"),
                    )?,
                    proj: projection(
                        cfg.hidden,
                        d,
                        linear_kind,
                        seed("mlp.c_proj"),
                        mlp_vb.pp("c_proj"),
                    )?,
                },
            };
        Ok(Self {
            cfg: cfg.clone(),
            ln1_w,
            ln1_b,
            qkv,
            proj,
            ln2_w,
            ln2_b,
            mlp,
        })
    }

    /// The configuration the block was built with.
    pub fn config(&self) -> &BlockConfig {
        &self.cfg
    }
    /// `LN_1` gain and shift, each `(d,)`.
    pub fn ln_1(&self) -> (&Tensor, &Tensor) {
        (&self.ln1_w, &self.ln1_b)
    }
    /// `LN_2` gain and shift, each `(d,)`.
    pub fn ln_2(&self) -> (&Tensor, &Tensor) {
        (&self.ln2_w, &self.ln2_b)
    }
    /// The fused `d → 3d` query/key/value projection (outputs q, k, v in that order, heads contiguous).
    pub fn qkv_projection(&self) -> &Projection {
        &self.qkv
    }
    /// The attention output projection `d → d`.
    pub fn out_projection(&self) -> &Projection {
        &self.proj
    }
    /// The MLP.
    pub fn mlp(&self) -> &BlockMlp {
        &self.mlp
    }

    /// The attention branch `Attn(LN_1(x))` (before its residual dropout), `x` `(batch, seq, d)`, computed in
    /// `compute` after the LayerNorm.
    fn attention(&self, x: &Tensor, mode: Mode, compute: DType) -> Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let (nh, hd) = (self.cfg.n_heads, self.cfg.head_dim());
        let h = crate::ops::layer_norm(x, Some(&self.ln1_w), Some(&self.ln1_b), self.cfg.ln_eps)?
            .to_dtype(compute)?;
        let qkv = self.qkv.forward(&h)?; // (b, t, 3d): q, k, v, heads contiguous
        let (cos, sin) = rotary_tables(t, hd, self.cfg.rotary_base, compute, x.device())?;
        let y = crate::ops::rotary_attention(&qkv, nh, &cos, &sin, self.cfg.dropout, mode)?;
        self.proj.forward(&y)
    }

    /// [`ModuleT::forward_t`] in mixed precision: the residual stream and the LayerNorms stay in `xs`'s dtype
    /// (the parameters' f32), the two branches run in `compute` (bf16 or f16: every matmul, the attention with
    /// its softmax in f32, the GELU) with the weights cast on the fly, and their outputs return to `xs`'s dtype
    /// before the residual additions. With `compute == xs.dtype()` this is `forward_t`. `mode`: evaluation, or
    /// training with the seed of this block's dropout masks ([`Mode`]; `true` draws a fresh one).
    pub fn forward_mixed(
        &self,
        xs: &Tensor,
        mode: impl Into<Mode>,
        compute: DType,
    ) -> Result<Tensor> {
        let mode = mode.into();
        let dims = xs.dims();
        if dims.len() != 3 || dims[2] != self.cfg.d_model {
            return Err(Error::Config(format!(
                "RotaryGptBlock: input shape {dims:?}, expected (batch, seq, {})",
                self.cfg.d_model
            ))
            .into());
        }
        let p = self.cfg.dropout;
        let a = self
            .attention(xs, mode.fork(0), compute)?
            .to_dtype(xs.dtype())?;
        let x = crate::ops::residual_dropout(xs, &a, p, mode.fork(1))?;
        let h = crate::ops::layer_norm(&x, Some(&self.ln2_w), Some(&self.ln2_b), self.cfg.ln_eps)?
            .to_dtype(compute)?;
        let m = self.mlp.forward(&h)?.to_dtype(xs.dtype())?;
        crate::ops::residual_dropout(&x, &m, p, mode.fork(2))
    }
}

impl ModuleT for RotaryGptBlock {
    /// `(batch, seq, d_model) → (batch, seq, d_model)`; `train` enables dropout.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_mixed(xs, train, xs.dtype())
    }
}

impl CountParams for RotaryGptBlock {
    fn param_counts(&self) -> ParamCounts {
        let ln = ParamCounts::non_embedding(ParamCount::dense(4 * self.cfg.d_model));
        ln + self.qkv.param_counts() + self.proj.param_counts() + self.mlp.param_counts()
    }
}
