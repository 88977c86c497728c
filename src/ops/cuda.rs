//! CUDA launch of the training-op kernels in `cuda/ops.cu`: the `cuda_fwd` bodies of the fused ops (LayerNorm,
//! GELU, dropout, rotary embedding, the causal attention softmax, cross-entropy), forward and backward, for
//! f32, f16 and bf16 (arithmetic in f32).
//!
//! Built to PTX by `build.rs` with the `cuda` feature and loaded once per device, as the Walsh–Hadamard kernels.
//! The kernels loop over their work with grid strides, so the grids below are a speed choice only; the emulated
//! tests (`cuda/emu/ops_check.cpp`) run every kernel with these shapes and with a small odd grid. Inputs in a
//! strided layout are first copied to a contiguous buffer with candle's strided copy.

use crate::error::Error;
use candle_core::backend::BackendStorage;
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result};
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
};
use half::{bf16, f16};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/ops.ptx"));
const MODULE: &str = "candle_structured_ops";

/// Threads per block of every kernel here (a multiple of 32: the kernels reduce over warps).
const BLOCK: u32 = 256;
/// Most blocks per launch; the grid-stride loops take the rest.
const MAX_GRID: usize = 1 << 16;
/// Rows per work item of the LayerNorm backward (each item writes one row of partial `dw`, `db` sums).
/// `cuda/emu/ops_check.cpp` uses the same value.
const LN_ROWS_PER_ITEM: usize = 32;
/// Shared memory of the block-wide (max, sum of exp) reduction in the cross-entropy kernels: 66 floats.
const LSE_SMEM: u32 = 66 * 4;

/// Element types with kernels (`<op>_<NAME>`).
trait Elem: CudaDType + DeviceRepr + ValidAsZeroBits + 'static {
    const NAME: &'static str;
}
impl Elem for f32 {
    const NAME: &'static str = "f32";
}
impl Elem for f16 {
    const NAME: &'static str = "f16";
}
impl Elem for bf16 {
    const NAME: &'static str = "bf16";
}

/// Calls `$f::<T>($args)` for the storage's dtype `T` among f32, f16, bf16.
macro_rules! by_dtype {
    ($dtype:expr, $f:ident($($arg:expr),* $(,)?)) => {
        match $dtype {
            DType::F32 => $f::<f32>($($arg),*),
            DType::F16 => $f::<f16>($($arg),*),
            DType::BF16 => $f::<bf16>($($arg),*),
            other => Err(Error::UnsupportedDType(other).into()),
        }
    };
}

fn driver_err(e: cudarc::driver::DriverError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn func(dev: &CudaDevice, op: &str, ty: &str) -> Result<CudaFunction> {
    Ok(dev
        .get_or_load_custom_func(&format!("{op}_{ty}"), MODULE, PTX)?
        .into_cuda_function())
}

/// A launch of `blocks` blocks (clamped to `1..=MAX_GRID`) of [`BLOCK`] threads.
fn grid(blocks: usize, smem: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks.clamp(1, MAX_GRID) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: smem,
    }
}

/// One warp per row.
fn per_row(rows: usize) -> LaunchConfig {
    grid(rows.div_ceil(BLOCK as usize / 32), 0)
}

/// One thread per element.
fn per_elem(n: usize) -> LaunchConfig {
    grid(n.div_ceil(BLOCK as usize), 0)
}

/// A row length as the kernels' `int`.
fn int(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n)
        .map_err(|_| Error::Config(format!("{what} {n} exceeds the CUDA kernels' range")).into())
}

/// The elements of `s` under `l`, contiguous: in place when the layout is, else a copy held in `hold`.
fn view<'a, T: CudaDType + DeviceRepr>(
    s: &'a CudaStorage,
    l: &Layout,
    hold: &'a mut Option<CudaStorage>,
) -> Result<CudaView<'a, T>> {
    if let Some((a, b)) = l.contiguous_offsets() {
        return Ok(s.as_cuda_slice::<T>()?.slice(a..b));
    }
    let dev = s.device().clone();
    // SAFETY: fully written by the strided copy.
    let buf = unsafe { dev.alloc::<T>(l.shape().elem_count())? };
    let mut tmp = CudaStorage::wrap_cuda_slice(buf, dev);
    s.copy_strided_src(&mut tmp, 0, l)?;
    *hold = Some(tmp);
    let held: &'a Option<CudaStorage> = hold;
    Ok(held
        .as_ref()
        .expect("set just above")
        .as_cuda_slice::<T>()?
        .slice(..))
}

