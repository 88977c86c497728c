//! The paper's GPT models: [`GptConfig`], [`Gpt`], and the presets of Tables 1–3 with their CPU twins.
//!
//! A [`Gpt`] is a token embedding `(vocab, d)`, a stack of layers described one by one ([`LayerSpec`]: a
//! [`RotaryGptBlock`] with dense, FastFood or block-Hadamard linear maps, or a [`FrozenRandomMlp`] "doping" layer),
//! a final LayerNorm and a language-model head, tied to the embedding as in GPT-2 (`logits = h · Wteᵀ`) unless
//! [`GptConfig::tie_embeddings`] is off. Positions enter through the rotary embeddings of the attention, so there is
//! no position table.
//!
//! ## Presets ([`presets`], [`preset`])
//!
//! | preset | layers | d_model | heads | pattern | peak LR | decay tokens |
//! |---|---|---|---|---|---|---|
//! | `xxsmall` | 3 | 768 | 12 | dense | 5e-4 | 32.8G |
//! | `xsmall` | 6 | 768 | 12 | dense | 5e-4 | 32.8G |
//! | `small` | 12 | 768 | 12 | dense | 5e-4 | 32.8G |
//! | `medium` | 24 | 1024 | 16 | dense | 3e-4 | 40.9G |
//! | `doped-xsmall` | 5 | 768 | 12 | T F T F T (3 trainable + 2 frozen) | 5e-4 | 32.8G |
//! | `doped-small` | 11 | 768 | 12 | T F … F T (6 + 5) | 5e-4 | 32.8G |
//! | `doped-medium` | 23 | 1024 | 16 | T F … F T (12 + 11) | 3e-4 | 40.9G |
//! | `fastfood` | 12 | 1024 | 16 | every linear layer AdaptiveFastFood | 5e-4 | 32.8G |
//! | `blockdiag` | 12 | 1024 | 16 | MLP = BlockHadamardMlp, 4 blocks | 5e-4 | 32.8G |
//!
//! Common to the paper presets (Table 1): context 1024, vocabulary 50,262, dropout 0.1, batch 80 sequences, Adam
//! (β 0.9/0.95), weight decay 0, gradient clipping 1.0, linear warmup over 409.6M tokens, cosine decay to 10% of the
//! peak, at most 32G tokens. Frozen layers (T = trainable block, F = frozen random MLP) have hidden width
//! `6·d_model`.
//!
//! Every preset has a CPU twin `NAME-cpu` with the same layer pattern, head dimension 32, context 256, vocabulary
//! 4096, batch 16 sequences (4096 tokens per step) and a token budget that fits this machine. The 768-wide presets
//! become 128 wide (4 heads). The 1024-wide ones become **160** wide (5 heads): the proportional width is
//! 1024/768 · 128 ≈ 171, and among multiples of the head dimension 32, 160 is the nearest (−6%, against +12% for
//! 192); it also keeps the medium/small ratio of non-embedding parameters closest to the paper's (3.1 against the
//! paper's 3.6, where 192 would give 4.5). The warmup and decay token counts are scaled by the same factor as the
//! token budget (`budget / 32G`), so the schedule has the paper's shape.
//!
//! ```
//! use candle_structured::model::preset;
//! let small = preset("small")?;
//! assert_eq!(small.model.param_counts().non_embedding.trainable, 12 * (12 * 768 * 768 + 13 * 768) + 2 * 768);
//! # Ok::<(), candle_core::Error>(())
//! ```

use crate::error::Error;
use crate::layers::{
    frozen_random_mlp, rotary_gpt_block, BlockConfig, BlockKind, FrozenRandomMlp, RotaryGptBlock,
};
use crate::ops::Mode;
use crate::params::{CountParams, ParamCount, ParamCounts};
use crate::rng::splitmix64;
use candle_core::{DType, Device, IndexOp, Module, ModuleT, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// One layer of a [`Gpt`] stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerSpec {
    /// A trainable [`RotaryGptBlock`] of the given kind.
    Block(BlockKind),
    /// A [`FrozenRandomMlp`] with this hidden width (the paper: `6·d_model`).
    Frozen {
        /// Hidden width of the frozen MLP.
        hidden: usize,
    },
}

