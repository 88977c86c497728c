//! Adaptive FastFood: a linear layer whose `in × out` matrix is a product of diagonals, Hadamard transforms and a
//! permutation.

use super::init::{get_or_init, get_or_init_renamed, linear_bias, SeededRng};
use super::permute::LastDimPermutation;
use crate::error::Error;
use crate::params::{CountParams, ParamCount, ParamCounts};
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, Module, VarBuilder};

/// Adaptive FastFood, a drop-in for a linear layer (Le et al. 2013, "Fastfood"; Yang et al. 2015, "Deep Fried
/// Convnets", adaptive variant), the "Structured Adaptive FastFood" rows of Table 3 of Chatelain et al. (2021).
///
/// # Math
///
/// With `n` the next power of two ≥ `in_dim` (the input is zero-padded to `n`) and `k = ⌈out_dim / n⌉` blocks,
///
/// ```text
/// y = [V_1 x; …; V_k x][..out_dim] + bias,     V_j = 1/(σ√n) · S_j H G_j Π_j H B_j
/// ```
///
/// where `H` is the n×n Walsh–Hadamard matrix (entries ±1, applied by [`crate::hadamard_transform`] in
/// `O(n log n)`), `B_j`, `G_j`, `S_j` are trainable diagonals, and `Π_j` is a fixed random permutation:
/// `(Π_j z)_i = z_{π_j(i)}` ([`AdaptiveFastFood::permutation`]). Nothing n×n is ever formed: forward and backward
/// cost `O(k · n log n)` per row against `O(in · out)` for the dense layer.
///
/// # Initialisation and the choice of σ
///
/// `B_j ∈ {±1}` uniformly, `G_j ~ N(0, I)`, `S_j,ii = s_i / ‖G_j‖` with `s_i ~ χ_n`, the bias `~ U(±1/√in_dim)`
/// (as `candle_nn::linear`), all drawn from `seed`. Write `V = c · S H G Π H B` with `c = 1/(σ√n)`, and
/// `u = G/‖G‖`, uniform on the sphere and independent of `‖G‖` and of `s`. An entry is
///
/// ```text
/// V_lm = c · s_l · Σ_i H_li u_i a_im,     a = Π H B  (|a_im| = 1, columns orthogonal: aᵀa = n·I)
/// ```
///
/// Since `E[u uᵀ] = I/n`: `E[V_lm V_lm'] = c² · E[s_l²] · (aᵀa)_mm' / n = c² · n · δ_mm'` (using `E[s²] = n` for
/// `s ~ χ_n`), i.e. `E[V_lm²] = 1/σ²` and distinct entries of a row are uncorrelated. So for any input,
/// `E[y_l²] = ‖x‖² / σ² + Var(bias)`. `candle_nn::linear` draws `W ~ N(0, 2/in_dim)` (Kaiming normal, ReLU gain),
/// giving `E[y_l²] = 2‖x‖²/in_dim + Var(bias)`. Hence **σ = √(in_dim / 2)**, and the two layers start with the
/// same output variance (checked by the tests). Internally the orthonormal transforms `H/√n` are used (values stay
/// O(1) in f16/bf16): `V = (√n/σ) · S Ĥ G Π Ĥ B`, the factor `√n/σ` folded into the second transform's scale.
///
/// # Parameters
///
/// Trainable: `3·n·k` diagonal entries plus `out_dim` biases. Frozen: none (the permutations are an index
/// buffer). Emulated: `in_dim·out_dim + out_dim` (the dense layer's weight and bias). For
/// `in_dim = out_dim = 4096`: 16 384 trainable against 16 781 312.
///
/// # Checkpoints
///
/// Under the `VarBuilder`'s prefix: the diagonals `"diag_b"`, `"diag_g"`, `"diag_s"` (each `(k, n)`, the
/// layer's dtype), `"bias"` (`(out_dim,)`) and the permutations `"perm"` (`(k, n)`, u32; row `j` is `π_j`). The
/// permutations are stored like candle's other non-float buffers: candle's optimizers skip u32 variables, and so
/// does [`crate::params::CountParams`]. A checkpoint therefore restores the exact layer whatever seed the loading
/// code passes; a stored `"perm"` that is not a permutation of `0..n` is refused. Checkpoints written before
/// the permutations were stored (diagonals named `"b"`, `"g"`, `"s"`, no `"perm"`) still load: the diagonals under
/// their old names, the permutations drawn from the seed, which must then be the seed the checkpoint was trained
/// with.
///
/// # Example
///
/// ```
/// use candle_core::{DType, Device, Module, Tensor};
/// use candle_nn::{VarBuilder, VarMap};
/// use candle_structured::{adaptive_fastfood, CountParams};
/// let vm = VarMap::new();
/// let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
/// let ff = adaptive_fastfood(768, 3072, 42, vb.pp("fc"))?;          // n = 1024, k = 3
/// let y = ff.forward(&Tensor::randn(0f32, 1., (2, 5, 768), &Device::Cpu)?)?;
/// assert_eq!(y.dims(), &[2, 5, 3072]);
/// let c = ff.param_counts().non_embedding;
/// assert_eq!((c.trainable, c.emulated), (3 * 1024 * 3 + 3072, 768 * 3072 + 3072));
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct AdaptiveFastFood {
    in_dim: usize,
    out_dim: usize,
    n: usize,
    k: usize,
    seed: u64,
    sigma: f64,
    b: Tensor,
    g: Tensor,
    s: Tensor,
    bias: Option<Tensor>,
    /// Over the flattened `(k, n)`: position `j·n + i` holds `j·n + π_j(i)`.
    perm: LastDimPermutation,
    /// The `"perm"` variable, `(k, n)` u32, when the `VarBuilder` holds one (see [`Self::check_table`]).
    perm_table: Option<Tensor>,
}