/// A fresh output of `n` elements.
fn alloc<T: Elem>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every kernel below writes each element of its output.
    Ok(unsafe { dev.alloc::<T>(n)? })
}

/// The launch of a builder, with the safety argument shared by every kernel here.
macro_rules! launch {
    ($builder:expr, $cfg:expr) => {
        // SAFETY: the argument lists match the kernel signatures in cuda/ops.cu (OPS_ENTRY_POINTS); every
        // buffer holds the elements the kernel indexes (rows · d, n, …), checked by the callers' shapes.
        unsafe { $builder.launch($cfg) }.map_err(driver_err)?
    };
}

/// Dropout threshold on the 32-bit hash (as the CPU ops) and the keep scale `1 / (1 - p)`.
fn dropout_params(p: f32) -> (u32, f32) {
    let threshold = (p as f64 * 4_294_967_296.0).min(4_294_967_295.0) as u32;
    (threshold, (1.0 / (1.0 - p as f64)) as f32)
}

type In<'a> = (&'a CudaStorage, &'a Layout);

// ---- LayerNorm ----------------------------------------------------------------------------------------------

/// `y = (x - mean) · rstd · w + b` over the rows `(rows, d)` of `x`.
pub(super) fn layer_norm(x: In, w: In, b: In, eps: f64) -> Result<CudaStorage> {
    by_dtype!(x.0.dtype(), layer_norm_t(x, w, b, eps))
}

fn layer_norm_t<T: Elem>(x: In, w: In, b: In, eps: f64) -> Result<CudaStorage> {
    let (rows, d) = x.1.shape().dims2()?;
    let dev = x.0.device().clone();
    let mut y = alloc::<T>(&dev, rows * d)?;
    if rows * d > 0 {
        let (mut h1, mut h2, mut h3) = (None, None, None);
        let (xv, wv, bv) = (
            view::<T>(x.0, x.1, &mut h1)?,
            view::<T>(w.0, w.1, &mut h2)?,
            view::<T>(b.0, b.1, &mut h3)?,
        );
        let f = func(&dev, "layer_norm_fwd", T::NAME)?;
        let (rows_i, d_i, eps_f) = (rows as i64, int(d, "layer_norm: width")?, eps as f32);
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv)
            .arg(&wv)
            .arg(&bv)
            .arg(&mut y)
            .arg(&rows_i)
            .arg(&d_i)
            .arg(&eps_f);
        launch!(lb, per_row(rows));
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// The LayerNorm backward from `(x, w, grad_y)`: `(rows + 2, d)` packing `dx`, then `dw`, then `db` (the CPU
/// op's layout).
pub(super) fn layer_norm_bwd(x: In, w: In, g: In, eps: f64) -> Result<CudaStorage> {
    by_dtype!(x.0.dtype(), layer_norm_bwd_t(x, w, g, eps))
}

fn layer_norm_bwd_t<T: Elem>(x: In, w: In, g: In, eps: f64) -> Result<CudaStorage> {
    let (rows, d) = x.1.shape().dims2()?;
    let dev = x.0.device().clone();
    let stream = dev.cuda_stream();
    if rows == 0 || d == 0 {
        // no rows: dw = db = 0
        let zeros = stream
            .alloc_zeros::<T>((rows + 2) * d)
            .map_err(driver_err)?;
        return Ok(CudaStorage::wrap_cuda_slice(zeros, dev));
    }
    let mut packed = alloc::<T>(&dev, (rows + 2) * d)?;
    let items = rows.div_ceil(LN_ROWS_PER_ITEM);
    let d_i = int(2 * d, "layer_norm: width")? / 2;
    {
        let (mut h1, mut h2, mut h3) = (None, None, None);
        let (xv, wv, gv) = (
            view::<T>(x.0, x.1, &mut h1)?,
            view::<T>(w.0, w.1, &mut h2)?,
            view::<T>(g.0, g.1, &mut h3)?,
        );
        // SAFETY: each item's row of partial sums is written by the backward kernel before the column sum.
        let mut partial = unsafe { dev.alloc::<f32>(items * 2 * d)? };
        let f = func(&dev, "layer_norm_bwd", T::NAME)?;
        let (rows_i, eps_f, rpb) = (rows as i64, eps as f32, LN_ROWS_PER_ITEM as i32);
        let mut dx = packed.slice_mut(..rows * d);
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv)
            .arg(&wv)
            .arg(&gv)
            .arg(&mut dx)
            .arg(&mut partial)
            .arg(&rows_i)
            .arg(&d_i)
            .arg(&eps_f)
            .arg(&rpb);
        launch!(lb, grid(items, 2 * LN_ROWS_PER_ITEM as u32 * 4));
        let f = func(&dev, "column_sum", T::NAME)?;
        let (items_i, width) = (int(items, "layer_norm: rows")?, 2 * d_i);
        let mut sums = packed.slice_mut(rows * d..);
        let mut lb = stream.launch_builder(&f);
        lb.arg(&partial).arg(&mut sums).arg(&items_i).arg(&width);
        launch!(lb, per_elem(2 * d));
    }
    Ok(CudaStorage::wrap_cuda_slice(packed, dev))
}