/// Configuration of a [`Gpt`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GptConfig {
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Longest sequence the model is trained and evaluated on.
    pub context: usize,
    /// Model width `d`.
    pub d_model: usize,
    /// Attention heads (head dimension `d_model / n_heads`, even).
    pub n_heads: usize,
    /// The stack, bottom to top.
    pub layers: Vec<LayerSpec>,
    /// Dropout on the embeddings, attention probabilities and residual branches, in training only.
    pub dropout: f32,
    /// Language-model head tied to the token embedding (GPT-2); `false` gives a separate `lm_head`.
    pub tie_embeddings: bool,
    /// LayerNorm epsilon.
    pub ln_eps: f64,
    /// Rotary base θ.
    pub rotary_base: f64,
    /// Whether the LayerNorm inside frozen MLP layers trains (default false: the whole layer is frozen).
    pub frozen_trainable_ln: bool,
    /// Seed of the initial weights, FastFood permutations and frozen layers (each layer derives its own).
    pub seed: u64,
}

impl GptConfig {
    /// A dense GPT of `n_layers` blocks with the defaults of the paper (dropout 0.1, tied head, ε 1e-5, θ 10 000,
    /// seed 0).
    pub fn dense(
        vocab_size: usize,
        context: usize,
        d_model: usize,
        n_heads: usize,
        n_layers: usize,
    ) -> Self {
        Self {
            vocab_size,
            context,
            d_model,
            n_heads,
            layers: vec![LayerSpec::Block(BlockKind::Dense); n_layers],
            dropout: 0.1,
            tie_embeddings: true,
            ln_eps: 1e-5,
            rotary_base: 10_000.0,
            frozen_trainable_ln: false,
            seed: 0,
        }
    }

    /// Checks that the sizes are consistent.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(format!("GptConfig: {msg}")).into());
        if self.vocab_size == 0 || self.context == 0 || self.d_model == 0 || self.layers.is_empty()
        {
            return bad(format!(
                "vocab_size ({}), context ({}), d_model ({}) and the number of layers ({}) must be positive",
                self.vocab_size,
                self.context,
                self.d_model,
                self.layers.len()
            ));
        }
        if self.vocab_size > u32::MAX as usize {
            return bad(format!(
                "vocab_size {} does not fit token ids in u32",
                self.vocab_size
            ));
        }
        for i in 0..self.layers.len() {
            match self.layers[i] {
                LayerSpec::Block(_) => self.block_config(i).validate()?,
                LayerSpec::Frozen { hidden } => {
                    if hidden == 0 {
                        return bad(format!("layer {i}: frozen MLP hidden width is 0"));
                    }
                }
            }
        }
        Ok(())
    }

    /// The [`BlockConfig`] of layer `i` (meaningful when it is a block).
    pub fn block_config(&self, i: usize) -> BlockConfig {
        let kind = match self.layers.get(i) {
            Some(LayerSpec::Block(k)) => *k,
            _ => BlockKind::Dense,
        };
        let mut c =
            BlockConfig::new(self.d_model, self.n_heads, kind).with_seed(self.layer_seed(i));
        c.dropout = self.dropout;
        c.ln_eps = self.ln_eps;
        c.rotary_base = self.rotary_base;
        c
    }

    /// Seed of layer `i`, derived from [`GptConfig::seed`].
    pub fn layer_seed(&self, i: usize) -> u64 {
        crate::rng::derive_seed(self.seed, &format!("h.{i}"))
    }

    /// Number of layers in the stack.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Trainable, frozen and emulated parameter counts of the model this configuration builds, computed from the
    /// sizes alone (no tensor is allocated; tests check it against the built model's [`CountParams`]).
    ///
    /// Per layer, with `d = d_model`, `h = 4d` (blocks) or the frozen hidden width:
    /// * dense block: `12·d² + 13·d` (q/k/v `3d² + 3d`, output `d² + d`, MLP `8d² + 5d`, two LayerNorms `4d`);
    /// * FastFood block: each linear map `in → out` trains `3·n·⌈out/n⌉ + out` (`n` = next power of two ≥ `in`)
    ///   and emulates `in·out + out`;
    /// * block-Hadamard block: the MLP trains `2·d·h/m + h + d` and emulates `2·d·h + h + d`;
    /// * frozen layer: `2·d·h + 2·d` frozen (the LayerNorm trainable when [`GptConfig::frozen_trainable_ln`]).
    ///
    /// Plus the final LayerNorm (`2d`, non-embedding), the embedding `vocab·d` and, untied, the head `vocab·d`
    /// (embedding).
    pub fn param_counts(&self) -> ParamCounts {
        let d = self.d_model;
        let dense = |i: usize, o: usize| ParamCount::dense(i * o + o);
        let fastfood = |i: usize, o: usize| {
            let n = i.next_power_of_two();
            let k = o.div_ceil(n);
            ParamCount::structured(3 * n * k + o, i * o + o)
        };
        let mut non_emb = ParamCount::dense(2 * d); // final LayerNorm
        for l in &self.layers {
            non_emb += match *l {
                LayerSpec::Block(kind) => {
                    let h = 4 * d;
                    let ln = ParamCount::dense(4 * d);
                    match kind {
                        BlockKind::Dense => {
                            ln + dense(d, 3 * d) + dense(d, d) + dense(d, h) + dense(h, d)
                        }
                        BlockKind::FastFood => {
                            ln + fastfood(d, 3 * d)
                                + fastfood(d, d)
                                + fastfood(d, h)
                                + fastfood(h, d)
                        }
                        BlockKind::BlockHadamard { n_blocks } => {
                            ln + dense(d, 3 * d)
                                + dense(d, d)
                                + ParamCount::structured(
                                    2 * d * h / n_blocks + h + d,
                                    2 * d * h + h + d,
                                )
                        }
                    }
                }
                LayerSpec::Frozen { hidden } => {
                    if self.frozen_trainable_ln {
                        ParamCount {
                            trainable: 2 * d,
                            frozen: 2 * d * hidden,
                            emulated: 2 * d * hidden + 2 * d,
                        }
                    } else {
                        ParamCount::frozen(2 * d * hidden + 2 * d)
                    }
                }
            };
        }
        let heads = if self.tie_embeddings { 1 } else { 2 };
        ParamCounts {
            embedding: ParamCount::dense(heads * self.vocab_size * d),
            non_embedding: non_emb,
        }
    }

    /// Training compute per token, `6·N` FLOPs with `N` the trainable non-embedding parameters (Kaplan et al.
    /// 2020): the forward pass costs `2N` and the backward `4N`.
    pub fn flops_per_token(&self) -> f64 {
        crate::flops::training_flops(self.param_counts().non_embedding.trainable, 1)
    }

    /// Model FLOPs per training token for the utilisation figure (MFU; the convention of PaLM and nanoGPT), given
    /// the model's `counts` ([`GptConfig::param_counts`]) and the sequence length: see
    /// [`crate::flops::mfu_flops_per_token`].
    pub fn mfu_flops_per_token(&self, counts: &ParamCounts, seq_len: usize) -> f64 {
        let attention_layers = self
            .layers
            .iter()
            .filter(|l| matches!(l, LayerSpec::Block(_)))
            .count();
        crate::flops::mfu_flops_per_token(
            counts.non_embedding.trainable,
            counts.non_embedding.frozen,
            self.vocab_size * self.d_model,
            attention_layers * self.d_model * seq_len,
        )
    }
}

