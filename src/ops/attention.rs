//! Fused causal attention with dropout on the probabilities, one `(batch, head)` per task.
//!
//! Forward, per query row `i`: `s_j = q_i·k_j / √d` for `j ≤ i`, `p = softmax(s)`, `o_i = Σ_j p_j m_ij v_j`, where
//! `m_ij ∈ {0, 1/(1-p_drop)}` is the dropout mask. Nothing of size `seq²` is stored: the backward recomputes each
//! row of probabilities (a `seq × head_dim` dot-product pass, cheaper than storing and re-reading it) and
//! regenerates the dropout mask from a counter-based hash of `(seed, head, i, j)`.
//!
//! Backward, per row: `dA_j = dO_i·v_j`, `dP_j = dA_j m_ij`, `dS_j = p_j (dP_j - Σ_k p_k dP_k) / √d`,
//! `dq_i = Σ_j dS_j k_j`, `dk_j += dS_j q_i`, `dv_j += p_j m_ij dO_i`.
//!
//! The forward output is stored as `(batch, seq, heads, head_dim)` and returned as a transposed view with the
//! documented `(batch, heads, seq, head_dim)` shape, so merging the heads back (`transpose(1, 2)` + `reshape`) is
//! free.

use super::kernels::{dropout_row, multiversion, out, row_key, Real, View4};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

pub(crate) struct CausalAttention {
    /// Dropout probability on the attention probabilities (0 disables the mask).
    pub p_drop: f32,
    pub seed: u64,
}

/// A raw pointer that may cross threads: each task writes a disjoint set of rows.
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: used only for disjoint writes from parallel tasks (see the call sites).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

/// Sum with 16 independent accumulators (vectorises without reassociation flags).
#[inline(always)]
fn sum<T: Real>(xs: &[T]) -> T {
    let mut acc = [T::ZERO; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for l in 0..16 {
            acc[l] += c[l];
        }
    }
    let mut s = T::ZERO;
    for &x in it.remainder() {
        s += x;
    }
    for a in acc {
        s += a;
    }
    s
}

#[inline(always)]
fn max<T: Real>(xs: &[T]) -> T {
    let mut acc = [T::c(f64::NEG_INFINITY); 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for l in 0..16 {
            acc[l] = acc[l].vmax(c[l]);
        }
    }
    let mut m = T::c(f64::NEG_INFINITY);
    for &x in it.remainder() {
        m = m.vmax(x);
    }
    for a in acc {
        m = m.vmax(a);
    }
    m
}

/// `s[j] = scale · Σ_d q[d] kt[d][j]` for `j < s.len()`; `kt` is `(hd, t)` row-major.
#[inline(always)]
fn scores<T: Real>(q: &[T], kt: &[T], t: usize, scale: T, s: &mut [T]) {
    let n = s.len();
    s.fill(T::ZERO);
    for (d, &qd) in q.iter().enumerate() {
        let qd = qd * scale;
        let row = &kt[d * t..d * t + n];
        for (sj, &kj) in s.iter_mut().zip(row) {
            *sj += qd * kj;
        }
    }
}

/// Softmax of `s` in place; returns nothing (the row is normalised).
#[inline(always)]
fn softmax_row<T: Real>(s: &mut [T]) {
    let m = max(s);
    for x in s.iter_mut() {
        *x = (*x - m).vexp();
    }
    let inv = T::ONE / sum(s);
    for x in s.iter_mut() {
        *x *= inv;
    }
}

struct HeadIo<'a, T> {
    q: &'a [T],
    k: &'a [T],
    v: &'a [T],
    vq: View4,
    vk: View4,
    vv: View4,
}