// ---- GELU ---------------------------------------------------------------------------------------------------

/// Exact GELU, element-wise.
pub(super) fn gelu(x: In) -> Result<CudaStorage> {
    by_dtype!(x.0.dtype(), gelu_t(x))
}

fn gelu_t<T: Elem>(x: In) -> Result<CudaStorage> {
    let n = x.1.shape().elem_count();
    let dev = x.0.device().clone();
    let mut y = alloc::<T>(&dev, n)?;
    if n > 0 {
        let mut h = None;
        let xv = view::<T>(x.0, x.1, &mut h)?;
        let f = func(&dev, "gelu_fwd", T::NAME)?;
        let n_i = n as i64;
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv).arg(&mut y).arg(&n_i);
        launch!(lb, per_elem(n));
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

/// `grad · GELU'(x)`, element-wise.
pub(super) fn gelu_bwd(x: In, g: In) -> Result<CudaStorage> {
    by_dtype!(x.0.dtype(), gelu_bwd_t(x, g))
}

fn gelu_bwd_t<T: Elem>(x: In, g: In) -> Result<CudaStorage> {
    let n = x.1.shape().elem_count();
    let dev = x.0.device().clone();
    let mut dx = alloc::<T>(&dev, n)?;
    if n > 0 {
        let (mut h1, mut h2) = (None, None);
        let (xv, gv) = (view::<T>(x.0, x.1, &mut h1)?, view::<T>(g.0, g.1, &mut h2)?);
        let f = func(&dev, "gelu_bwd", T::NAME)?;
        let n_i = n as i64;
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv).arg(&gv).arg(&mut dx).arg(&n_i);
        launch!(lb, per_elem(n));
    }
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}

// ---- dropout ------------------------------------------------------------------------------------------------

/// `keep ⊙ x` (plus `residual`), the mask of the CPU op for the same seed.
pub(super) fn dropout(x: In, residual: Option<In>, p: f32, seed: u64) -> Result<CudaStorage> {
    by_dtype!(x.0.dtype(), dropout_t(x, residual, p, seed))
}

