//! CUDA launch of the Walsh-Hadamard kernels in `cuda/fwht.cu`.
//!
//! The kernels are compiled to PTX by `build.rs` (nvcc, only with the `cuda` feature), embedded here with
//! `include_str!`, and loaded once per device through candle's `CudaDevice::get_or_load_custom_func`; the
//! launches go on the device's stream through cudarc, so they order with every other candle op.
//!
//! * n ≤ 2^15 (2^14 for f64): one pass, one kernel launch (`fwht_<dtype>_<log2 n>`).
//! * larger n (up to 2^24): n = n_hi · n_lo; per group of rows whose f32/f64 scratch fits in L2, a row pass over
//!   the sub-rows of length n_lo (`fwht_<dtype>_acc_<log2 n_lo>`) then a column pass of length n_hi
//!   (`fwht_cols_<dtype>_<log2 n_hi>`) that applies the scale and writes the output dtype.
//! * opt-in ([`set_cuda_kernels`], not yet timed on a GPU): one-pass rows of 2^10 … 2^15 with fewer warp
//!   shuffles (`fwht_<dtype>_x_<log2 n>`), and n = 2^13 … 2^20 in one persistent kernel (`fwht_fused_<dtype>_<A>`,
//!   n = 2^12 · 2^A) that runs both passes as work items and keeps the intermediate in a ring of a few rows,
//!   small enough for L2. Checked in emulation (`tests/cuda_emulated.rs`); not yet timed on a GPU, so the
//!   measured two-kernel path stays the default.
//! * Input rows at a constant stride with contiguous elements (any leading shape that collapses to one row
//!   stride, broadcast rows included) are read in place; other layouts are first copied to a contiguous buffer
//!   with candle's own strided copy.

use super::check_len;
use super::cuda_geometry::{
    col_cfg, one_pass_max, persistent_smem, plan, row_cfg, row_stride, split, PERSISTENT_LOG2,
    TRANSPOSED_LOG2,
};
use crate::error::Error;
use crate::gpu::EnvSetting;
use candle_core::backend::BackendStorage;
use candle_core::cuda::{CudaDType, CudaDevice, CudaStorage};
use candle_core::{DType, Layout, Result};
use cudarc::driver::sys::CUfunction_attribute;
use cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, CudaViewMut, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg,
};
use half::{bf16, f16};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fwht.ptx"));
const MODULE: &str = "candle_structured_fwht";

/// Scratch per group of rows in the multi-pass transform (f32, or f64 for f64).
/// 128 MiB measured best on an H100 among 4…256 MiB (docs/gpu-notes.md): larger groups mean fewer, fuller
/// launches. Tuning knob for measurements: the environment variable `CANDLE_STRUCTURED_FWHT_SCRATCH_MIB`.
fn group_scratch_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| env_mib("CANDLE_STRUCTURED_FWHT_SCRATCH_MIB", 128))
}

/// Bytes given in MiB by the environment variable `var` (a positive integer), else `default_mib` MiB.
fn env_mib(var: &str, default_mib: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&m| m > 0)
        .unwrap_or(default_mib)
        << 20
}

/// Opt-in CUDA kernel variants. Both pass the same checks as the default kernels (bit for bit against the CPU
/// op, in emulation on the CPU: `tests/cuda_emulated.rs`) but have not been timed on a GPU yet, so the measured
/// kernels stay the default; `gpu_check` checks and times each variant beside the default. They are built only
/// with the `cuda-untested` feature; without it the choice is ignored and the default kernels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaKernels {
    /// One-pass rows of 2^10 … 2^15 (f32, f16, bf16) with the "transposed exchange" kernels
    /// (`fwht_<dtype>_x_<log2 n>`): 32 values per thread, and the trip through shared memory also does the top
    /// lane bits, so that 2^10 … 2^15 need 0 … 5 rounds of warp shuffles instead of 5, for the same
    /// shared-memory traffic. Environment: `CANDLE_STRUCTURED_FWHT_TRANSPOSED=1`.
    pub transposed: bool,
    /// `Some(k)`: rows of 2^k ≤ n ≤ 2^20 (k ≥ 13) through the persistent multi-pass kernel, which runs both
    /// passes as work items of one kernel and keeps the intermediate in a ring of a few rows small enough for
    /// L2. Environment: `CANDLE_STRUCTURED_FWHT_PERSISTENT_FROM=k`.
    pub persistent_from: Option<u32>,
}