/// One of the layers of a [`Gpt`].
#[derive(Debug, Clone)]
pub enum GptLayer {
    /// A trainable transformer block.
    Block(Box<RotaryGptBlock>),
    /// A frozen random MLP.
    Frozen(FrozenRandomMlp),
}

impl ModuleT for GptLayer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            GptLayer::Block(b) => b.forward_t(xs, train),
            GptLayer::Frozen(f) => f.forward(xs),
        }
    }
}

impl CountParams for GptLayer {
    fn param_counts(&self) -> ParamCounts {
        match self {
            GptLayer::Block(b) => b.param_counts(),
            GptLayer::Frozen(f) => f.param_counts(),
        }
    }
}

/// A GPT decoder (see the [module docs](self)). Input token ids `(batch, seq)` u32, output logits
/// `(batch, seq, vocab)`.
///
/// ```
/// use candle_core::{DType, Device, ModuleT, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_structured::model::{gpt, GptConfig};
/// let cfg = GptConfig::dense(64, 16, 32, 2, 2);
/// let vm = VarMap::new();
/// let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?;
/// let ids = Tensor::new(&[[1u32, 2, 3], [4, 5, 6]], &Device::Cpu)?;
/// assert_eq!(model.forward_t(&ids, false)?.dims(), &[2, 3, 64]);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Gpt {
    cfg: GptConfig,
    wte: Tensor,
    layers: Vec<GptLayer>,
    ln_f_w: Tensor,
    ln_f_b: Tensor,
    lm_head: Option<Tensor>,
    /// The dtype the blocks' branches and the head compute in (the parameters' own unless set).
    compute: DType,
}

/// Refuses targets whose shape is not the ids' (`what` names the caller).
fn same_shape(what: &str, ids: &Tensor, targets: &Tensor) -> Result<()> {
    if targets.dims() != ids.dims() {
        return Err(Error::Config(format!(
            "{what}: targets of shape {:?}, expected {:?}",
            targets.dims(),
            ids.dims()
        ))
        .into());
    }
    Ok(())
}

/// Builds a [`Gpt`] with its variables under `vb` (`wte.weight`, `h.{i}.…`, `ln_f.{weight,bias}`,
/// `lm_head.weight` when untied). Fresh variables are initialised from [`GptConfig::seed`]: embeddings
/// `N(0, 0.02²)` as GPT-2, layers as their constructors do.
pub fn gpt(cfg: &GptConfig, vb: VarBuilder) -> Result<Gpt> {
    Gpt::new(cfg, vb)
}

