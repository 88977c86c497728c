//! Fused exact GELU, `x · Φ(x)`, with a one-pass backward `g · (Φ(x) + x · φ(x))`.

use super::kernels::{
    erf_and_gauss_f32, expect_contiguous, expect_same_shape, map_real, multiversion, out, Real,
    PAR_GRAIN,
};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

const FRAC_1_SQRT_2: f64 = std::f64::consts::FRAC_1_SQRT_2;
/// `1 / √(2π)`.
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

multiversion! {
    fn gelu_fwd_f32(x: &[f32], y: &mut [f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            let (e, _) = erf_and_gauss_f32(x * FRAC_1_SQRT_2 as f32);
            *y = 0.5 * x * (1.0 + e);
        }
    }
}

multiversion! {
    fn gelu_bwd_f32(x: &[f32], g: &[f32], dx: &mut [f32]) {
        for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
            // exp(-(x/√2)²) = exp(-x²/2), the Gaussian density up to 1/√(2π).
            let (e, gauss) = erf_and_gauss_f32(x * FRAC_1_SQRT_2 as f32);
            *dx = g * (0.5 * (1.0 + e) + x * gauss * INV_SQRT_2PI as f32);
        }
    }
}

fn gelu_fwd_f64(x: &[f64], y: &mut [f64]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = 0.5 * x * (1.0 + (x * FRAC_1_SQRT_2).verf());
    }
}

fn gelu_bwd_f64(x: &[f64], g: &[f64], dx: &mut [f64]) {
    for ((dx, &x), &g) in dx.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + (x * FRAC_1_SQRT_2).verf());
        let pdf = (-0.5 * x * x).exp() * INV_SQRT_2PI;
        *dx = g * (cdf + x * pdf);
    }
}

/// The per-type GELU kernels (f32 vectorised with a fast erf, f64 with libm's accuracy), so that the op's dtype
/// dispatch is written once ([`super::kernels::map_real`]).
trait GeluFloat: Real {
    const FWD: fn(&[Self], &mut [Self]);
    const BWD: fn(&[Self], &[Self], &mut [Self]);
}
impl GeluFloat for f32 {
    const FWD: fn(&[f32], &mut [f32]) = gelu_fwd_f32;
    const BWD: fn(&[f32], &[f32], &mut [f32]) = gelu_bwd_f32;
}
impl GeluFloat for f64 {
    const FWD: fn(&[f64], &mut [f64]) = gelu_fwd_f64;
    const BWD: fn(&[f64], &[f64], &mut [f64]) = gelu_bwd_f64;
}

fn map1<T: Real>(x: &[T], f: fn(&[T], &mut [T])) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(PAR_GRAIN)
        .zip(x.par_chunks(PAR_GRAIN))
        .for_each(|(y, x)| f(x, y));
    y
}

fn map2<T: Real>(x: &[T], g: &[T], f: fn(&[T], &[T], &mut [T])) -> Vec<T> {
    let mut y = vec![T::ZERO; x.len()];
    y.par_chunks_mut(PAR_GRAIN)
        .zip(x.par_chunks(PAR_GRAIN))
        .zip(g.par_chunks(PAR_GRAIN))
        .for_each(|((y, x), g)| f(x, g, y));
    y
}

pub(crate) struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "fused-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        map_real!(self.name(), s.dtype(), |T| {
            let x = expect_contiguous::<T>(s, l, self.name())?;
            Ok(out(map1(x, <T as GeluFloat>::FWD), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::cuda::gelu((s, l))?, l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(arg.apply_op2_no_bwd(&grad, &GeluBwd)?))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "fused-gelu-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        expect_same_shape(l1, l2, self.name())?;
        map_real!(self.name(), s1.dtype(), |T| {
            let x = expect_contiguous::<T>(s1, l1, self.name())?;
            let g = expect_contiguous::<T>(s2, l2, self.name())?;
            Ok(out(map2(x, g, <T as GeluFloat>::BWD), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        expect_same_shape(l1, l2, self.name())?;
        Ok((
            super::cuda::gelu_bwd((s1, l1), (s2, l2))?,
            l1.shape().clone(),
        ))
    }
}