static TRANSPOSED: EnvSetting = EnvSetting::flag("CANDLE_STRUCTURED_FWHT_TRANSPOSED");
static PERSISTENT_FROM: EnvSetting =
    EnvSetting::new("CANDLE_STRUCTURED_FWHT_PERSISTENT_FROM", |s| {
        s.parse::<u32>().map_or(NEVER, |k| k.max(13))
    });
const NEVER: u32 = u32::MAX;

/// Chooses the CUDA kernel variants for every later transform (process-wide).
pub fn set_cuda_kernels(k: CudaKernels) {
    TRANSPOSED.set(k.transposed as u32);
    PERSISTENT_FROM.set(k.persistent_from.map_or(NEVER, |k| k.max(13)));
}

/// The current choice of [`set_cuda_kernels`], after the environment variables where nothing was set.
pub fn cuda_kernels() -> CudaKernels {
    if !cfg!(feature = "cuda-untested") {
        // not built: see the `cuda-untested` feature
        return CudaKernels::default();
    }
    let from = PERSISTENT_FROM.get();
    CudaKernels {
        transposed: TRANSPOSED.get() == 1,
        persistent_from: (from != NEVER).then_some(from),
    }
}

/// Bytes of the persistent kernel's ring at most (`CANDLE_STRUCTURED_FWHT_RING_MIB`, default 24 MiB: half of
/// an H100's L2, so that the intermediate rows are read back from L2).
fn ring_bytes_max() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| env_mib("CANDLE_STRUCTURED_FWHT_RING_MIB", 24))
}

/// Element types with kernels, and the type their arithmetic runs in.
trait Elem: CudaDType + DeviceRepr + 'static {
    const NAME: &'static str;
    type Acc: CudaDType + DeviceRepr + Copy + 'static;
    fn acc(scale: f64) -> Self::Acc;
}

macro_rules! elem {
    ($t:ty, $name:literal, $acc:ty) => {
        impl Elem for $t {
            const NAME: &'static str = $name;
            type Acc = $acc;
            #[allow(clippy::unnecessary_cast)]
            fn acc(scale: f64) -> $acc {
                scale as $acc
            }
        }
    };
}
elem!(f32, "f32", f32);
elem!(f16, "f16", f32);
elem!(bf16, "bf16", f32);
elem!(f64, "f64", f64);

fn driver_err(e: cudarc::driver::DriverError) -> candle_core::Error {
    candle_core::Error::wrap(e)
}