impl Gpt {
    /// See [`gpt`].
    pub fn new(cfg: &GptConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let d = cfg.d_model;
        let normal = |name: &str, rows: usize| -> Result<Tensor> {
            let mut rng = crate::layers::init::SeededRng::new(cfg.seed, name);
            crate::layers::init::get_or_init(&vb.pp(name), (rows, d), "weight", || {
                (0..rows * d).map(|_| 0.02 * rng.normal()).collect()
            })
        };
        let wte = normal("wte", cfg.vocab_size)?;
        let mut layers = Vec::with_capacity(cfg.layers.len());
        for (i, l) in cfg.layers.iter().enumerate() {
            let lvb = vb.pp(format!("h.{i}"));
            layers.push(match *l {
                LayerSpec::Block(_) => {
                    GptLayer::Block(Box::new(rotary_gpt_block(&cfg.block_config(i), lvb)?))
                }
                LayerSpec::Frozen { hidden } => GptLayer::Frozen(frozen_random_mlp(
                    d,
                    hidden,
                    cfg.layer_seed(i),
                    cfg.frozen_trainable_ln,
                    lvb,
                )?),
            });
        }
        let ln_f_w = vb
            .pp("ln_f")
            .get_with_hints(d, "weight", Init::Const(1.0))?;
        let ln_f_b = vb.pp("ln_f").get_with_hints(d, "bias", Init::Const(0.0))?;
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(normal("lm_head", cfg.vocab_size)?)
        };
        let compute = wte.dtype();
        Ok(Self {
            cfg: cfg.clone(),
            wte,
            layers,
            ln_f_w,
            ln_f_b,
            lm_head,
            compute,
        })
    }

    /// The same model in mixed precision: the parameters, the residual stream, the LayerNorms and the loss stay in
    /// the parameters' dtype (f32), while every trainable block's attention and MLP branches and the language-model
    /// head compute in `dtype` (bf16 or f16: the matmuls, the attention with its softmax in f32, the GELU), the
    /// weights cast on the fly; gradients reach the parameters in their own dtype. Frozen random MLP layers keep
    /// the parameters' dtype. `dtype` equal to the parameters' is plain training.
    ///
    /// ```
    /// use candle_core::{DType, Device, Tensor};
    /// use candle_nn::{VarBuilder, VarMap};
    /// use candle_structured::model::{gpt, GptConfig};
    /// let cfg = GptConfig::dense(64, 16, 32, 2, 2);
    /// let vm = VarMap::new();
    /// let model = gpt(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu))?
    ///     .with_compute_dtype(DType::BF16)?;
    /// let ids = Tensor::new(&[[1u32, 2, 3, 4]], &Device::Cpu)?;
    /// let loss = model.loss(&ids, &ids, true)?;
    /// assert_eq!(loss.dtype(), DType::F32);
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn with_compute_dtype(mut self, dtype: DType) -> Result<Self> {
        if !dtype.is_float() {
            return Err(Error::Config(format!(
                "Gpt: compute dtype {dtype:?} is not a floating-point type"
            ))
            .into());
        }
        self.compute = dtype;
        Ok(self)
    }

    /// The dtype the blocks and the head compute in (see [`Gpt::with_compute_dtype`]).
    pub fn compute_dtype(&self) -> DType {
        self.compute
    }

    /// The configuration the model was built with.
    pub fn config(&self) -> &GptConfig {
        &self.cfg
    }

    /// The layers, bottom to top.
    pub fn layers(&self) -> &[GptLayer] {
        &self.layers
    }

    /// Final hidden states `(batch, seq, d)` (after the last LayerNorm). `mode`: evaluation, or training with the
    /// seed of this pass's dropout masks ([`Mode`]; `true` draws a fresh one); each layer forks its own.
    pub fn hidden_states(&self, ids: &Tensor, mode: impl Into<Mode>) -> Result<Tensor> {
        let mode = mode.into();
        let (b, t) = ids.dims2().map_err(|_| {
            Error::Config(format!(
                "Gpt: token ids of shape {:?}, expected (batch, seq)",
                ids.dims()
            ))
        })?;
        if t > self.cfg.context {
            return Err(Error::Config(format!(
                "Gpt: sequence length {t} exceeds the model's context {}",
                self.cfg.context
            ))
            .into());
        }
        if t == 0 || b == 0 {
            return Err(Error::Config(format!("Gpt: empty input of shape ({b}, {t})")).into());
        }
        let ids = ids.to_dtype(DType::U32)?;
        let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max >= self.cfg.vocab_size {
            return Err(Error::Config(format!(
                "Gpt: token id {max} is outside the vocabulary of {}",
                self.cfg.vocab_size
            ))
            .into());
        }
        let x = self
            .wte
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.d_model))?;
        let mut x = crate::ops::dropout(&x, self.cfg.dropout, mode.fork(0))?;
        for (i, layer) in self.layers.iter().enumerate() {
            x = match layer {
                GptLayer::Block(b) => b.forward_mixed(&x, mode.fork(i as u64 + 1), self.compute)?,
                GptLayer::Frozen(f) => f.forward(&x)?,
            };
        }
        crate::ops::layer_norm(&x, Some(&self.ln_f_w), Some(&self.ln_f_b), self.cfg.ln_eps)
    }

    /// Logits `(batch, seq, vocab)` of token ids `(batch, seq)`.
    pub fn logits(&self, ids: &Tensor, mode: impl Into<Mode>) -> Result<Tensor> {
        let h = self.hidden_states(ids, mode)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.wte);
        crate::ops::linear(&h.to_dtype(self.compute)?, head, None)?.to_dtype(h.dtype())
    }

    /// Next-token cross-entropy in nats at every position, `(batch, seq)`, of `ids` against `targets` (both
    /// `(batch, seq)`), in evaluation mode, computed in f32 from the logits (for scoring; [`Gpt::loss`] is the
    /// training loss, whose mean it equals).
    pub fn token_losses(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        same_shape("Gpt::token_losses", ids, targets)?;
        let logits = self.logits(ids, false)?.to_dtype(DType::F32)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
        let picked = shifted.gather(
            &targets.to_dtype(DType::U32)?.unsqueeze(D::Minus1)?,
            D::Minus1,
        )?;
        (log_z - picked)?.squeeze(D::Minus1)
    }

    /// Mean next-token cross-entropy in nats of `ids` `(batch, seq)` against `targets` `(batch, seq)`.
    /// `mode` as in [`Gpt::hidden_states`].
    pub fn loss(&self, ids: &Tensor, targets: &Tensor, mode: impl Into<Mode>) -> Result<Tensor> {
        same_shape("Gpt::loss", ids, targets)?;
        let h = self.hidden_states(ids, mode)?;
        let head = self.lm_head.as_ref().unwrap_or(&self.wte);
        let h = h.to_dtype(self.compute)?;
        crate::ops::linear_cross_entropy(&h, head, &targets.to_dtype(DType::U32)?)?
            .to_dtype(self.wte.dtype())
    }

    /// Samples `max_new` tokens after `prompt` (no key/value cache: each step re-reads the last `context` tokens).
    /// `temperature` 0 is greedy decoding; `top_k` keeps only the `k` most likely tokens (0: all). `seed` makes the
    /// sampling reproducible.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new: usize,
        temperature: f64,
        top_k: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            return Err(Error::Config("Gpt::generate: the prompt holds no token".into()).into());
        }
        let mut tokens = prompt.to_vec();
        let mut state = seed;
        for _ in 0..max_new {
            let start = tokens.len().saturating_sub(self.cfg.context);
            let ids = Tensor::new(&tokens[start..], device)?.unsqueeze(0)?;
            let logits = self.logits(&ids, false)?;
            let last = logits
                .i((0, tokens.len() - start - 1))?
                .to_dtype(DType::F64)?;
            let logits: Vec<f64> = last.to_vec1()?;
            let next = if temperature <= 0.0 {
                argmax(&logits)
            } else {
                state = splitmix64(state);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                sample(&logits, temperature, top_k, u)
            };
            tokens.push(next as u32);
        }
        Ok(tokens)
    }
}

