//! The language-model head and its loss as one node: `mean_r CE(softmax(h_r·Wᵀ), t_r)`.
//!
//! With a 4096-token vocabulary the logits of a 16 × 256 batch take 64 MB. As two nodes (a linear map, then the
//! cross-entropy) the backward writes the logits' gradient into a fresh buffer, which candle's autograd then adds
//! into another zero-filled one before the head's backward reads it. Here the forward turns the logits into
//! probabilities in place and keeps them; the backward subtracts the one-hot targets in place and runs the two
//! matrix products of the head's backward on that buffer.

use super::kernels::{expect_contiguous, map_real, multiversion, CpuTensor, Real};
use super::linear::{backward, dims, forward, Need};
use super::softmax_xent::{max_and_sumexp, rows_per_task, sum_in_order};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

pub(crate) struct LinearCrossEntropy {
    pub targets: Vec<u32>,
    /// The softmax probabilities of the forward, `(rows, vocab)`, taken by the backward.
    probs: Mutex<Option<CpuStorage>>,
}

impl LinearCrossEntropy {
    pub fn new(targets: Vec<u32>) -> Self {
        Self {
            targets,
            probs: Mutex::new(None),
        }
    }
}

multiversion! {
    /// Turns each row of logits into probabilities in place; returns `Σ_r logsumexp(x_r) - x_r[t_r]` in f64.
    fn softmax_rows_xent<T: Real>(x: &mut [T], t: &[u32], vocab: usize) -> f64 {
        let mut total = 0f64;
        for (row, &tr) in x.chunks_exact_mut(vocab).zip(t) {
            let (m, s) = max_and_sumexp(row);
            total += (m + s.ln() - row[tr as usize]).f64();
            let inv = T::ONE / s;
            for v in row.iter_mut() {
                *v = (*v - m).vexp() * inv;
            }
        }
        total
    }
}

impl LinearCrossEntropy {
    fn fwd<T: Real>(
        &self,
        h: &[T],
        w: &[T],
        (rows, k, vocab): (usize, usize, usize),
    ) -> (T, Vec<T>) {
        let mut p = forward(h, w, None, rows, k, vocab);
        let chunk = rows_per_task(vocab);
        let total = sum_in_order(
            p.par_chunks_mut(chunk * vocab)
                .zip(self.targets.par_chunks(chunk))
                .map(|(pc, tc)| softmax_rows_xent(pc, tc, vocab)),
        );
        (T::c(total / rows.max(1) as f64), p)
    }
}

impl CustomOp2 for LinearCrossEntropy {
    fn name(&self) -> &'static str {
        "fused-linear-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let d = dims(l1, l2, self.name())?;
        if self.targets.len() != d.0 {
            candle_core::bail!(
                "{}: {} targets for {} rows",
                self.name(),
                self.targets.len(),
                d.0
            )
        }
        fn go<T: Real>(
            op: &LinearCrossEntropy,
            (s1, l1): (&CpuStorage, &Layout),
            (s2, l2): (&CpuStorage, &Layout),
            d: (usize, usize, usize),
        ) -> Result<CpuStorage> {
            let h = expect_contiguous::<T>(s1, l1, op.name())?;
            let w = expect_contiguous::<T>(s2, l2, op.name())?;
            let (loss, p) = op.fwd(h, w, d);
            *op.probs.lock().unwrap_or_else(|e| e.into_inner()) = Some(T::storage(p));
            Ok(T::storage(vec![loss]))
        }
        let storage = map_real!(self.name(), s1.dtype(), |T| go::<T>(
            self,
            (s1, l1),
            (s2, l2),
            d
        )?);
        Ok((storage, Shape::from(())))
    }

    fn bwd(
        &self,
        h: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
        let need = Need {
            x: h.track_op(),
            w: w.track_op(),
            b: false,
        };
        fn go<T: Real>(
            op: &LinearCrossEntropy,
            h: &Tensor,
            w: &Tensor,
            g: f64,
            need: Need,
        ) -> Result<(Option<Tensor>, Option<Tensor>)> {
            let name = "fused-linear-cross-entropy-bwd";
            let (hc, wc) = (CpuTensor::new(h), CpuTensor::new(w));
            let d @ (rows, _, vocab) = dims(hc.layout(), wc.layout(), name)?;
            let (hv, wv) = (hc.slice::<T>(name)?, wc.slice::<T>(name)?);
            let saved = op.probs.lock().unwrap_or_else(|e| e.into_inner()).take();
            // A second backward through the same graph recomputes the probabilities.
            let mut p: Vec<T> = match saved.and_then(T::into_vec) {
                Some(p) if p.len() == rows * vocab => p,
                _ => op.fwd(hv, wv, d).1,
            };
            let scale = T::c(g / rows.max(1) as f64);
            let chunk = rows_per_task(vocab);
            p.par_chunks_mut(chunk * vocab)
                .zip(op.targets.par_chunks(chunk))
                .for_each(|(pc, tc)| {
                    for (row, &t) in pc.chunks_exact_mut(vocab).zip(tc) {
                        row[t as usize] -= T::ONE;
                        for v in row.iter_mut() {
                            *v *= scale;
                        }
                    }
                });
            let (dh, dw, _) = backward(hv, wv, &p, d, need);
            let dev = h.device();
            Ok((
                dh.map(|v| Tensor::from_vec(v, h.shape(), dev))
                    .transpose()?,
                dw.map(|v| Tensor::from_vec(v, w.shape(), dev))
                    .transpose()?,
            ))
        }
        map_real!("fused-linear-cross-entropy-bwd", h.dtype(), |T| go::<T>(
            self, h, w, g, need
        ))
    }
}
