//! Adaptive FastFood `y = [S_j Ĥ G_j Π_j Ĥ B_j x]_j + bias` as one node with its own backward.
//!
//! Composed from candle ops the layer is a padding, three diagonal products, two transforms, a gather, a reshape, a
//! slice and a bias add: ten nodes, each of which costs the backward a zero-filled gradient buffer and an add, on
//! activations `k` times wider than the layer's input. Here each row goes through the whole chain in cache (the
//! transforms by the crate's SIMD FWHT, in place), and the backward recomputes the two intermediate vectors of a
//! row instead of storing them. Parameter gradients are summed over fixed blocks of rows, then over blocks in
//! order, so the result does not depend on the number of threads.

use super::kernels::{expect_contiguous, map_real, CpuTensor, Real};
use crate::fwht::{fwht_inplace, FwhtFloat};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// Rows per parallel task (fixed: results are thread-count independent).
const ROWS: usize = 64;

/// The layer's fixed structure.
#[derive(Clone)]
pub(crate) struct FastFood {
    pub in_dim: usize,
    pub out_dim: usize,
    pub n: usize,
    pub k: usize,
    /// Scales of the first and second transform (`1/√n` and `1/σ`).
    pub scale1: f64,
    pub scale2: f64,
    /// Over the flattened `(k, n)`: position `j·n + i` holds `j·n + π_j(i)`.
    pub perm: Arc<Vec<u32>>,
}

trait Float: Real + FwhtFloat {}
impl Float for f32 {}
impl Float for f64 {}

/// Scratch vectors of one row and block.
struct Scratch<T> {
    z: Vec<T>,
    a: Vec<T>,
    w: Vec<T>,
}

impl FastFood {
    fn check(&self, lx: &Layout, ld: &Layout, lb: Option<&Layout>) -> Result<usize> {
        let name = "fused-fastfood";
        let xd = lx.dims();
        if xd.last() != Some(&self.in_dim) {
            candle_core::bail!("{name}: input {xd:?}, expected (…, {})", self.in_dim)
        }
        if ld.dims() != [3 * self.k, self.n] {
            candle_core::bail!(
                "{name}: diagonals {:?}, expected ({}, {})",
                ld.dims(),
                3 * self.k,
                self.n
            )
        }
        if let Some(lb) = lb {
            if lb.dims() != [self.out_dim] {
                candle_core::bail!("{name}: bias {:?}, expected ({},)", lb.dims(), self.out_dim)
            }
        }
        Ok(lx.shape().elem_count() / self.in_dim.max(1))
    }

    /// `z = Ĥ(B_j x)` (scaled), `a = Π_j z`, `w = Ĥ(G_j a)` (scaled), for block `j` of row `x`.
    fn chain<T: Float>(&self, x: &[T], diag: &[T], j: usize, sc: &mut Scratch<T>) {
        let n = self.n;
        let bj = &diag[j * n..(j + 1) * n];
        let gj = &diag[(self.k + j) * n..(self.k + j + 1) * n];
        for i in 0..n {
            sc.z[i] = if i < self.in_dim {
                x[i] * bj[i]
            } else {
                T::ZERO
            };
        }
        fwht_inplace(&mut sc.z, T::c(self.scale1)).expect("n is a power of two");
        let p = &self.perm[j * n..(j + 1) * n];
        let base = j * n;
        for i in 0..n {
            sc.a[i] = sc.z[p[i] as usize - base];
            sc.w[i] = sc.a[i] * gj[i];
        }
        fwht_inplace(&mut sc.w, T::c(self.scale2)).expect("n is a power of two");
    }

    fn scratch<T: Float>(&self) -> Scratch<T> {
        Scratch {
            z: vec![T::ZERO; self.n],
            a: vec![T::ZERO; self.n],
            w: vec![T::ZERO; self.n],
        }
    }

    fn fwd<T: Float>(&self, x: &[T], diag: &[T], bias: Option<&[T]>, rows: usize) -> Vec<T> {
        let (n, k, out) = (self.n, self.k, self.out_dim);
        let mut y = vec![T::ZERO; rows * out];
        y.par_chunks_mut(ROWS * out)
            .zip(x.par_chunks(ROWS * self.in_dim))
            .for_each(|(yc, xc)| {
                let mut sc = self.scratch::<T>();
                for (yr, xr) in yc.chunks_exact_mut(out).zip(xc.chunks_exact(self.in_dim)) {
                    for j in 0..k {
                        self.chain(xr, diag, j, &mut sc);
                        let sj = &diag[(2 * k + j) * n..(2 * k + j + 1) * n];
                        let o0 = j * n;
                        let m = n.min(out - o0);
                        for i in 0..m {
                            yr[o0 + i] = sc.w[i] * sj[i];
                        }
                    }
                    if let Some(b) = bias {
                        for (y, &b) in yr.iter_mut().zip(b) {
                            *y += b;
                        }
                    }
                }
            });
        y
    }