/// An [`AdaptiveFastFood`] `in_dim → out_dim` with a bias; `seed` draws the permutations and the initial values.
pub fn adaptive_fastfood(
    in_dim: usize,
    out_dim: usize,
    seed: u64,
    vb: VarBuilder,
) -> Result<AdaptiveFastFood> {
    AdaptiveFastFood::new(in_dim, out_dim, true, seed, vb)
}

/// An [`AdaptiveFastFood`] `in_dim → out_dim` without bias.
pub fn adaptive_fastfood_no_bias(
    in_dim: usize,
    out_dim: usize,
    seed: u64,
    vb: VarBuilder,
) -> Result<AdaptiveFastFood> {
    AdaptiveFastFood::new(in_dim, out_dim, false, seed, vb)
}

/// The permutations `π_1 … π_k` drawn from `seed` for size `n` (each a permutation of `0..n`).
fn draw_permutations(seed: u64, n: usize, k: usize) -> Vec<Vec<u32>> {
    let mut rng = SeededRng::new(seed, "fastfood.perm");
    (0..k).map(|_| rng.permutation(n)).collect()
}

/// The permutations a checkpoint stores under `"perm"`, checked; `None` when there are none to read: a fresh
/// `VarMap` (it creates the variable filled with zeros, never a permutation when `n > 1`), `VarBuilder::zeros`, or
/// a checkpoint written before the permutations were stored.
fn stored_permutations(vb: &VarBuilder, k: usize, n: usize) -> Result<Option<Vec<Vec<u32>>>> {
    let stored = vb.contains_tensor(PERM);
    let t = match vb.get_with_hints_dtype((k, n), PERM, Init::Const(0.0), DType::U32) {
        Ok(t) => t,
        Err(_) if !stored => return Ok(None),
        Err(e) => {
            return Err(Error::Config(format!(
                "AdaptiveFastFood: the stored permutations \"{PERM}\" do not fit a ({k}, {n}) table: {e}"
            ))
            .into())
        }
    };
    let rows = t.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    if n > 1 && rows.iter().all(|r| r.iter().all(|&v| v == 0)) {
        return Ok(None);
    }
    Ok(Some(rows))
}

