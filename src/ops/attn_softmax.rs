//! The causal softmax of attention with dropout on the probabilities, as one graph node between the two matrix
//! products: `out = softmax(scale · s + causal mask) ⊙ keep` over the last axis of raw scores `s = q·kᵀ`
//! `(…, t, t)`, where row `r` (flattened over the leading axes) is query `i = r mod t` and sees keys `j ≤ i`, and
//! `keep` is the CPU attention op's dropout mask for the row (`row_key(seed, r)`). Nothing but the scores is
//! kept for the backward, which recomputes the probabilities.
//!
//! This is how attention trains on CUDA ([`super::causal_attention`] with the fused CUDA ops on): cuBLAS for
//! `q·kᵀ` and `P·v`, this op between them (one kernel each way instead of candle's mask, softmax and dropout
//! ops and their backwards). The CPU body is the reference the CUDA kernels are compared with.

use super::kernels::{
    dropout_row, expect_contiguous, expect_same_shape, map_real, out, row_key, Real,
};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub(crate) struct AttnSoftmax {
    /// Multiplies the raw scores (`1 / √head_dim`).
    pub scale: f64,
    pub p_drop: f32,
    pub seed: u64,
}

impl AttnSoftmax {
    fn threshold(&self) -> u32 {
        (self.p_drop as f64 * 4_294_967_296.0).min(4_294_967_295.0) as u32
    }

    /// Runs `f(r, i, scores_row, keep, out_row)` over the rows `r` (query `i`) in parallel, `keep` holding the
    /// row's dropout multipliers for keys `0..=i`.
    fn rows<T: Real>(
        &self,
        s: &[T],
        t: usize,
        outv: &mut [T],
        f: impl Fn(usize, usize, &[T], &[T], &mut [T]) + Sync,
    ) {
        let kscale = T::c(1.0 / (1.0 - self.p_drop as f64));
        let threshold = self.threshold();
        outv.par_chunks_mut(t)
            .zip(s.par_chunks(t))
            .enumerate()
            .for_each_init(
                || vec![T::ZERO; t],
                |keep, (r, (o, sr))| {
                    let i = r % t;
                    dropout_row(
                        row_key(self.seed, r as u64),
                        threshold,
                        kscale,
                        &mut keep[..=i],
                    );
                    f(r, i, sr, &keep[..=i], o);
                },
            );
    }

    /// `(max, Σ exp)` of `scale · s[j]`, `j ≤ i`.
    fn lse<T: Real>(&self, sr: &[T], i: usize) -> (T, T) {
        let scale = T::c(self.scale);
        let m = sr[..=i]
            .iter()
            .fold(T::c(f64::NEG_INFINITY), |m, &v| m.vmax(scale * v));
        let z = sr[..=i]
            .iter()
            .fold(T::ZERO, |z, &v| z + (scale * v - m).vexp());
        (m, z)
    }

    fn fwd<T: Real>(&self, s: &[T], t: usize) -> Vec<T> {
        let mut o = vec![T::ZERO; s.len()];
        let scale = T::c(self.scale);
        self.rows(s, t, &mut o, |_, i, sr, keep, or| {
            let (m, z) = self.lse(sr, i);
            let inv = T::ONE / z;
            for j in 0..=i {
                or[j] = (scale * sr[j] - m).vexp() * inv * keep[j];
            }
        });
        o
    }

    fn bwd<T: Real>(&self, s: &[T], g: &[T], t: usize) -> Vec<T> {
        let mut o = vec![T::ZERO; s.len()];
        let scale = T::c(self.scale);
        self.rows(s, t, &mut o, |r, i, sr, keep, or| {
            let gr = &g[r * t..(r + 1) * t];
            let (m, z) = self.lse(sr, i);
            let inv = T::ONE / z;
            let mut dot = T::ZERO;
            for j in 0..=i {
                dot += (scale * sr[j] - m).vexp() * inv * gr[j] * keep[j];
            }
            for j in 0..=i {
                let p = (scale * sr[j] - m).vexp() * inv;
                or[j] = scale * p * (gr[j] * keep[j] - dot);
            }
        });
        o
    }
}

fn check_square(l: &Layout, op: &str) -> Result<usize> {
    let d = l.dims();
    if d.len() < 2 || d[d.len() - 1] != d[d.len() - 2] {
        candle_core::bail!("{op}: expected scores (…, t, t), got {:?}", l.shape())
    }
    Ok(d[d.len() - 1])
}

impl CustomOp1 for AttnSoftmax {
    fn name(&self) -> &'static str {
        "attn-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let t = check_square(l, self.name())?;
        map_real!(self.name(), s.dtype(), |T| {
            let x = expect_contiguous::<T>(s, l, self.name())?;
            Ok(out(self.fwd(x, t), l.shape().clone()))
        })
    }

    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        check_square(l, self.name())?;
        let o = super::cuda::attn_softmax((s, l), self.scale, self.p_drop, self.seed)?;
        Ok((o, l.shape().clone()))
    }

    fn bwd(&self, scores: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad.contiguous()?;
        Ok(Some(
            scores.apply_op2_no_bwd(&grad, &AttnSoftmaxBwd(*self))?,
        ))
    }
}

/// Backward of [`AttnSoftmax`]: inputs `(scores, grad_out)`, output the gradient of the raw scores,
/// `scale · P ⊙ (dP − Σⱼ Pⱼ dPⱼ)` with `dP = grad_out ⊙ keep`.
struct AttnSoftmaxBwd(AttnSoftmax);

impl CustomOp2 for AttnSoftmaxBwd {
    fn name(&self) -> &'static str {
        "attn-softmax-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let t = check_square(l1, self.name())?;
        expect_same_shape(l1, l2, self.name())?;
        map_real!(self.name(), s1.dtype(), |T| {
            let s = expect_contiguous::<T>(s1, l1, self.name())?;
            let g = expect_contiguous::<T>(s2, l2, self.name())?;
            Ok(out(self.0.bwd(s, g, t), l1.shape().clone()))
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
        check_square(l1, self.name())?;
        expect_same_shape(l1, l2, self.name())?;
        let a = self.0;
        let o = super::cuda::attn_softmax_bwd((s1, l1), (s2, l2), a.scale, a.p_drop, a.seed)?;
        Ok((o, l1.shape().clone()))
    }
}