    /// `(dx, d[B; G; S], dbias)`.
    fn bwd<T: Float>(
        &self,
        x: &[T],
        diag: &[T],
        dy: &[T],
        rows: usize,
        with_bias: bool,
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let (n, k, out, ind) = (self.n, self.k, self.out_dim, self.in_dim);
        let mut dx = vec![T::ZERO; rows * ind];
        let partial: Vec<(Vec<T>, Vec<T>)> = dx
            .par_chunks_mut(ROWS * ind)
            .zip(x.par_chunks(ROWS * ind))
            .zip(dy.par_chunks(ROWS * out))
            .map(|((dxc, xc), dyc)| {
                let mut dd = vec![T::ZERO; 3 * k * n];
                let mut db = vec![T::ZERO; if with_bias { out } else { 0 }];
                let mut sc = self.scratch::<T>();
                let mut dv = vec![T::ZERO; n];
                let mut dz = vec![T::ZERO; n];
                for ((dxr, xr), dyr) in dxc
                    .chunks_exact_mut(ind)
                    .zip(xc.chunks_exact(ind))
                    .zip(dyc.chunks_exact(out))
                {
                    if with_bias {
                        for (a, &g) in db.iter_mut().zip(dyr) {
                            *a += g;
                        }
                    }
                    for j in 0..k {
                        self.chain(xr, diag, j, &mut sc);
                        let (o0, m) = (j * n, n.min(out - j * n));
                        let sj = &diag[(2 * k + j) * n..(2 * k + j + 1) * n];
                        let gj = &diag[(k + j) * n..(k + j + 1) * n];
                        let bj = &diag[j * n..(j + 1) * n];
                        {
                            let ds = &mut dd[(2 * k + j) * n..(2 * k + j + 1) * n];
                            for i in 0..m {
                                let g = dyr[o0 + i];
                                ds[i] += g * sc.w[i];
                                dv[i] = g * sj[i];
                            }
                            dv[m..].fill(T::ZERO);
                        }
                        fwht_inplace(&mut dv, T::c(self.scale2)).expect("power of two");
                        let dg = &mut dd[(k + j) * n..(k + j + 1) * n];
                        let p = &self.perm[j * n..(j + 1) * n];
                        for i in 0..n {
                            dg[i] += dv[i] * sc.a[i];
                            dz[p[i] as usize - j * n] = dv[i] * gj[i];
                        }
                        fwht_inplace(&mut dz, T::c(self.scale1)).expect("power of two");
                        let dbj = &mut dd[j * n..(j + 1) * n];
                        for i in 0..ind {
                            dbj[i] += dz[i] * xr[i];
                            dxr[i] += dz[i] * bj[i];
                        }
                    }
                }
                (dd, db)
            })
            .collect();
        let mut dd = vec![T::ZERO; 3 * k * n];
        let mut db = vec![T::ZERO; if with_bias { out } else { 0 }];
        for (pd, pb) in partial {
            for (a, &b) in dd.iter_mut().zip(&pd) {
                *a += b;
            }
            for (a, &b) in db.iter_mut().zip(&pb) {
                *a += b;
            }
        }
        (dx, dd, db)
    }

    fn run_fwd<T: Float>(
        &self,
        (sx, lx): (&CpuStorage, &Layout),
        (sd, ld): (&CpuStorage, &Layout),
        b: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let name = "fused-fastfood";
        let rows = self.check(lx, ld, b.map(|b| b.1))?;
        let x = expect_contiguous::<T>(sx, lx, name)?;
        let d = expect_contiguous::<T>(sd, ld, name)?;
        let b = b
            .map(|(s, l)| expect_contiguous::<T>(s, l, name))
            .transpose()?;
        let mut dims = lx.dims().to_vec();
        *dims.last_mut().expect("checked") = self.out_dim;
        Ok((T::storage(self.fwd(x, d, b, rows)), dims.into()))
    }

    fn run_bwd(
        &self,
        x: &Tensor,
        diag: &Tensor,
        bias: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        fn go<T: Float>(
            op: &FastFood,
            x: &Tensor,
            diag: &Tensor,
            with_bias: bool,
            g: &Tensor,
        ) -> Result<(Tensor, Tensor, Option<Tensor>)> {
            let name = "fused-fastfood-bwd";
            let (xc, dc, gc) = (CpuTensor::new(x), CpuTensor::new(diag), CpuTensor::new(g));
            let rows = op.check(xc.layout(), dc.layout(), None)?;
            let (xv, dv, gv) = (
                xc.slice::<T>(name)?,
                dc.slice::<T>(name)?,
                gc.slice::<T>(name)?,
            );
            let (dx, dd, db) = op.bwd(xv, dv, gv, rows, with_bias);
            let dev = x.device();
            Ok((
                Tensor::from_vec(dx, x.shape(), dev)?,
                Tensor::from_vec(dd, diag.shape(), dev)?,
                with_bias
                    .then(|| Tensor::from_vec(db, op.out_dim, dev))
                    .transpose()?,
            ))
        }
        let g = grad.contiguous()?;
        map_real!("fused-fastfood-bwd", x.dtype(), |T| go::<T>(
            self,
            x,
            diag,
            bias.is_some(),
            &g
        ))
    }
}

/// With a bias: CustomOp3 on `(x, [B; G; S], bias)`.
pub(crate) struct FastFoodBias(pub FastFood);
/// Without: CustomOp2 on `(x, [B; G; S])`.
pub(crate) struct FastFoodNoBias(pub FastFood);

impl CustomOp3 for FastFoodBias {
    fn name(&self) -> &'static str {
        "fused-fastfood"
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
        map_real!(self.name(), s1.dtype(), |T| self.0.run_fwd::<T>(
            (s1, l1),
            (s2, l2),
            Some((s3, l3))
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        diag: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dd, db) = self.0.run_bwd(x, diag, Some(bias), grad)?;
        Ok((Some(dx), Some(dd), db))
    }
}

impl CustomOp2 for FastFoodNoBias {
    fn name(&self) -> &'static str {
        "fused-fastfood"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_real!(self.name(), s1.dtype(), |T| self.0.run_fwd::<T>(
            (s1, l1),
            (s2, l2),
            None
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        diag: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dd, _) = self.0.run_bwd(x, diag, None, grad)?;
        Ok((Some(dx), Some(dd)))
    }
}
