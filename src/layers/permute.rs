//! A fixed permutation of groups of `m` consecutive elements (the trailing dimensions of a tensor, flattened),
//! `y[r, i] = x[r, π(i)]`, differentiable.
//!
//! candle's `index_select` does this on every device, but its backward is a scatter (`index_add`) into a zeroed
//! buffer. A permutation's adjoint is the inverse permutation, a plain gather, so on CPU this module's custom op
//! gathers in both directions (rows in parallel). On other devices [`permute_last`] uses `index_select`, whose
//! backward is correct there too.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;
use std::sync::Arc;

/// A permutation of `0..m` applied to the last dimension of a tensor, with its inverse, kept on the CPU (as a
/// custom op) and on the layer's device (for `index_select`).
#[derive(Debug, Clone)]
pub(crate) struct LastDimPermutation {
    fwd: Arc<Vec<u32>>,
    inv: Arc<Vec<u32>>,
    /// `fwd` as a u32 tensor on the layer's device.
    ids: Tensor,
}

impl LastDimPermutation {
    /// `perm` must be a permutation of `0..perm.len()` (checked by the caller).
    pub(crate) fn new(perm: Vec<u32>, device: &candle_core::Device) -> Result<Self> {
        let mut inv = vec![0u32; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inv[p as usize] = i as u32;
        }
        let ids =
            Tensor::from_slice(&perm, perm.len(), &candle_core::Device::Cpu)?.to_device(device)?;
        Ok(Self {
            fwd: Arc::new(perm),
            inv: Arc::new(inv),
            ids,
        })
    }

    /// The permutation as a vector.
    pub(crate) fn as_slice(&self) -> &[u32] {
        &self.fwd
    }

    /// The permutation, shared.
    pub(crate) fn shared(&self) -> Arc<Vec<u32>> {
        self.fwd.clone()
    }

    /// `y[r, i] = xs[r, π(i)]` where `r` runs over the leading dimensions and `i` over the trailing ones, whose
    /// product must equal the permutation's length.
    pub(crate) fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        if xs.device().is_cpu() {
            xs.contiguous()?.apply_op1(Gather {
                perm: self.fwd.clone(),
                inv: self.inv.clone(),
            })
        } else {
            let m = self.fwd.len();
            let rows = xs.elem_count() / m.max(1);
            xs.reshape((rows, m))?
                .index_select(&self.ids, D::Minus1)?
                .reshape(xs.shape())
        }
    }
}

/// The CPU gather `y[r, i] = x[r, perm[i]]`; its vector-Jacobian product is the gather by the inverse.
#[derive(Debug, Clone)]
struct Gather {
    perm: Arc<Vec<u32>>,
    inv: Arc<Vec<u32>>,
}

fn gather<T: Copy + Send + Sync>(src: &[T], perm: &[u32]) -> Vec<T> {
    let m = perm.len();
    // A memcpy to get an initialised buffer, then every row overwritten in parallel.
    let mut out: Vec<T> = src.to_vec();
    out.par_chunks_mut(m)
        .zip(src.par_chunks(m))
        .for_each(|(o, s)| {
            for (o, &p) in o.iter_mut().zip(perm) {
                *o = s[p as usize];
            }
        });
    out
}

/// The gather's body, generic over the element type; candle's `Map1` dispatches it on the storage's dtype.
impl candle_core::cpu_backend::Map1 for Gather {
    fn f<T: candle_core::WithDType>(&self, vs: &[T], layout: &Layout) -> Result<Vec<T>> {
        let Some((a, b)) = layout.contiguous_offsets() else {
            candle_core::bail!("permutation: the input must be contiguous")
        };
        Ok(gather(&vs[a..b], &self.perm))
    }
}

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "last-dim-permutation"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let m = self.perm.len();
        let count = layout.shape().elem_count();
        if m == 0 || !count.is_multiple_of(m) {
            candle_core::bail!("permutation of length {m} applied to a tensor of {count} elements")
        }
        let out = candle_core::cpu_backend::Map1::map(self, storage, layout)?;
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Gather {
            perm: self.inv.clone(),
            inv: self.perm.clone(),
        };
        Ok(Some(grad_res.contiguous()?.apply_op1(inverse)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    #[test]
    fn gather_matches_index_select_forward_and_backward() -> Result<()> {
        let perm: Vec<u32> = vec![3, 0, 5, 1, 4, 2];
        let p = LastDimPermutation::new(perm.clone(), &Device::Cpu)?;
        let ids = Tensor::new(perm.as_slice(), &Device::Cpu)?;
        for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16] {
            let x =
                Var::from_tensor(&Tensor::randn(0f32, 1., (4, 6), &Device::Cpu)?.to_dtype(dtype)?)?;
            let w = Tensor::randn(0f32, 1., (4, 6), &Device::Cpu)?.to_dtype(dtype)?;
            let a = p.apply(&x)?;
            let b = x.index_select(&ids, 1)?;
            let f = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec2::<f64>();
            assert_eq!(f(&a)?, f(&b)?);
            let ga = (a * &w)?.sum_all()?.backward()?;
            let gb = (b * &w)?.sum_all()?.backward()?;
            assert_eq!(f(ga.get(&x).unwrap())?, f(gb.get(&x).unwrap())?);
        }
        // Trailing dimensions flattened: (2, 3, 2) with a permutation of 6; and a transposed input.
        let x = Tensor::arange(0f32, 12., &Device::Cpu)?.reshape((2, 3, 2))?;
        let y = p.apply(&x)?.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(y, [3., 0., 5., 1., 4., 2., 9., 6., 11., 7., 10., 8.]);
        let xt = Tensor::arange(0f32, 12., &Device::Cpu)?
            .reshape((6, 2))?
            .t()?;
        let y = p.apply(&xt)?.to_vec2::<f32>()?;
        assert_eq!(y[1], [7., 1., 11., 3., 9., 5.]);
        assert!(p
            .apply(&Tensor::zeros(5, DType::F32, &Device::Cpu)?)
            .is_err());
        Ok(())
    }
}