fn argmax(xs: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best
}

/// Samples from `softmax(logits / temperature)` restricted to the `top_k` largest, with uniform `u ∈ [0, 1)`.
fn sample(logits: &[f64], temperature: f64, top_k: usize, u: f64) -> usize {
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if top_k > 0 && top_k < idx.len() {
        idx.truncate(top_k);
    }
    let m = logits[idx[0]];
    let w: Vec<f64> = idx
        .iter()
        .map(|&i| ((logits[i] - m) / temperature).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut acc = 0.0;
    for (k, &wk) in w.iter().enumerate() {
        acc += wk / total;
        if u < acc {
            return idx[k];
        }
    }
    idx[idx.len() - 1]
}

impl ModuleT for Gpt {
    /// Logits `(batch, seq, vocab)`; see [`Gpt::logits`].
    fn forward_t(&self, ids: &Tensor, train: bool) -> Result<Tensor> {
        self.logits(ids, train)
    }
}

impl CountParams for Gpt {
    fn param_counts(&self) -> ParamCounts {
        let d = self.cfg.d_model;
        let emb = ParamCounts::embedding(ParamCount::dense(self.wte.elem_count()))
            + ParamCounts::embedding(ParamCount::dense(
                self.lm_head.as_ref().map_or(0, |h| h.elem_count()),
            ));
        emb + self.layers.param_counts() + ParamCounts::non_embedding(ParamCount::dense(2 * d))
    }
}

/// Training hyper-parameters of a preset (Table 1 of the paper, or its CPU scaling).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSpec {
    /// Sequences per optimizer step (before gradient accumulation splits them).
    pub batch_size: usize,
    /// Sequence length of training windows (at most the model's context).
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Learning rate at the end of the decay, as a fraction of the peak (the paper: 0.1).
    pub min_lr_fraction: f64,
    /// Linear warmup length in tokens.
    pub warmup_tokens: u64,
    /// Tokens at which the cosine decay reaches its floor (counted from the start of training).
    pub decay_tokens: u64,
    /// Token budget of a run.
    pub max_tokens: u64,
    /// Decoupled (AdamW) weight decay, applied to matrices only.
    pub weight_decay: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε.
    pub eps: f64,
    /// Global gradient-norm clipping threshold (0: off).
    pub grad_clip: f64,
    /// The update of the hidden matrices (absent from the plans of older runs: AdamW).
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Decay of the exponential moving average of the weights that the run measures at its end and saves for use
    /// (`crate::train::WeightAverage`), in `[0, 1)`; 0 (the default, and older runs): none.
    #[serde(default)]
    pub ema_decay: f64,
}

