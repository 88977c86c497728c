//! Fused rotary position embedding (rotate-half form). Reads strided `(b, h, t, hd)` views directly (such as the
//! query/key slices of a fused QKV projection), writes a contiguous result. The backward is the same rotation with
//! `sin` negated (a rotation's transpose is its inverse).

use super::kernels::{expect_contiguous, map_real, multiversion, out, Real, View4};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub(crate) struct Rotary {
    /// Rotate by `-θ` (the backward).
    pub inverse: bool,
}

/// Rotates one row of a head: `(x1, x2) → (x1·cos − x2·sin, x2·cos + x1·sin)` over the two halves, or by `−θ`
/// with `inverse`. Inlined into the callers' multiversioned loops.
#[inline(always)]
pub(super) fn rotate<T: Real>(x: &[T], cos: &[T], sin: &[T], y: &mut [T], inverse: bool) {
    let half = cos.len();
    let (x1, x2) = x.split_at(half);
    let (y1, y2) = y.split_at_mut(half);
    let (x1, x2, sin) = (&x1[..half], &x2[..half], &sin[..half]);
    if inverse {
        for i in 0..half {
            y1[i] = x1[i] * cos[i] + x2[i] * sin[i];
            y2[i] = x2[i] * cos[i] - x1[i] * sin[i];
        }
    } else {
        for i in 0..half {
            y1[i] = x1[i] * cos[i] - x2[i] * sin[i];
            y2[i] = x2[i] * cos[i] + x1[i] * sin[i];
        }
    }
}

multiversion! {
    /// The `t` rows of head `(ib, ih)` of `src`, rotated (by `-θ` with `inverse`), into `dst` `(t, hd)`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn rotate_head<T: Real>(x: &[T], src: View4, ib: usize, ih: usize, cos: &[T], sin: &[T], dst: &mut [T], inverse: bool) {
        let [_, _, t, hd] = src.dims;
        let half = hd / 2;
        for it in 0..t {
            let o = src.row(ib, ih, it);
            rotate(
                &x[o..o + hd],
                &cos[it * half..(it + 1) * half],
                &sin[it * half..(it + 1) * half],
                &mut dst[it * hd..(it + 1) * hd],
                inverse,
            );
        }
    }
}

impl Rotary {
    fn run<T: Real>(&self, x: &[T], v: View4, cos: &[T], sin: &[T]) -> Vec<T> {
        let [b, h, t, hd] = v.dims;
        let mut y = vec![T::ZERO; b * h * t * hd];
        y.par_chunks_mut(t * hd).enumerate().for_each(|(bh, yh)| {
            rotate_head(x, v, bh / h, bh % h, cos, sin, yh, self.inverse);
        });
        y
    }

    /// An even head dimension `hd`, and `cos`, `sin` of shape `(t, hd / 2)`.
    fn check_tables(&self, t: usize, hd: usize, cos: &Layout, sin: &Layout) -> Result<()> {
        if !hd.is_multiple_of(2)
            || cos.shape().dims() != [t, hd / 2]
            || sin.shape().dims() != [t, hd / 2]
        {
            candle_core::bail!(
                "fused-rotary: head dim {hd} must be even and cos/sin of shape ({t}, {}), got {:?} and {:?}",
                hd / 2,
                cos.shape(),
                sin.shape()
            )
        }
        Ok(())
    }
}

impl CustomOp3 for Rotary {
    fn name(&self) -> &'static str {
        "fused-rotary"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let v = View4::from_layout(l1).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{}: expected a (batch, heads, seq, head_dim) input with unit last stride, got {:?}",
                self.name(),
                l1.shape()
            ))
        })?;
        let [_, _, t, hd] = v.dims;
        self.check_tables(t, hd, l2, l3)?;
        map_real!(self.name(), s1.dtype(), |T| {
            let x = T::slice(s1)?;
            let c = expect_contiguous::<T>(s2, l2, self.name())?;
            let s = expect_contiguous::<T>(s3, l3, self.name())?;
            Ok(out(self.run(x, v, c, s), l1.shape().clone()))
        })
    }

    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (_, _, t, hd) = l1.shape().dims4()?;
        self.check_tables(t, hd, l2, l3)?;
        let y = super::cuda::rotary((s1, l1), (s2, l2), (s3, l3), self.inverse)?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let inv = Rotary {
            inverse: !self.inverse,
        };
        let g = if View4::from_layout(grad.layout()).is_some() {
            grad.clone()
        } else {
            grad.contiguous()?
        };
        Ok((Some(g.apply_op3_no_bwd(cos, sin, &inv)?), None, None))
    }
}