fn dropout_t<T: Elem>(x: In, residual: Option<In>, p: f32, seed: u64) -> Result<CudaStorage> {
    let n = x.1.shape().elem_count();
    let dev = x.0.device().clone();
    let mut y = alloc::<T>(&dev, n)?;
    if n > 0 {
        let (mut h1, mut h2) = (None, None);
        let xv = view::<T>(x.0, x.1, &mut h1)?;
        let f = func(&dev, "dropout", T::NAME)?;
        let (n_i, (threshold, scale)) = (n as i64, dropout_params(p));
        let stream = dev.cuda_stream();
        let rv;
        let null = 0u64;
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv);
        match residual {
            Some(r) => {
                rv = view::<T>(r.0, r.1, &mut h2)?;
                lb.arg(&rv);
            }
            // a null pointer: the kernel adds no residual
            None => {
                lb.arg(&null);
            }
        }
        lb.arg(&mut y)
            .arg(&n_i)
            .arg(&seed)
            .arg(&threshold)
            .arg(&scale);
        launch!(lb, per_elem(n));
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

// ---- rotary -------------------------------------------------------------------------------------------------

/// Rotate-half rotary embedding of `x` `(b, h, t, hd)` by `cos`, `sin` `(t, hd/2)`; by `-θ` with `inverse`.
pub(super) fn rotary(x: In, cos: In, sin: In, inverse: bool) -> Result<CudaStorage> {
    by_dtype!(x.0.dtype(), rotary_t(x, cos, sin, inverse))
}

fn rotary_t<T: Elem>(x: In, cos: In, sin: In, inverse: bool) -> Result<CudaStorage> {
    let (b, h, t, hd) = x.1.shape().dims4()?;
    let dev = x.0.device().clone();
    let n = b * h * t * hd;
    let mut y = alloc::<T>(&dev, n)?;
    if n > 0 {
        let (mut h1, mut h2, mut h3) = (None, None, None);
        let (xv, cv, sv) = (
            view::<T>(x.0, x.1, &mut h1)?,
            view::<T>(cos.0, cos.1, &mut h2)?,
            view::<T>(sin.0, sin.1, &mut h3)?,
        );
        let f = func(&dev, "rotary", T::NAME)?;
        let rows_i = (b * h * t) as i64;
        let (t_i, half_i) = (
            int(t, "rotary: sequence")?,
            int(hd / 2, "rotary: head dim")?,
        );
        let sgn: f32 = if inverse { -1.0 } else { 1.0 };
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv)
            .arg(&cv)
            .arg(&sv)
            .arg(&mut y)
            .arg(&rows_i)
            .arg(&t_i)
            .arg(&half_i)
            .arg(&sgn);
        launch!(lb, per_elem(n / 2));
    }
    Ok(CudaStorage::wrap_cuda_slice(y, dev))
}

// ---- causal attention softmax -------------------------------------------------------------------------------

/// The dropped-out causal softmax of raw scores `(…, t, t)`; see `attn_softmax` in `src/ops/attn_softmax.rs`.
pub(super) fn attn_softmax(s: In, scale: f64, p: f32, seed: u64) -> Result<CudaStorage> {
    by_dtype!(s.0.dtype(), attn_softmax_t(s, None, scale, p, seed))
}

/// Its backward: the gradient of the raw scores from the scores and the output's gradient.
pub(super) fn attn_softmax_bwd(s: In, g: In, scale: f64, p: f32, seed: u64) -> Result<CudaStorage> {
    by_dtype!(s.0.dtype(), attn_softmax_t(s, Some(g), scale, p, seed))
}