/// How a run updates its hidden matrices; everything else (embeddings, head, biases, gains, diagonals) always takes
/// AdamW.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// AdamW, as the paper.
    #[default]
    AdamW,
    /// Muon (orthogonalised momentum, [`crate::train::MuonConfig`]'s defaults) at the same learning rate, its
    /// update scaled to AdamW's size.
    Muon,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Muon => "muon",
        })
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "adamw" => Ok(OptimizerKind::AdamW),
            "muon" => Ok(OptimizerKind::Muon),
            other => Err(format!("unknown optimizer {other:?}: adamw or muon")),
        }
    }
}

impl TrainSpec {
    /// Tokens per optimizer step, `batch_size · seq_len`.
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch_size * self.seq_len) as u64
    }

    /// Optimizer steps of the budget, `⌈max_tokens / tokens_per_step⌉`.
    pub fn total_steps(&self) -> u64 {
        self.max_tokens.div_ceil(self.tokens_per_step().max(1))
    }

    /// The same schedule for another token budget: warmup and decay scaled by `budget / max_tokens`, so the
    /// learning-rate curve keeps its shape.
    pub fn with_budget(&self, budget: u64) -> TrainSpec {
        let f = budget as f64 / self.max_tokens.max(1) as f64;
        TrainSpec {
            max_tokens: budget,
            warmup_tokens: (self.warmup_tokens as f64 * f).round() as u64,
            decay_tokens: ((self.decay_tokens as f64 * f).round() as u64).max(1),
            ..self.clone()
        }
    }
}

/// A named model and its training recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Preset {
    /// Name (`small`, `small-cpu`, `doped-medium`, …).
    pub name: String,
    /// One line on where it comes from.
    pub description: String,
    /// The model.
    pub model: GptConfig,
    /// The recipe.
    pub train: TrainSpec,
}

/// Default token budget of the CPU presets, 2,560 steps of 4 × 256 tokens (2.6M tokens): a quick run (about a minute
/// of two cores for `d64x2-cpu`). The main job of `train_small` and the studies (`train::sweep`) set their own.
pub const CPU_TOKENS: u64 = 2560 * 1024;

fn paper_train(lr: f64, decay_tokens: u64) -> TrainSpec {
    TrainSpec {
        batch_size: 80,
        seq_len: 1024,
        lr,
        min_lr_fraction: 0.1,
        warmup_tokens: 409_600_000,
        decay_tokens,
        max_tokens: 32_000_000_000,
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 1.0,
        optimizer: OptimizerKind::AdamW,
        ema_decay: 0.0,
    }
}

/// Peak learning rate of the CPU recipe for models of width 128 (see [`cpu_lr`]).
pub const CPU_LR_128: f64 = 4e-3;

/// The CPU recipe's peak learning rate for width `d_model`: [`CPU_LR_128`] · 128 / `d_model` (Adam's update of a
/// hidden matrix moves each output by about `lr · fan_in`, so a wider model needs a proportionally smaller rate,
/// as in μP). Depth does not enter: at width 128, 3 and 12 layers had the same best rate in the recipe's sweep
/// (docs/recipe.md).
pub fn cpu_lr(d_model: usize) -> f64 {
    CPU_LR_128 * 128.0 / d_model as f64
}

