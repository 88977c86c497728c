//! Fused softmax + cross-entropy: the forward reads the logits once per row (max, then a sum of exponentials) and
//! keeps nothing; the backward recomputes the softmax and writes `g / rows · (softmax(x) - onehot(target))` in one
//! pass, instead of materialising log-probabilities, their gradient and a scatter.

use super::kernels::{expect_contiguous, map_real, multiversion, out, Real};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub(crate) struct CrossEntropy;

pub(super) fn targets(s: &CpuStorage, l: &Layout, rows: usize, vocab: usize) -> Result<Vec<usize>> {
    if l.shape().dims() != [rows] {
        candle_core::bail!(
            "cross_entropy: targets of shape {:?} for {rows} rows of logits",
            l.shape()
        )
    }
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("cross_entropy: strided targets".into()))?;
    let t: Vec<usize> = match s {
        CpuStorage::U32(v) => v[a..b].iter().map(|&x| x as usize).collect(),
        CpuStorage::I64(v) => v[a..b].iter().map(|&x| x.max(-1) as usize).collect(),
        CpuStorage::U8(v) => v[a..b].iter().map(|&x| x as usize).collect(),
        _ => candle_core::bail!(
            "cross_entropy: targets must be u32, i64 or u8, got {:?}",
            s.dtype()
        ),
    };
    if let Some(&bad) = t.iter().find(|&&x| x >= vocab) {
        candle_core::bail!("cross_entropy: target {bad} out of range for {vocab} classes")
    }
    Ok(t)
}

/// 16-lane max and sum-of-exp of one row.
#[inline(always)]
pub(super) fn max_and_sumexp<T: Real>(x: &[T]) -> (T, T) {
    let mut acc = [T::c(f64::NEG_INFINITY); 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for l in 0..16 {
            acc[l] = acc[l].vmax(c[l]);
        }
    }
    let mut m = T::c(f64::NEG_INFINITY);
    for &v in it.remainder() {
        m = m.vmax(v);
    }
    for a in acc {
        m = m.vmax(a);
    }
    let mut sacc = [T::ZERO; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for l in 0..16 {
            sacc[l] += (c[l] - m).vexp();
        }
    }
    let mut s = T::ZERO;
    for &v in it.remainder() {
        s += (v - m).vexp();
    }
    for a in sacc {
        s += a;
    }
    (m, s)
}

multiversion! {
    /// Sum over the rows of `logsumexp(x_r) - x_r[t_r]`, in f64.
    fn xent_rows<T: Real>(x: &[T], t: &[usize], vocab: usize) -> f64 {
        let mut total = 0f64;
        for (row, &tr) in x.chunks_exact(vocab).zip(t) {
            let (m, s) = max_and_sumexp(row);
            total += (m + s.ln() - row[tr]).f64();
        }
        total
    }
}

multiversion! {
    fn xent_bwd_rows<T: Real>(x: &[T], t: &[usize], vocab: usize, scale: T, dx: &mut [T]) {
        for ((row, &tr), dr) in x.chunks_exact(vocab).zip(t).zip(dx.chunks_exact_mut(vocab)) {
            let (m, s) = max_and_sumexp(row);
            let f = scale / s;
            for (d, &v) in dr.iter_mut().zip(row) {
                *d = (v - m).vexp() * f;
            }
            dr[tr] -= scale;
        }
    }
}

/// Rows per parallel task: a fixed block, not a share of the threads, so that the loss (the tasks' sums added in
/// task order, [`sum_in_order`]) is the same bit for bit whatever the number of threads.
pub(super) fn rows_per_task(vocab: usize) -> usize {
    (4 * super::kernels::PAR_GRAIN / vocab.max(1)).max(1)
}

/// The sum of the tasks' partial sums, in task order (rayon's `sum` adds them in an order that depends on how the
/// work was split among the threads).
pub(super) fn sum_in_order(parts: impl rayon::iter::IndexedParallelIterator<Item = f64>) -> f64 {
    let parts: Vec<f64> = parts.collect();
    parts.iter().sum()
}

fn fwd<T: Real>(x: &[T], t: &[usize], vocab: usize) -> T {
    let rows = t.len();
    let chunk = rows_per_task(vocab);
    let total = sum_in_order(
        x.par_chunks(chunk * vocab)
            .zip(t.par_chunks(chunk))
            .map(|(xc, tc)| xent_rows(xc, tc, vocab)),
    );
    T::c(total / rows as f64)
}

fn bwd<T: Real>(x: &[T], t: &[usize], vocab: usize, g: f64) -> Vec<T> {
    let rows = t.len();
    let chunk = rows_per_task(vocab);
    let scale = T::c(g / rows as f64);
    let mut dx = vec![T::ZERO; x.len()];
    dx.par_chunks_mut(chunk * vocab)
        .zip(x.par_chunks(chunk * vocab))
        .zip(t.par_chunks(chunk))
        .for_each(|((dc, xc), tc)| xent_bwd_rows(xc, tc, vocab, scale, dc));
    dx
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "fused-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let t = targets(s2, l2, rows, vocab)?;
        map_real!(self.name(), s1.dtype(), |T| {
            let x = expect_contiguous::<T>(s1, l1, self.name())?;
            Ok(out(vec![fwd(x, &t, vocab)], ()))
        })
    }

    /// On CUDA: logits f32, f16 or bf16, targets u32 on the same device; the loss is an f32 scalar (NaN where a
    /// target is out of range: the kernels do not read targets back to the host).
    #[cfg(feature = "cuda-untested")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (rows, _) = l1.shape().dims2()?;
        if l2.shape().dims() != [rows] || s2.dtype() != candle_core::DType::U32 {
            candle_core::bail!(
                "cross_entropy: expected u32 targets of shape ({rows},), got {:?} {:?}",
                s2.dtype(),
                l2.shape()
            )
        }
        Ok((super::cuda::cross_entropy((s1, l1), (s2, l2))?, ().into()))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if logits.device().is_cuda() {
            // the scalar gradient stays on the device: no synchronisation
            let g = grad.to_dtype(candle_core::DType::F32)?;
            let dx = logits.apply_op3_no_bwd(targets, &g, &CrossEntropyBwdDevice)?;
            return Ok((Some(dx), None));
        }
        let g = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let dx = logits.apply_op2_no_bwd(targets, &CrossEntropyBwd { g })?;
        Ok((Some(dx), None))
    }
}

struct CrossEntropyBwd {
    g: f64,
}

impl CustomOp2 for CrossEntropyBwd {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-bwd"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (rows, vocab) = l1.shape().dims2()?;
        let t = targets(s2, l2, rows, vocab)?;
        map_real!(self.name(), s1.dtype(), |T| {
            let x = expect_contiguous::<T>(s1, l1, self.name())?;
            Ok(out(bwd(x, &t, vocab, self.g), l1.shape().clone()))
        })
    }
}

/// Backward of [`CrossEntropy`] on CUDA: inputs `(logits, targets, grad)` with the scalar f32 `grad` on the
/// device.
struct CrossEntropyBwdDevice;

impl candle_core::CustomOp3 for CrossEntropyBwdDevice {
    fn name(&self) -> &'static str {
        "fused-cross-entropy-bwd-device"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!(
            "{}: CUDA only (the CPU backward reads the gradient on the host)",
            self.name()
        )
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
        let dx = super::cuda::cross_entropy_bwd((s1, l1), (s2, l2), (s3, l3))?;
        Ok((dx, l1.shape().clone()))
    }
}