/// Registers `perms` as the `"perm"` variable: fills it when the backend created it (a fresh `VarMap`), checks it
/// against what a checkpoint holds, and does nothing for a checkpoint written before the permutations were stored.
/// Returns the table the backend holds, to check in the forward pass that it was not replaced since.
fn register_permutations(vb: &VarBuilder, perms: &[Vec<u32>], n: usize) -> Result<Option<Tensor>> {
    let k = perms.len();
    let t = match vb.get_with_hints_dtype((k, n), PERM, Init::Const(0.0), DType::U32) {
        Ok(t) => t,
        Err(_) if !vb.contains_tensor(PERM) => return Ok(None),
        Err(e) => return Err(e),
    };
    let flat: Vec<u32> = perms.iter().flatten().copied().collect();
    let held = t.to_dtype(DType::U32)?.flatten_all()?.to_vec1::<u32>()?;
    if held == flat {
        return Ok(Some(t));
    }
    if t.dtype() == DType::U32 && held.iter().all(|&v| v == 0) {
        let src =
            Tensor::from_vec(flat, (k, n), &candle_core::Device::Cpu)?.to_device(t.device())?;
        t.slice_set(&src, 0, 0)?;
        return Ok(Some(t));
    }
    Err(Error::Config(format!(
        "AdaptiveFastFood: the VarBuilder holds other permutations (\"{PERM}\") than the ones given"
    ))
    .into())
}

/// Name of the stored permutation table.
const PERM: &str = "perm";

/// For loaders that read variables by name (the training checkpoint): the name a FastFood variable had in
/// checkpoints written before the diagonals were renamed, if it changed.
#[cfg(feature = "train")]
pub(crate) fn former_name(name: &str) -> Option<String> {
    ["diag_b", "diag_g", "diag_s"].iter().find_map(|new| {
        let stem = name.strip_suffix(new)?;
        (stem.is_empty() || stem.ends_with('.')).then(|| format!("{stem}{}", &new[5..]))
    })
}

/// Whether `name` is a FastFood permutation table, which checkpoints written before it was stored lack (the layer
/// then keeps the permutations drawn from its seed).
#[cfg(feature = "train")]
pub(crate) fn is_permutation_table(name: &str) -> bool {
    name == PERM || name.ends_with(".perm")
}

impl AdaptiveFastFood {
    /// See [`adaptive_fastfood`] / [`adaptive_fastfood_no_bias`].
    pub fn new(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        seed: u64,
        vb: VarBuilder,
    ) -> Result<Self> {
        if in_dim == 0 || out_dim == 0 {
            return Err(Error::Config(format!(
                "AdaptiveFastFood: in_dim ({in_dim}) and out_dim ({out_dim}) must be positive"
            ))
            .into());
        }
        let n = in_dim.next_power_of_two();
        crate::fwht::check_len(n).map_err(|_| {
            Error::Config(format!(
                "AdaptiveFastFood: in_dim {in_dim} needs a transform of size {n}, above the largest, 2^{}",
                crate::fwht::MAX_LOG2
            ))
        })?;
        let k = out_dim.div_ceil(n);
        let perms = match stored_permutations(&vb, k, n)? {
            Some(perms) => perms,
            None => draw_permutations(seed, n, k),
        };
        Self::with_permutations(in_dim, out_dim, bias, seed, perms, vb)
    }