/// The CPU twins' recipe for width `d_model` and a budget of `tokens`: batches of 4 × 256 tokens (the early
/// losses of these models sit far above where larger batches pay off: 16 × 256 needed about twice the tokens of
/// 4 × 256 for the same loss), linear warmup over the first 5 % of the budget, cosine decay to 10 % of the peak
/// at the end of the budget, peak [`cpu_lr`]; AdamW β 0.9/0.95, clipping at 1.0 and no weight decay as the paper.
fn cpu_train(d_model: usize, tokens: u64) -> TrainSpec {
    TrainSpec {
        batch_size: 4,
        seq_len: 256,
        lr: cpu_lr(d_model),
        min_lr_fraction: 0.1,
        warmup_tokens: tokens / 20,
        decay_tokens: tokens,
        max_tokens: tokens,
        weight_decay: 0.0,
        beta1: 0.9,
        beta2: 0.95,
        eps: 1e-8,
        grad_clip: 1.0,
        optimizer: OptimizerKind::AdamW,
        ema_decay: 0.0,
    }
}

fn alternating(trainable: usize, frozen: usize, kind: BlockKind, hidden: usize) -> Vec<LayerSpec> {
    (0..trainable + frozen)
        .map(|i| {
            if i % 2 == 0 {
                LayerSpec::Block(kind)
            } else {
                LayerSpec::Frozen { hidden }
            }
        })
        .collect()
}