multiversion! {
    fn fwd_head<T: Real>(io: &HeadIo<'_, T>, ib: usize, ih: usize, p_drop: f32, seed: u64, o: SendPtr<T>) {
        let [_, h, t, hd] = io.vq.dims;
        let scale = T::c(1.0 / (hd as f64).sqrt());
        let mut kt = vec![T::ZERO; hd * t];
        for j in 0..t {
            let kr = &io.k[io.vk.row(ib, ih, j)..][..hd];
            for d in 0..hd {
                kt[d * t + j] = kr[d];
            }
        }
        let mut s = vec![T::ZERO; t];
        let mut keep = vec![T::ZERO; t];
        let mut acc = vec![T::ZERO; hd];
        let drop = p_drop > 0.0;
        let threshold = (p_drop as f64 * 4_294_967_296.0).min(4_294_967_295.0) as u32;
        let kscale = T::c(1.0 / (1.0 - p_drop as f64));
        let head = (ib * h + ih) as u64;
        for i in 0..t {
            let n = i + 1;
            let qr = &io.q[io.vq.row(ib, ih, i)..][..hd];
            let s = &mut s[..n];
            scores(qr, &kt, t, scale, s);
            softmax_row(s);
            if drop {
                let keep = &mut keep[..n];
                dropout_row(row_key(seed, head * t as u64 + i as u64), threshold, kscale, keep);
                for (x, &k) in s.iter_mut().zip(keep.iter()) {
                    *x *= k;
                }
            }
            acc.fill(T::ZERO);
            for (j, &pj) in s.iter().enumerate() {
                let vr = &io.v[io.vv.row(ib, ih, j)..][..hd];
                for (a, &x) in acc.iter_mut().zip(vr) {
                    *a += pj * x;
                }
            }
            // Output layout (b, t, h, hd).
            let off = ((ib * t + i) * h + ih) * hd;
            // SAFETY: row (ib, i, ih) belongs to this task's head only; the buffer holds b·t·h·hd elements.
            let dst = unsafe { std::slice::from_raw_parts_mut(o.0.add(off), hd) };
            dst.copy_from_slice(&acc);
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn bwd_head<T: Real>(
        io: &HeadIo<'_, T>,
        g: &[T],
        vg: View4,
        ib: usize,
        ih: usize,
        p_drop: f32,
        seed: u64,
        dq: &mut [T],
        dk: &mut [T],
        dv: &mut [T],
    ) {
        let [_, h, t, hd] = io.vq.dims;
        let scale = T::c(1.0 / (hd as f64).sqrt());
        let mut kt = vec![T::ZERO; hd * t];
        let mut vt = vec![T::ZERO; hd * t];
        for j in 0..t {
            let kr = &io.k[io.vk.row(ib, ih, j)..][..hd];
            let vr = &io.v[io.vv.row(ib, ih, j)..][..hd];
            for d in 0..hd {
                kt[d * t + j] = kr[d];
                vt[d * t + j] = vr[d];
            }
        }
        let mut p = vec![T::ZERO; t];
        let mut da = vec![T::ZERO; t];
        let mut keep = vec![T::ZERO; t];
        let mut dqi = vec![T::ZERO; hd];
        let drop = p_drop > 0.0;
        let threshold = (p_drop as f64 * 4_294_967_296.0).min(4_294_967_295.0) as u32;
        let kscale = T::c(1.0 / (1.0 - p_drop as f64));
        let head = (ib * h + ih) as u64;
        for i in 0..t {
            let n = i + 1;
            let qr = &io.q[io.vq.row(ib, ih, i)..][..hd];
            let gr = &g[vg.row(ib, ih, i)..][..hd];
            let p = &mut p[..n];
            scores(qr, &kt, t, scale, p);
            softmax_row(p);
            // dA_j = dO_i · v_j
            let da = &mut da[..n];
            scores(gr, &vt, t, T::ONE, da);
            if drop {
                let keep = &mut keep[..n];
                dropout_row(row_key(seed, head * t as u64 + i as u64), threshold, kscale, keep);
                for (x, &k) in da.iter_mut().zip(keep.iter()) {
                    *x *= k; // dP_j
                }
            }
            // D = Σ p_j dP_j
            let mut dsum = [T::ZERO; 16];
            let mut pc = p.chunks_exact(16);
            let mut dc = da.chunks_exact(16);
            for (a, b) in (&mut pc).zip(&mut dc) {
                for l in 0..16 {
                    dsum[l] += a[l] * b[l];
                }
            }
            let mut dd = T::ZERO;
            for (&a, &b) in pc.remainder().iter().zip(dc.remainder()) {
                dd += a * b;
            }
            for x in dsum {
                dd += x;
            }
            dqi.fill(T::ZERO);
            for j in 0..n {
                let pj = p[j];
                let ds = pj * (da[j] - dd) * scale;
                let aj = if drop { pj * keep[j] } else { pj };
                let krow = &io.k[io.vk.row(ib, ih, j)..][..hd];
                for (x, &kv) in dqi.iter_mut().zip(krow) {
                    *x += ds * kv;
                }
                let dkj = &mut dk[j * hd..(j + 1) * hd];
                for (x, &qv) in dkj.iter_mut().zip(qr) {
                    *x += ds * qv;
                }
                let dvj = &mut dv[j * hd..(j + 1) * hd];
                for (x, &gv) in dvj.iter_mut().zip(gr) {
                    *x += aj * gv;
                }
            }
            dq[i * hd..(i + 1) * hd].copy_from_slice(&dqi);
        }
    }
}

fn view(l: &Layout, what: &str) -> Result<View4> {
    View4::from_layout(l).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "fused-causal-attention: {what} must be (batch, heads, seq, head_dim) with unit last stride, got {:?}",
            l.shape()
        ))
        .bt()
    })
}

fn check(vq: &View4, vk: &View4, vv: &View4) -> Result<()> {
    if vq.dims != vk.dims || vq.dims != vv.dims {
        candle_core::bail!(
            "fused-causal-attention: q, k, v shapes differ: {:?}, {:?}, {:?}",
            vq.dims,
            vk.dims,
            vv.dims
        )
    }
    Ok(())
}

