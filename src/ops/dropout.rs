//! Fused inverted dropout whose mask is a counter-based hash of `(seed, element index)`: nothing is stored for the
//! backward, which applies the same mask to the incoming gradient.

use super::kernels::{dropout_row, expect_contiguous, out, row_key, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per hash key (and per parallel task).
const BLOCK: usize = 1 << 12;

pub(crate) struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    fn run<T: Real>(&self, x: &[T]) -> Vec<T> {
        let threshold = (self.p as f64 * 4_294_967_296.0).min(4_294_967_295.0) as u32;
        let scale = T::c(1.0 / (1.0 - self.p as f64));
        let mut y = vec![T::ZERO; x.len()];
        y.par_chunks_mut(BLOCK)
            .zip(x.par_chunks(BLOCK))
            .enumerate()
            .for_each(|(blk, (yc, xc))| {
                dropout_row(row_key(self.seed, blk as u64), threshold, scale, yc);
                for (y, &x) in yc.iter_mut().zip(xc) {
                    *y *= x;
                }
            });
        y
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        match s {
            CpuStorage::F32(_) => {
                let x = expect_contiguous::<f32>(s, l, self.name())?;
                Ok(out(self.run(x), l.shape().clone()))
            }
            CpuStorage::F64(_) => {
                let x = expect_contiguous::<f64>(s, l, self.name())?;
                Ok(out(self.run(x), l.shape().clone()))
            }
            _ => candle_core::bail!("{}: unsupported dtype {:?}", self.name(), s.dtype()),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let same = Dropout {
            p: self.p,
            seed: self.seed,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&same)?))
    }
}