fn load(dev: &CudaDevice, name: &str, smem: u32) -> Result<CudaFunction> {
    let func = dev
        .get_or_load_custom_func(name, MODULE, PTX)?
        .into_cuda_function();
    if smem > 48 * 1024 {
        func.set_attribute(
            CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .map_err(driver_err)?;
    }
    Ok(func)
}

fn grid(blocks: usize) -> Result<u32> {
    u32::try_from(blocks)
        .ok()
        .filter(|&b| b < (1 << 31))
        .ok_or_else(|| {
            Error::Config(format!(
                "hadamard_transform: {blocks} thread blocks exceed CUDA's grid limit"
            ))
            .into()
        })
}

/// Launches the one-pass row kernel `name` (input `I`, output `O`, arithmetic `A`; `transposed`: one of the
/// `fwht_<dtype>_x_<log2 n>` kernels).
#[allow(clippy::too_many_arguments)]
fn launch_rows<I, O, A: DeviceRepr>(
    dev: &CudaDevice,
    name: &str,
    log_n: u32,
    transposed: bool,
    input: &CudaView<'_, I>,
    output: &mut CudaViewMut<'_, O>,
    rows: usize,
    sub_log: u32,
    in_stride: usize,
    out_stride: usize,
    scale: A,
    vec_in: bool,
    vec_out: bool,
) -> Result<()> {
    let cfg = row_cfg(
        log_n,
        std::mem::size_of::<A>() as u32,
        std::mem::size_of::<I>() as u32,
        transposed,
    );
    let func = load(dev, name, cfg.smem)?;
    let launch = LaunchConfig {
        grid_dim: (grid(rows.div_ceil(cfg.rows_per_block as usize))?, 1, 1),
        block_dim: (cfg.block, 1, 1),
        shared_mem_bytes: cfg.smem,
    };
    let (rows, sub_log) = (rows as i64, sub_log as i32);
    let (in_stride, out_stride) = (in_stride as i64, out_stride as i64);
    let (vec_in, vec_out) = (vec_in as i32, vec_out as i32);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(input)
        .arg(output)
        .arg(&rows)
        .arg(&sub_log)
        .arg(&in_stride)
        .arg(&out_stride)
        .arg(&scale)
        .arg(&vec_in)
        .arg(&vec_out);
    // SAFETY: the argument list matches the kernel's signature in cuda/fwht.cu; every (sub-)row read or written
    // lies inside `input`/`output` by construction of `rows`, the strides and the offsets.
    unsafe { b.launch(launch) }.map_err(driver_err)?;
    Ok(())
}

/// The op's CUDA forward: a fresh contiguous output holding `scale · x · H_n` for every row of `storage`
/// viewed through `layout`.
pub(super) fn forward(storage: &CudaStorage, layout: &Layout, scale: f64) -> Result<CudaStorage> {
    match storage.dtype() {
        DType::F32 => run::<f32>(storage, layout, scale),
        DType::F16 => run::<f16>(storage, layout, scale),
        DType::BF16 => run::<bf16>(storage, layout, scale),
        DType::F64 => run::<f64>(storage, layout, scale),
        other => Err(Error::UnsupportedDType(other).into()),
    }
}

fn run<T: Elem>(storage: &CudaStorage, layout: &Layout, scale: f64) -> Result<CudaStorage> {
    let dev = storage.device().clone();
    let n = layout.dims().last().copied().unwrap_or(1);
    let log_n = check_len(n)?;
    let numel = layout.shape().elem_count();
    let esz = std::mem::size_of::<T>();
    let acc_bytes = std::mem::size_of::<T::Acc>() as u32;
    let mut out: CudaSlice<T> = unsafe { dev.alloc::<T>(numel)? };
    if numel == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }
    let rows = numel / n;
    let scale_acc = T::acc(scale);

    // Input rows: read in place at a constant row stride, or from a contiguous copy.
    let copy;
    let (src, start, in_stride): (&CudaSlice<T>, usize, usize) = match row_stride(layout) {
        Some(s) => (storage.as_cuda_slice::<T>()?, layout.start_offset(), s),
        None => {
            // SAFETY: fully written by the strided copy below.
            let buf = unsafe { dev.alloc::<T>(numel)? };
            let mut tmp = CudaStorage::wrap_cuda_slice(buf, dev.clone());
            storage.copy_strided_src(&mut tmp, 0, layout)?;
            copy = tmp;
            (copy.as_cuda_slice::<T>()?, 0, n)
        }
    };
    let stream = dev.cuda_stream();
    let base = {
        let (ptr, _sync) = src.device_ptr(&stream);
        ptr as usize
    };
    let stride_ok = rows == 1 || (in_stride * esz).is_multiple_of(16);
    let vec_in = |first_row: usize| {
        (base + (start + first_row * in_stride) * esz).is_multiple_of(16) && stride_ok
    };

    // n = 1, 2, 4 over contiguous rows: 8 values (several rows) per thread.
    if log_n < 3 && (rows == 1 || in_stride == n) && numel.is_multiple_of(8) {
        launch_rows::<T, T, T::Acc>(
            &dev,
            &format!("fwht_{}_pack_{log_n}", T::NAME),
            3,
            false,
            &src.slice(start..),
            &mut out.slice_mut(..),
            numel / 8,
            0,
            8,
            8,
            scale_acc,
            (base + start * esz).is_multiple_of(16),
            true,
        )?;
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }
    let variants = cuda_kernels();
    if PERSISTENT_LOG2.contains(&log_n) && variants.persistent_from.is_some_and(|k| log_n >= k) {
        persistent::<T>(
            &dev,
            src,
            start,
            in_stride,
            &mut out,
            rows,
            log_n,
            scale_acc,
            vec_in(0),
        )?;
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }
    if log_n <= one_pass_max(acc_bytes) {
        // the transposed variant exists for f32 arithmetic only
        let transposed = variants.transposed && acc_bytes == 4 && TRANSPOSED_LOG2.contains(&log_n);
        let name = if transposed {
            format!("fwht_{}_x_{log_n}", T::NAME)
        } else {
            format!("fwht_{}_{log_n}", T::NAME)
        };
        launch_rows(
            &dev,
            &name,
            log_n,
            transposed,
            &src.slice(start..),
            &mut out.slice_mut(..),
            rows,
            0,
            in_stride,
            n,
            scale_acc,
            vec_in(0),
            true,
        )?;
        return Ok(CudaStorage::wrap_cuda_slice(out, dev));
    }

    let (log_lo, log_hi) = split(log_n, acc_bytes);
    let n_lo = 1usize << log_lo;
    let group = (group_scratch_bytes() / (n * acc_bytes as usize)).clamp(1, rows);
    // SAFETY: each group's scratch is fully written by the row pass before the column pass reads it.
    let mut scratch: CudaSlice<T::Acc> = unsafe { dev.alloc::<T::Acc>(group * n)? };
    let row_kernel = format!("fwht_{}_acc_{log_lo}", T::NAME);
    let col_kernel = format!("fwht_cols_{}_{log_hi}", T::NAME);
    let (nc, col_block, col_smem) = col_cfg(log_hi, acc_bytes);
    let col_func = load(&dev, &col_kernel, col_smem)?;
    let mut first = 0;
    while first < rows {
        let g = group.min(rows - first);
        launch_rows(
            &dev,
            &row_kernel,
            log_lo,
            false,
            &src.slice(start + first * in_stride..),
            &mut scratch.slice_mut(..),
            g << log_hi,
            log_hi,
            in_stride,
            n,
            T::acc(1.0),
            vec_in(first),
            true,
        )?;
        let launch = LaunchConfig {
            grid_dim: (grid(g * (n_lo / nc as usize))?, 1, 1),
            block_dim: (col_block, 1, 1),
            shared_mem_bytes: col_smem,
        };
        let (groups, n_lo_i, stride_i) = (g as i64, n_lo as i64, n as i64);
        let mut dst = out.slice_mut(first * n..(first + g) * n);
        let mut b = stream.launch_builder(&col_func);
        b.arg(&scratch)
            .arg(&mut dst)
            .arg(&groups)
            .arg(&n_lo_i)
            .arg(&stride_i)
            .arg(&stride_i)
            .arg(&scale_acc);
        // SAFETY: matches fwht_cols_* in cuda/fwht.cu; the grid covers g rows of n elements in both buffers.
        unsafe { b.launch(launch) }.map_err(driver_err)?;
        first += g;
    }
    Ok(CudaStorage::wrap_cuda_slice(out, dev))
}