    /// Like [`AdaptiveFastFood::new`], with the permutations given explicitly instead of read from the
    /// `VarBuilder` or drawn from `seed` (which still draws the initial diagonals).
    /// `perms` must hold `k = ⌈out_dim / n⌉` permutations of `0..n`, `n` the next power of two ≥ `in_dim`.
    pub fn with_permutations(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        seed: u64,
        perms: Vec<Vec<u32>>,
        vb: VarBuilder,
    ) -> Result<Self> {
        let n = in_dim.next_power_of_two();
        let k = out_dim.div_ceil(n);
        if perms.len() != k {
            return Err(Error::Config(format!(
                "AdaptiveFastFood {in_dim}→{out_dim}: expected {k} permutations, got {}",
                perms.len()
            ))
            .into());
        }
        let mut global = Vec::with_capacity(k * n);
        for (j, p) in perms.iter().enumerate() {
            let mut seen = vec![false; n];
            let ok = p.len() == n
                && p.iter()
                    .all(|&v| (v as usize) < n && !std::mem::replace(&mut seen[v as usize], true));
            if !ok {
                return Err(Error::Config(format!(
                    "AdaptiveFastFood: permutation {j} (row {j} of \"{PERM}\") is not a permutation of 0..{n}"
                ))
                .into());
            }
            global.extend(p.iter().map(|&v| (j * n) as u32 + v));
        }
        if k * n > u32::MAX as usize {
            return Err(
                Error::Config(format!("AdaptiveFastFood: k·n = {} too large", k * n)).into(),
            );
        }
        let perm = LastDimPermutation::new(global, vb.device())?;
        let perm_table = register_permutations(&vb, &perms, n)?;

        // Initial values from the seed: B ∈ {±1}, G ~ N(0,1), S = χ_n / ‖G_j‖.
        let mut rng = SeededRng::new(seed, "fastfood.init");
        let b0: Vec<f64> = (0..k * n).map(|_| rng.sign()).collect();
        let g0: Vec<f64> = (0..k * n).map(|_| rng.normal()).collect();
        let mut s0 = Vec::with_capacity(k * n);
        for j in 0..k {
            let norm = g0[j * n..(j + 1) * n]
                .iter()
                .map(|g| g * g)
                .sum::<f64>()
                .sqrt();
            s0.extend((0..n).map(|_| rng.chi(n) / norm));
        }
        let b = get_or_init_renamed(&vb, (k, n), "diag_b", "b", || b0)?;
        let g = get_or_init_renamed(&vb, (k, n), "diag_g", "g", || g0)?;
        let s = get_or_init_renamed(&vb, (k, n), "diag_s", "s", || s0)?;
        let bias = if bias {
            let b0 = linear_bias(&mut rng, out_dim, in_dim);
            Some(get_or_init(&vb, out_dim, "bias", || b0)?)
        } else {
            None
        };
        Ok(Self {
            in_dim,
            out_dim,
            n,
            k,
            seed,
            sigma: (in_dim as f64 / 2.0).sqrt(),
            b,
            g,
            s,
            bias,
            perm,
            perm_table,
        })
    }

    /// Input size.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }
    /// Output size.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }
    /// Transform size `n`, the next power of two ≥ `in_dim`.
    pub fn n(&self) -> usize {
        self.n
    }
    /// Number of stacked blocks `k = ⌈out_dim / n⌉`.
    pub fn n_blocks(&self) -> usize {
        self.k
    }
    /// The seed the permutations and initial values were drawn from.
    pub fn seed(&self) -> u64 {
        self.seed
    }
    /// `σ = √(in_dim / 2)`; the layer computes `V_j = 1/(σ√n) · S_j H G_j Π_j H B_j`.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }
    /// Trainable diagonal `B`, `(k, n)`.
    pub fn diag_b(&self) -> &Tensor {
        &self.b
    }
    /// Trainable diagonal `G`, `(k, n)`.
    pub fn diag_g(&self) -> &Tensor {
        &self.g
    }
    /// Trainable diagonal `S`, `(k, n)`.
    pub fn diag_s(&self) -> &Tensor {
        &self.s
    }
    /// The bias, `(out_dim,)`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
    /// Permutation `π_j` (`j < k`) as a vector of `0..n`: `(Π_j z)_i = z_{π_j(i)}`.
    pub fn permutation(&self, j: usize) -> Result<Vec<u32>> {
        if j >= self.k {
            return Err(Error::Config(format!(
                "AdaptiveFastFood: permutation {j} requested, the layer has {}",
                self.k
            ))
            .into());
        }
        let base = (j * self.n) as u32;
        Ok(self.perm.as_slice()[j * self.n..(j + 1) * self.n]
            .iter()
            .map(|&v| v - base)
            .collect())
    }
}

