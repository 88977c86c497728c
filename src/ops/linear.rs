//! Fused affine map `y = x·Wᵀ + b` with its own backward.
//!
//! candle builds `x.matmul(&w.t())?.broadcast_add(&b)` as three graph nodes (transpose, matmul, broadcast add). Its
//! backward then allocates and zero-fills a gradient for each node, adds into it, and reduces the bias gradient
//! over the rows with a serial strided sum. Here the whole map is one node: the forward is one `gemm` call
//! writing over the broadcast bias, and the backward computes `dx = dy·W`, `dW = dyᵀ·x` and `db = Σ_rows dy` in
//! one pass over row blocks of `dy`, in parallel. The row blocks have a fixed size, so the result does not depend
//! on the number of threads.

use super::kernels::{expect_contiguous, map_real, multiversion, CpuTensor, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

/// Rows of `dy` per task of the weight-gradient pass (fixed, so that results are thread-count independent).
const ROW_BLOCK: usize = 1024;

/// `dst (m×n, row-major) = [dst +] a·b`, with `a` `(m×k)` and `b` `(k×n)` given by element strides
/// `(row stride, column stride)`.
///
/// # Safety
/// `a` and `b` must address every element their shapes and strides describe.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    accumulate: bool,
    a: *const T,
    (a_rs, a_cs): (usize, usize),
    b: *const T,
    (b_rs, b_cs): (usize, usize),
    threads: usize,
) {
    debug_assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(T::ZERO);
        }
        return;
    }
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: dst holds m·n elements in row-major order; the caller vouches for a and b.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a,
            a_cs as isize,
            a_rs as isize,
            b,
            b_cs as isize,
            b_rs as isize,
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            par,
        )
    }
}

multiversion! {
    /// `acc[j] += Σ_r rows[r·n + j]`.
    fn col_sums<T: Real>(rows: &[T], n: usize, acc: &mut [T]) {
        for row in rows.chunks_exact(n) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += x;
            }
        }
    }
}

/// gemm's threads: candle's count, but no more than the current rayon pool has (a training worker's pool has
/// one, and gemm would otherwise split the product into pieces that the one thread runs in turn).
fn threads() -> usize {
    candle_core::utils::get_num_threads().min(rayon::current_num_threads())
}

/// `y = x·Wᵀ (+ b)`: `x` `(rows, k)`, `w` `(n, k)`, `b` `(n,)`.
pub(super) fn forward<T: Real>(
    x: &[T],
    w: &[T],
    b: Option<&[T]>,
    rows: usize,
    k: usize,
    n: usize,
) -> Vec<T> {
    let mut y = vec![T::ZERO; rows * n];
    if let Some(b) = b {
        y.par_chunks_mut(n * 64).for_each(|blk| {
            for row in blk.chunks_exact_mut(n) {
                row.copy_from_slice(b);
            }
        });
    }
    // SAFETY: x is (rows, k) row-major, Wᵀ is read from w (n, k) row-major as a (k, n) matrix.
    unsafe {
        matmul(
            (rows, n, k),
            &mut y,
            b.is_some(),
            x.as_ptr(),
            (k, 1),
            w.as_ptr(),
            (1, k),
            threads(),
        )
    };
    y
}

/// `(dx, dW, db)`, each present only when needed.
pub(super) type RawGrads<T> = (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>);

/// Gradients `(dx, dW, db)` of `y = x·Wᵀ + b` given `dy` `(rows, n)`.
pub(super) fn backward<T: Real>(
    x: &[T],
    w: &[T],
    dy: &[T],
    (rows, k, n): (usize, usize, usize),
    need: Need,
) -> RawGrads<T> {
    let dx = need.x.then(|| {
        // dx = dy · W: (rows, n) · (n, k).
        let mut dx = vec![T::ZERO; rows * k];
        // SAFETY: dy is (rows, n) and w is (n, k), both row-major.
        unsafe {
            matmul(
                (rows, k, n),
                &mut dx,
                false,
                dy.as_ptr(),
                (n, 1),
                w.as_ptr(),
                (k, 1),
                threads(),
            )
        };
        dx
    });
    if !need.w && !need.b {
        return (dx, None, None);
    }
    // dW = dyᵀ · x and db = Σ dy, by fixed row blocks in parallel, then summed in block order.
    let blocks = rows.div_ceil(ROW_BLOCK).max(1);
    let partial: Vec<(Vec<T>, Vec<T>)> = (0..blocks)
        .into_par_iter()
        .map(|blk| {
            let r0 = blk * ROW_BLOCK;
            let r1 = rows.min(r0 + ROW_BLOCK);
            let mut dw = Vec::new();
            if need.w {
                dw = vec![T::ZERO; n * k];
                // SAFETY: rows r0..r1 of dy (read transposed as (n, r)) and of x (r, k).
                unsafe {
                    matmul(
                        (n, k, r1 - r0),
                        &mut dw,
                        false,
                        dy[r0 * n..].as_ptr(),
                        (1, n),
                        x[r0 * k..].as_ptr(),
                        (k, 1),
                        1,
                    )
                };
            }
            let mut db = Vec::new();
            if need.b {
                db = vec![T::ZERO; n];
                col_sums(&dy[r0 * n..r1 * n], n, &mut db);
            }
            (dw, db)
        })
        .collect();
    let mut it = partial.into_iter();
    let (mut dw, mut db) = it.next().unwrap_or_default();
    for (pw, pb) in it {
        dw.par_chunks_mut(1 << 14)
            .zip(pw.par_chunks(1 << 14))
            .for_each(|(a, b)| {
                for (a, &b) in a.iter_mut().zip(b) {
                    *a += b;
                }
            });
        for (a, &b) in db.iter_mut().zip(&pb) {
            *a += b;
        }
    }
    (dx, need.w.then_some(dw), need.b.then_some(db))
}