impl CausalAttention {
    fn fwd<T: Real>(&self, io: &HeadIo<'_, T>) -> Vec<T> {
        let [b, h, t, hd] = io.vq.dims;
        let mut o = vec![T::ZERO; b * h * t * hd];
        let ptr = SendPtr(o.as_mut_ptr());
        (0..b * h).into_par_iter().for_each(|bh| {
            let ptr = ptr;
            fwd_head(io, bh / h, bh % h, self.p_drop, self.seed, ptr)
        });
        o
    }

    fn bwd_run<T: Real>(&self, io: &HeadIo<'_, T>, g: &[T], vg: View4) -> Vec<T> {
        let [b, h, t, hd] = io.vq.dims;
        let n = b * h * t * hd;
        let mut packed = vec![T::ZERO; 3 * n];
        let (dq, rest) = packed.split_at_mut(n);
        let (dk, dv) = rest.split_at_mut(n);
        dq.par_chunks_mut(t * hd)
            .zip(dk.par_chunks_mut(t * hd))
            .zip(dv.par_chunks_mut(t * hd))
            .enumerate()
            .for_each(|(bh, ((dq, dk), dv))| {
                bwd_head(io, g, vg, bh / h, bh % h, self.p_drop, self.seed, dq, dk, dv)
            });
        packed
    }
}

impl CustomOp3 for CausalAttention {
    fn name(&self) -> &'static str {
        "fused-causal-attention"
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
        let (vq, vk, vv) = (view(l1, "q")?, view(l2, "k")?, view(l3, "v")?);
        check(&vq, &vk, &vv)?;
        let [b, h, t, hd] = vq.dims;
        let shape = (b, t, h, hd);
        match (s1, s2, s3) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v)) => {
                let io = HeadIo { q, k, v, vq, vk, vv };
                Ok(out(self.fwd(&io), shape))
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v)) => {
                let io = HeadIo { q, k, v, vq, vk, vv };
                Ok(out(self.fwd(&io), shape))
            }
            _ => candle_core::bail!("{}: unsupported dtypes", self.name()),
        }
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // The op's output is (b, t, h, hd); view its gradient as (b, h, t, hd).
        let mut g = grad.transpose(1, 2)?;
        if View4::from_layout(g.layout()).is_none() {
            g = g.contiguous()?;
        }
        let packed = AttentionBwd {
            fwd: CausalAttention {
                p_drop: self.p_drop,
                seed: self.seed,
            },
        }
        .apply(q, k, v, &g)?;
        Ok((
            Some(packed.get(0)?),
            Some(packed.get(1)?),
            Some(packed.get(2)?),
        ))
    }
}

/// Backward of [`CausalAttention`]: `(q, k, v, dO)` → `(3, b, h, t, hd)` packing `dq`, `dk`, `dv`. The gradient
/// `dO` rides along as a captured tensor, since a custom op takes at most three inputs.
struct AttentionBwd {
    fwd: CausalAttention,
}

struct AttentionBwdOp<'a> {
    fwd: &'a CausalAttention,
    g: &'a Tensor,
}

impl AttentionBwd {
    fn apply(&self, q: &Tensor, k: &Tensor, v: &Tensor, g: &Tensor) -> Result<Tensor> {
        q.apply_op3_no_bwd(k, v, &AttentionBwdOp { fwd: &self.fwd, g })
    }
}

impl CustomOp3 for AttentionBwdOp<'_> {
    fn name(&self) -> &'static str {
        "fused-causal-attention-bwd"
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
        let (vq, vk, vv) = (view(l1, "q")?, view(l2, "k")?, view(l3, "v")?);
        check(&vq, &vk, &vv)?;
        let vg = view(self.g.layout(), "grad")?;
        if vg.dims != vq.dims {
            candle_core::bail!("{}: gradient shape {:?} != {:?}", self.name(), vg.dims, vq.dims)
        }
        let [b, h, t, hd] = vq.dims;
        let shape = (3, b, h, t, hd);
        let (gs, _) = self.g.storage_and_layout();
        let gs = match &*gs {
            candle_core::Storage::Cpu(s) => s,
            _ => candle_core::bail!("{}: gradient not on the CPU", self.name()),
        };
        match (s1, s2, s3, gs) {
            (CpuStorage::F32(q), CpuStorage::F32(k), CpuStorage::F32(v), CpuStorage::F32(g)) => {
                let io = HeadIo { q, k, v, vq, vk, vv };
                Ok(out(self.fwd.bwd_run(&io, g, vg), shape))
            }
            (CpuStorage::F64(q), CpuStorage::F64(k), CpuStorage::F64(v), CpuStorage::F64(g)) => {
                let io = HeadIo { q, k, v, vq, vk, vv };
                Ok(out(self.fwd.bwd_run(&io, g, vg), shape))
            }
            _ => candle_core::bail!("{}: unsupported dtypes", self.name()),
        }
    }
}