impl AdaptiveFastFood {
    /// Refuses to run when the `"perm"` variable no longer holds the permutations the layer was built with: a
    /// `VarMap::load` after the build brings a checkpoint's diagonals but cannot rebuild the permutations, so a
    /// checkpoint with other permutations must be loaded through a `VarBuilder` over the file (or the layer built
    /// again after the load). Checked on the CPU, where the table is read in place; on other devices the check
    /// would cost a device-to-host copy per call and is left out.
    fn check_table(&self) -> Result<()> {
        let Some(t) = &self.perm_table else {
            return Ok(());
        };
        if !t.device().is_cpu() || t.dtype() != DType::U32 {
            return Ok(());
        }
        let (storage, layout) = t.storage_and_layout();
        let (candle_core::Storage::Cpu(candle_core::CpuStorage::U32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        else {
            return Ok(());
        };
        let n = self.n as u32;
        let same = v[a..b]
            .iter()
            .zip(self.perm.as_slice())
            .enumerate()
            .all(|(i, (&stored, &global))| stored + (i as u32 / n) * n == global);
        if same {
            Ok(())
        } else {
            Err(Error::Config(
                "AdaptiveFastFood: the \"perm\" variable changed after the layer was built (a VarMap::load of a \
                 checkpoint with other permutations?); build the layer from a VarBuilder over the checkpoint, or \
                 again after the load"
                    .into(),
            )
            .into())
        }
    }
}

impl Module for AdaptiveFastFood {
    /// `(…, in_dim) → (…, out_dim)`, any leading dimensions.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dims = xs.dims();
        let Some((&last, lead)) = dims.split_last() else {
            return Err(Error::Config("AdaptiveFastFood: scalar input".into()).into());
        };
        if last != self.in_dim {
            return Err(Error::Config(format!(
                "AdaptiveFastFood: input has last dimension {last}, expected {}",
                self.in_dim
            ))
            .into());
        }
        crate::ops::check_dtype("AdaptiveFastFood", xs, &self.b)?;
        self.check_table()?;
        let (n, k) = (self.n, self.k);
        let fused = crate::ops::fastfood(
            xs,
            [&self.b, &self.g, &self.s],
            self.bias.as_ref(),
            (self.in_dim, self.out_dim, n, k),
            (1.0 / (n as f64).sqrt(), 1.0 / self.sigma),
            self.perm.shared(),
        )?;
        if let Some(y) = fused {
            return Ok(y);
        }
        // Shapes: (…, n) when k = 1, (…, k, n) otherwise; no reshape of the activations until the end (in
        // candle's backward every node costs a pass over its gradient).
        // Parameters follow the activation's dtype (mixed precision; see `ops::follow_dtype`).
        let diag = |t: &Tensor| {
            let t = crate::ops::follow_dtype(t, xs)?;
            if k == 1 {
                t.squeeze(0)
            } else {
                Ok(t)
            }
        };
        let mut x = if n > self.in_dim {
            xs.pad_with_zeros(D::Minus1, 0, n - self.in_dim)?
        } else {
            xs.clone()
        };
        if k > 1 {
            x = x.unsqueeze(D::Minus2)?;
        }
        let z = x.broadcast_mul(&diag(&self.b)?)?;
        let z = crate::hadamard_transform(&z, 1.0 / (n as f64).sqrt())?;
        let z = self.perm.apply(&z)?;
        let z = z.broadcast_mul(&diag(&self.g)?)?;
        let z = crate::hadamard_transform(&z, 1.0 / self.sigma)?;
        let mut y = z.broadcast_mul(&diag(&self.s)?)?;
        if k > 1 {
            let mut flat = lead.to_vec();
            flat.push(k * n);
            y = y.reshape(flat)?;
        }
        if k * n > self.out_dim {
            y = y.narrow(D::Minus1, 0, self.out_dim)?;
        }
        match &self.bias {
            Some(bias) => y.broadcast_add(&crate::ops::follow_dtype(bias, xs)?),
            None => Ok(y),
        }
    }
}

impl CountParams for AdaptiveFastFood {
    fn param_counts(&self) -> ParamCounts {
        let bias = self.bias.as_ref().map_or(0, |_| self.out_dim);
        let emulated = self.in_dim * self.out_dim + bias;
        ParamCounts::non_embedding(ParamCount::structured(3 * self.n * self.k + bias, emulated))
    }
}