/// Which gradients the graph needs (a frozen weight or a constant input gets none).
#[derive(Clone, Copy)]
pub(super) struct Need {
    pub x: bool,
    pub w: bool,
    pub b: bool,
}

/// Shapes of `x` `(…, k)` and `w` `(n, k)`: `(rows, k, n)`.
pub(super) fn dims(lx: &Layout, lw: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    let xd = lx.dims();
    let wd = lw.dims();
    if xd.is_empty() || wd.len() != 2 || xd[xd.len() - 1] != wd[1] {
        candle_core::bail!(
            "{op}: x {xd:?} and weight {wd:?} do not match (expected (…, k) and (n, k))"
        )
    }
    let k = wd[1];
    Ok((lx.shape().elem_count() / k.max(1), k, wd[0]))
}

fn out_shape(lx: &Layout, n: usize) -> Shape {
    let mut d = lx.dims().to_vec();
    *d.last_mut().expect("rank checked") = n;
    d.into()
}

fn run_fwd<T: Real>(
    op: &str,
    (sx, lx): (&CpuStorage, &Layout),
    (sw, lw): (&CpuStorage, &Layout),
    b: Option<(&CpuStorage, &Layout)>,
) -> Result<(CpuStorage, Shape)> {
    let (rows, k, n) = dims(lx, lw, op)?;
    let x = expect_contiguous::<T>(sx, lx, op)?;
    let w = expect_contiguous::<T>(sw, lw, op)?;
    let b = match b {
        Some((sb, lb)) => {
            if lb.dims() != [n] {
                candle_core::bail!("{op}: bias {:?}, expected ({n},)", lb.dims())
            }
            Some(expect_contiguous::<T>(sb, lb, op)?)
        }
        None => None,
    };
    Ok((T::storage(forward(x, w, b, rows, k, n)), out_shape(lx, n)))
}

type Grads = (Option<Tensor>, Option<Tensor>, Option<Tensor>);

/// The gradients of the op as tensors: `(dx, dW, db)`, each only where the argument tracks gradients.
fn run_bwd(x: &Tensor, w: &Tensor, b: Option<&Tensor>, grad: &Tensor) -> Result<Grads> {
    let need = Need {
        x: x.track_op(),
        w: w.track_op(),
        b: b.is_some_and(|b| b.track_op()),
    };
    fn go<T: Real>(x: &Tensor, w: &Tensor, need: Need, g: &Tensor) -> Result<Grads> {
        let op = "fused-linear-bwd";
        let (xc, wc, gc) = (CpuTensor::new(x), CpuTensor::new(w), CpuTensor::new(g));
        let dims3 = dims(xc.layout(), wc.layout(), op)?;
        let (xv, wv, gv) = (xc.slice::<T>(op)?, wc.slice::<T>(op)?, gc.slice::<T>(op)?);
        let (dx, dw, db) = backward(xv, wv, gv, dims3, need);
        let dev = x.device();
        Ok((
            dx.map(|v| Tensor::from_vec(v, x.shape(), dev))
                .transpose()?,
            dw.map(|v| Tensor::from_vec(v, w.shape(), dev))
                .transpose()?,
            db.map(|v| Tensor::from_vec(v, dims3.2, dev)).transpose()?,
        ))
    }
    if !x.track_op() && !w.track_op() && !need.b {
        return Ok((None, None, None));
    }
    let g = grad.contiguous()?;
    map_real!("fused-linear-bwd", x.dtype(), |T| go::<T>(x, w, need, &g))
}

/// `y = x·Wᵀ + b` (CustomOp3 on `x`, `W`, `b`).
pub(crate) struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "fused-linear"
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
        map_real!(self.name(), s1.dtype(), |T| run_fwd::<T>(
            self.name(),
            (s1, l1),
            (s2, l2),
            Some((s3, l3))
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<Grads> {
        run_bwd(x, w, Some(b), grad)
    }
}

/// `y = x·Wᵀ` (CustomOp2 on `x`, `W`).
pub(crate) struct LinearNoBias;

impl CustomOp2 for LinearNoBias {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_real!(self.name(), s1.dtype(), |T| run_fwd::<T>(
            self.name(),
            (s1, l1),
            (s2, l2),
            None
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = run_bwd(x, w, None, grad)?;
        Ok((dx, dw))
    }
}