/// The persistent multi-pass kernel over all `rows` (see `fwht_fused_body` in `cuda/fwht.cu`).
#[allow(clippy::too_many_arguments)]
fn persistent<T: Elem>(
    dev: &CudaDevice,
    src: &CudaSlice<T>,
    start: usize,
    in_stride: usize,
    out: &mut CudaSlice<T>,
    rows: usize,
    log_n: u32,
    scale: T::Acc,
    vec_in: bool,
) -> Result<()> {
    let acc_bytes = std::mem::size_of::<T::Acc>() as u32;
    let a = log_n - 12;
    let smem = persistent_smem(log_n, acc_bytes);
    let func = load(dev, &format!("fwht_fused_{}_{a}", T::NAME), smem)?;
    let stream = dev.cuda_stream();
    let per_sm = func
        .occupancy_max_active_blocks_per_multiprocessor(256, smem as usize, None)
        .map_err(driver_err)?;
    let sms = stream
        .context()
        .attribute(
            cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
        )
        .map_err(driver_err)?;
    let p = plan(
        rows,
        log_n,
        acc_bytes,
        per_sm.max(1) as usize * sms.max(1) as usize,
        ring_bytes_max(),
    );
    // SAFETY: each ring slot is written by the row items before any column item reads it (the kernel waits).
    let ring: CudaSlice<T::Acc> = unsafe { dev.alloc::<T::Acc>(p.slots << log_n)? };
    let ctl: CudaSlice<u32> = stream
        .alloc_zeros::<u32>(1 + 2 * p.slots)
        .map_err(driver_err)?;
    let launch = LaunchConfig {
        grid_dim: (grid(p.blocks)?, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: p.smem,
    };
    let (rows_i, stride_i) = (rows as i64, in_stride as i64);
    let (slots_i, lag_i, vin) = (p.slots as i32, p.lag as i32, vec_in as i32);
    let input = src.slice(start..);
    let mut b = stream.launch_builder(&func);
    b.arg(&input)
        .arg(out)
        .arg(&ring)
        .arg(&ctl)
        .arg(&rows_i)
        .arg(&stride_i)
        .arg(&slots_i)
        .arg(&lag_i)
        .arg(&scale)
        .arg(&vin);
    // SAFETY: matches fwht_fused_* in cuda/fwht.cu: `rows` rows of n at `in_stride` in the input, a contiguous
    // output of rows · n, a ring of `slots` rows of n and 1 + 2 · slots zeroed counters.
    unsafe { b.launch(launch) }.map_err(driver_err)?;
    Ok(())
}