fn attn_softmax_t<T: Elem>(
    s: In,
    grad: Option<In>,
    scale: f64,
    p: f32,
    seed: u64,
) -> Result<CudaStorage> {
    let dims = s.1.dims();
    let t = dims.last().copied().unwrap_or(1);
    let n = s.1.shape().elem_count();
    let dev = s.0.device().clone();
    let mut out = alloc::<T>(&dev, n)?;
    if n > 0 {
        let rows = n / t;
        let (mut h1, mut h2) = (None, None);
        let sv = view::<T>(s.0, s.1, &mut h1)?;
        let (rows_i, t_i, scale_f) = (rows as i64, int(t, "attention: sequence")?, scale as f32);
        let (threshold, keep_scale) = dropout_params(p);
        let stream = dev.cuda_stream();
        let gv;
        let f;
        let mut lb = match grad {
            None => {
                f = func(&dev, "attn_softmax_fwd", T::NAME)?;
                let mut lb = stream.launch_builder(&f);
                lb.arg(&sv);
                lb
            }
            Some(g) => {
                gv = view::<T>(g.0, g.1, &mut h2)?;
                f = func(&dev, "attn_softmax_bwd", T::NAME)?;
                let mut lb = stream.launch_builder(&f);
                lb.arg(&sv).arg(&gv);
                lb
            }
        };
        lb.arg(&mut out)
            .arg(&rows_i)
            .arg(&t_i)
            .arg(&scale_f)
            .arg(&seed)
            .arg(&threshold)
            .arg(&keep_scale);
        launch!(lb, per_row(rows));
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

// ---- cross-entropy ------------------------------------------------------------------------------------------

/// Mean cross-entropy of logits `(rows, vocab)` against u32 targets `(rows,)`, as an f32 scalar (NaN where a
/// target is out of range).
pub(super) fn cross_entropy(logits: In, targets: In) -> Result<CudaStorage> {
    by_dtype!(logits.0.dtype(), cross_entropy_t(logits, targets))
}

fn cross_entropy_t<T: Elem>(logits: In, targets: In) -> Result<CudaStorage> {
    let (rows, vocab) = logits.1.shape().dims2()?;
    let dev = logits.0.device().clone();
    let stream = dev.cuda_stream();
    let mut loss = alloc::<f32>(&dev, 1)?;
    let (mut h1, mut h2) = (None, None);
    let xv = view::<T>(logits.0, logits.1, &mut h1)?;
    let tv = view::<u32>(targets.0, targets.1, &mut h2)?;
    let mut per_row = alloc::<f32>(&dev, rows.max(1))?;
    let (rows_i, vocab_i) = (rows as i64, int(vocab, "cross_entropy: vocabulary")?);
    if rows > 0 {
        let f = func(&dev, "xent_fwd", T::NAME)?;
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv)
            .arg(&tv)
            .arg(&mut per_row)
            .arg(&rows_i)
            .arg(&vocab_i);
        launch!(lb, grid(rows, LSE_SMEM));
    }
    let f = func(&dev, "sum_scaled", "f32")?;
    let inv = 1.0f32 / rows as f32;
    let mut lb = stream.launch_builder(&f);
    lb.arg(&per_row).arg(&mut loss).arg(&rows_i).arg(&inv);
    launch!(lb, grid(1, 32 * 8));
    Ok(CudaStorage::wrap_cuda_slice(loss, dev))
}

/// `d logits = (softmax - onehot) · grad / rows`, with the scalar `grad` (f32) read on the device.
pub(super) fn cross_entropy_bwd(logits: In, targets: In, grad: In) -> Result<CudaStorage> {
    by_dtype!(logits.0.dtype(), cross_entropy_bwd_t(logits, targets, grad))
}

fn cross_entropy_bwd_t<T: Elem>(logits: In, targets: In, grad: In) -> Result<CudaStorage> {
    let (rows, vocab) = logits.1.shape().dims2()?;
    let dev = logits.0.device().clone();
    let mut dx = alloc::<T>(&dev, rows * vocab)?;
    if rows * vocab > 0 {
        let (mut h1, mut h2, mut h3) = (None, None, None);
        let xv = view::<T>(logits.0, logits.1, &mut h1)?;
        let tv = view::<u32>(targets.0, targets.1, &mut h2)?;
        let gv = view::<f32>(grad.0, grad.1, &mut h3)?;
        let f = func(&dev, "xent_bwd", T::NAME)?;
        let (rows_i, vocab_i) = (rows as i64, int(vocab, "cross_entropy: vocabulary")?);
        let inv = 1.0f32 / rows as f32;
        let stream = dev.cuda_stream();
        let mut lb = stream.launch_builder(&f);
        lb.arg(&xv)
            .arg(&tv)
            .arg(&gv)
            .arg(&mut dx)
            .arg(&rows_i)
            .arg(&vocab_i)
            .arg(&inv);
        launch!(lb, grid(rows, LSE_SMEM));
    }
    Ok(CudaStorage::wrap_cuda_slice(dx, dev))
}