/// Every preset: the nine of the paper's Tables 1–3, then their `-cpu` twins.
pub fn presets() -> Vec<Preset> {
    struct P {
        name: &'static str,
        what: &'static str,
        d: usize,
        heads: usize,
        layers: Vec<LayerSpec>,
        lr: f64,
        decay: u64,
        cpu_tokens: u64,
    }
    let dense = |n| vec![LayerSpec::Block(BlockKind::Dense); n];
    let ff = LayerSpec::Block(BlockKind::FastFood);
    let bd = LayerSpec::Block(BlockKind::BlockHadamard { n_blocks: 4 });
    let (g32_8, g40_9) = (32_800_000_000, 40_900_000_000);
    let paper = vec![
        P {
            name: "xxsmall",
            what: "Table 1, 3 dense layers",
            d: 768,
            heads: 12,
            layers: dense(3),
            lr: 5e-4,
            decay: g32_8,
            cpu_tokens: CPU_TOKENS,
        },
        P {
            name: "xsmall",
            what: "Table 1, 6 dense layers",
            d: 768,
            heads: 12,
            layers: dense(6),
            lr: 5e-4,
            decay: g32_8,
            cpu_tokens: CPU_TOKENS,
        },
        P {
            name: "small",
            what: "Table 1, 12 dense layers",
            d: 768,
            heads: 12,
            layers: dense(12),
            lr: 5e-4,
            decay: g32_8,
            cpu_tokens: CPU_TOKENS,
        },
        P {
            name: "medium",
            what: "Table 1, 24 dense layers",
            d: 1024,
            heads: 16,
            layers: dense(24),
            lr: 3e-4,
            decay: g40_9,
            cpu_tokens: CPU_TOKENS,
        },
        P {
            name: "doped-xsmall",
            what: "Table 2, 3 trainable + 2 frozen layers",
            d: 768,
            heads: 12,
            layers: alternating(3, 2, BlockKind::Dense, 6 * 768),
            lr: 5e-4,
            decay: g32_8,
            cpu_tokens: CPU_TOKENS,
        },
        P {
            name: "doped-small",
            what: "Table 2, 6 trainable + 5 frozen layers",
            d: 768,
            heads: 12,
            layers: alternating(6, 5, BlockKind::Dense, 6 * 768),
            lr: 5e-4,
            decay: g32_8,
            cpu_tokens: CPU_TOKENS,
        },
        P {
            name: "doped-medium",
            what: "Table 2, 12 trainable + 11 frozen layers",
            d: 1024,
            heads: 16,
            layers: alternating(12, 11, BlockKind::Dense, 6 * 1024),
            lr: 3e-4,
            decay: g40_9,
            cpu_tokens: CPU_TOKENS,
        },
        P {
            name: "fastfood",
            what: "Table 3, 12 layers, every linear map AdaptiveFastFood",
            d: 1024,
            heads: 16,
            layers: vec![ff; 12],
            lr: 5e-4,
            decay: g32_8,
            cpu_tokens: CPU_TOKENS,
        },
        P {
            name: "blockdiag",
            what: "Table 3, 12 layers, MLP = BlockHadamardMlp (4 blocks)",
            d: 1024,
            heads: 16,
            layers: vec![bd; 12],
            lr: 5e-4,
            decay: g32_8,
            cpu_tokens: CPU_TOKENS,
        },
    ];
    let mut out = Vec::new();
    for p in &paper {
        let mut model = GptConfig::dense(50_262, 1024, p.d, p.heads, 0);
        model.layers = p.layers.clone();
        out.push(Preset {
            name: p.name.into(),
            description: format!(
                "{} (d_model {}, {} heads, context 1024)",
                p.what, p.d, p.heads
            ),
            model,
            train: paper_train(p.lr, p.decay),
        });
    }
    for p in paper {
        let d = if p.d == 768 { 128 } else { 160 };
        let layers = p
            .layers
            .iter()
            .map(|l| match *l {
                LayerSpec::Frozen { hidden } => LayerSpec::Frozen {
                    hidden: hidden / p.d * d,
                },
                other => other,
            })
            .collect();
        let mut model = GptConfig::dense(4096, 256, d, d / 32, 0);
        model.layers = layers;
        model.dropout = 0.0;
        let train = cpu_train(d, p.cpu_tokens);
        out.push(Preset {
            name: format!("{}-cpu", p.name),
            description: format!(
                "CPU twin of {} (d_model {d}, {} heads, context 256, vocab 4096)",
                p.name,
                d / 32
            ),
            model,
            train,
        });
    }
    // Sizes that only the CPU study has: narrow baselines, small enough to train past their compute-optimal
    // token count within one pass over the corpus (so that larger models overtake smaller ones inside the study),
    // with doped twins and structured models of the same widths. Named `<family>-d<width>x<layers>-cpu`.
    let doped = |d: usize| alternating(2, 1, BlockKind::Dense, 6 * d);
    let cpu_only = [
        (
            "d32x2-cpu",
            "CPU-only baseline, 2 dense layers",
            32,
            dense(2),
        ),
        (
            "d64x2-cpu",
            "CPU-only baseline, 2 dense layers",
            64,
            dense(2),
        ),
        (
            "d96x2-cpu",
            "CPU-only baseline, 2 dense layers",
            96,
            dense(2),
        ),
        (
            "d128x2-cpu",
            "CPU-only baseline, 2 dense layers",
            128,
            dense(2),
        ),
        (
            "doped-d64x3-cpu",
            "CPU-only, 2 trainable + 1 frozen layers",
            64,
            doped(64),
        ),
        (
            "doped-d96x3-cpu",
            "CPU-only, 2 trainable + 1 frozen layers",
            96,
            doped(96),
        ),
        (
            "fastfood-6x160-cpu",
            "CPU-only, 6 layers, every linear map AdaptiveFastFood",
            160,
            vec![ff; 6],
        ),
        (
            "blockdiag-d64x2-cpu",
            "CPU-only, 2 layers, MLP = BlockHadamardMlp (4 blocks)",
            64,
            vec![bd; 2],
        ),
        (
            "blockdiag-6x160-cpu",
            "CPU-only, 6 layers, MLP = BlockHadamardMlp (4 blocks)",
            160,
            vec![bd; 6],
        ),
    ];
    for (name, what, d, layers) in cpu_only {
        let mut model = GptConfig::dense(4096, 256, d, d / 32, 0);
        model.layers = layers;
        model.dropout = 0.0;
        out.push(Preset {
            name: name.into(),
            description: format!(
                "{what} (d_model {d}, {} head(s), context 256, vocab 4096)",
                d / 32
            ),
            model,
            train: cpu_train(d, CPU_TOKENS),
        });
    }
    out
}

/// The preset called `name`, or an error listing the known names.
pub fn preset(name: &str) -> Result<Preset> {
    let all = presets();
    match all.iter().find(|p| p.name == name) {
        Some(p) => Ok(p.clone()),
        None => Err(Error::Config(format!(
            "unknown preset {name:?}; known presets: {}",
            all.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

/// The `--list-presets` table: one line per preset with its trainable non-embedding `N`, frozen and emulated
/// parameter counts and embedding size.
pub fn presets_table() -> String {
    let mut s = format!(
        "{:<18} {:>6} {:>5} {:>14} {:>14} {:>14} {:>12}  {}\n",
        "preset", "layers", "d", "trainable N", "frozen", "emulated", "embedding", "description"
    );
    for p in presets() {
        let c = p.model.param_counts();
        s.push_str(&format!(
            "{:<18} {:>6} {:>5} {:>14} {:>14} {:>14} {:>12}  {}\n",
            p.name,
            p.model.n_layers(),
            p.model.d_model,
            c.non_embedding.trainable,
            c.non_embedding.frozen,
            c.non_embedding.emulated,
            c.embedding.trainable,
            p.description
        ));
    }
    s
}
