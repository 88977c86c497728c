//! The fast Walsh-Hadamard transform (FWHT): `y = scale · x · H_n` over the last dimension.
//!
//! `H_n` is the n×n Sylvester Hadamard matrix in natural order (`H_1 = [1]`,
//! `H_2n = [[H_n, H_n], [H_n, -H_n]]`), with entries ±1. It is symmetric and `H_n · H_n = n · I`, so
//! `hadamard_transform(x, 1/√n)` is orthonormal and its own inverse.
//!
//! * [`hadamard_transform`]: the candle op, differentiable, on any device the crate is built for.
//! * [`fwht_inplace`] / [`fwht_rows_inplace`]: the same transform on plain `f32`/`f64` slices.
//! * [`hadamard_matrix`] / [`hadamard_transform_ref`]: the dense, obviously-correct twin used by tests and
//!   benchmarks.
//!
//! Cost: `n·log2(n)` additions per row, against `2·n²` flops for the dense product.

mod cpu;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod cuda_geometry;
mod pool;
mod reference;
#[cfg(target_arch = "x86_64")]
mod simd;

pub use cpu::{fwht_inplace, fwht_rows_inplace, fwht_rows_inplace_with, FwhtFloat, Isa};
#[cfg(feature = "cuda")]
#[cfg_attr(docsrs, doc(cfg(feature = "cuda")))]
pub use cuda::{cuda_kernels, set_cuda_kernels, CudaKernels};
pub use reference::{hadamard_matrix, hadamard_transform_ref};

use crate::error::Error;

/// A value on a cache line of its own (the kernels' aligned scratch, the helper threads' flags).
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct CacheLine<T>(T);
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// Largest supported transform length, as a power of two: n ≤ 2^24.
pub const MAX_LOG2: u32 = 24;

/// Checks that `n` is a supported transform length and returns log2(n).
pub fn check_len(n: usize) -> std::result::Result<u32, Error> {
    if !n.is_power_of_two() {
        let above = n.checked_next_power_of_two().unwrap_or(usize::MAX);
        let below = if n == 0 {
            0
        } else {
            1usize << (usize::BITS - 1 - n.leading_zeros())
        };
        return Err(Error::NotPowerOfTwo {
            size: n,
            below,
            above,
        });
    }
    let log2 = n.trailing_zeros();
    if log2 > MAX_LOG2 {
        return Err(Error::TooLarge {
            size: n,
            log2,
            max_log2: MAX_LOG2,
        });
    }
    Ok(log2)
}

/// `scale · xs · H_n` over the last dimension of `xs`, where `n = xs.dim(-1)`.
///
/// * Shapes: `xs` is `(…, n)` with any number of leading dimensions and `n = 2^k`, `0 ≤ k ≤ 24`; the output has
///   the shape and dtype of `xs`. Any layout works (transposed or narrowed inputs are read in place).
/// * Dtypes: f32 and f64 are computed in their own precision; f16 and bf16 in f32, rounded once at the end.
/// * Gradient: `H_n` is symmetric, so `d(loss)/d(xs) = hadamard_transform(d(loss)/d(y), scale)`.
///
/// Equals `xs.matmul(&hadamard_matrix(n)) * scale` ([`hadamard_transform_ref`]) in `n·log2(n)` instead of `2·n²`
/// operations per row.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::new(&[[1f32, 2., 3., 4.]], &Device::Cpu)?;
/// let y = candle_structured::hadamard_transform(&x, 0.5)?;   // orthonormal: scale = 1/√4
/// assert_eq!(y.to_vec2::<f32>()?, [[5.0, -1.0, -2.0, 0.0]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn hadamard_transform(xs: &Tensor, scale: f64) -> Result<Tensor> {
    if xs.rank() == 0 {
        return Err(Error::ScalarInput.into());
    }
    match xs.dtype() {
        DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {}
        other => return Err(Error::UnsupportedDType(other).into()),
    }
    check_len(xs.dim(candle_core::D::Minus1)?)?;
    if xs.elem_count() == 0 {
        return Ok(xs.clone());
    }
    // candle records the op for backpropagation only when `xs` is tracked.
    xs.apply_op1(Fwht { scale })
}

/// The candle custom op behind [`hadamard_transform`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Fwht {
    pub(crate) scale: f64,
}

impl CustomOp1 for Fwht {
    fn name(&self) -> &'static str {
        "hadamard-transform"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = cpu::forward(storage, layout, self.scale)?;
        Ok((out, layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let out = cuda::forward(storage, layout, self.scale)?;
        Ok((out, layout.shape().clone()))
    }

    /// `H` is symmetric, so the vector-Jacobian product is the same transform applied to the gradient.
    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(hadamard_transform(grad_res, self.scale)?))
    }
}
