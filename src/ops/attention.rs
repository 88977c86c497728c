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

use super::kernels::{dropout_row, map_real, multiversion, out, row_key, Real, View4};
use candle_core::backend::BackendStorage;
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

pub(super) struct HeadIo<'a, T> {
    pub q: &'a [T],
    pub k: &'a [T],
    pub v: &'a [T],
    pub vq: View4,
    pub vk: View4,
    pub vv: View4,
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

/// `s[j] = scale · Σ_d q[d] kt[d][j]` over whole 16-blocks of `s` (`s.len()` a multiple of 16); `kt` is `(hd, tp)`
/// row-major with `tp` a multiple of 16 and zero padding past the sequence. Four blocks at a time keep four
/// independent accumulator chains in registers.
#[inline(always)]
fn scores_blocked<T: Real>(q: &[T], kt: &[T], tp: usize, scale: T, s: &mut [T]) {
    let n = s.len();
    let mut j0 = 0;
    while j0 + 64 <= n {
        let mut acc = [T::ZERO; 64];
        for (d, &qd) in q.iter().enumerate() {
            let row = &kt[d * tp + j0..d * tp + j0 + 64];
            for l in 0..64 {
                acc[l] = qd.fma(row[l], acc[l]);
            }
        }
        for l in 0..64 {
            s[j0 + l] = acc[l] * scale;
        }
        j0 += 64;
    }
    while j0 < n {
        let mut acc = [T::ZERO; 16];
        for (d, &qd) in q.iter().enumerate() {
            let row = &kt[d * tp + j0..d * tp + j0 + 16];
            for l in 0..16 {
                acc[l] = qd.fma(row[l], acc[l]);
            }
        }
        for l in 0..16 {
            s[j0 + l] = acc[l] * scale;
        }
        j0 += 16;
    }
}

/// Transposes the `(t, HD)` rows of one head into `(HD, tp)` with zero padding.
#[inline(always)]
fn load_transposed<T: Real>(src: &[T], v: &View4, ib: usize, ih: usize, tp: usize) -> Vec<T> {
    let [_, _, t, hd] = v.dims;
    let mut out = vec![T::ZERO; hd * tp];
    for j in 0..t {
        let r = &src[v.row(ib, ih, j)..][..hd];
        for d in 0..hd {
            out[d * tp + j] = r[d];
        }
    }
    out
}

/// `s[r][j] = scale · q_r·k_j` for [`QB`] query rows at once over `n` keys (`n` a multiple of 16): each key chunk is
/// loaded once for the four rows.
#[inline(always)]
fn scores_blocked_rows<T: Real, const HD: usize>(
    q: &[[T; HD]; QB],
    kt: &[T],
    tp: usize,
    scale: T,
    n: usize,
    s: &mut [T],
) {
    let mut j0 = 0;
    while j0 + 32 <= n {
        scores_rows_chunk::<T, HD, 32>(q, kt, tp, scale, j0, s);
        j0 += 32;
    }
    while j0 < n {
        scores_rows_chunk::<T, HD, 16>(q, kt, tp, scale, j0, s);
        j0 += 16;
    }
}

/// One chunk of `W` keys from `j0` of [`scores_blocked_rows`], accumulated in registers.
#[inline(always)]
fn scores_rows_chunk<T: Real, const HD: usize, const W: usize>(
    q: &[[T; HD]; QB],
    kt: &[T],
    tp: usize,
    scale: T,
    j0: usize,
    s: &mut [T],
) {
    let mut acc = [[T::ZERO; W]; QB];
    for d in 0..HD {
        let row = &kt[d * tp + j0..d * tp + j0 + W];
        for r in 0..QB {
            let qd = q[r][d];
            for l in 0..W {
                acc[r][l] = qd.fma(row[l], acc[r][l]);
            }
        }
    }
    for r in 0..QB {
        for l in 0..W {
            s[r * tp + j0 + l] = acc[r][l] * scale;
        }
    }
}

/// Query rows per block of the forward and backward kernels.
const QB: usize = 4;

/// Forward of one head with a compile-time head dim.
#[inline(always)]
fn fwd_head_const<T: Real, const HD: usize>(
    io: &HeadIo<'_, T>,
    ib: usize,
    ih: usize,
    p_drop: f32,
    seed: u64,
    o: SendPtr<T>,
) {
    let [_, h, t, _] = io.vq.dims;
    let tp = t.div_ceil(16) * 16;
    let scale = T::c(1.0 / (HD as f64).sqrt());
    let kt = load_transposed(io.k, &io.vk, ib, ih, tp);
    let mut s = vec![T::ZERO; tp];
    let mut keep = vec![T::ZERO; tp];
    let drop = p_drop > 0.0;
    let threshold = (p_drop as f64 * 4_294_967_296.0).min(4_294_967_295.0) as u32;
    let kscale = T::c(1.0 / (1.0 - p_drop as f64));
    let head = (ib * h + ih) as u64;
    for i in 0..t {
        let n = i + 1;
        let nb = n.div_ceil(16) * 16;
        let qr = &io.q[io.vq.row(ib, ih, i)..][..HD];
        scores_blocked(qr, &kt, tp, scale, &mut s[..nb]);
        let s = &mut s[..n];
        softmax_row(s);
        if drop {
            let keep = &mut keep[..n];
            dropout_row(
                row_key(seed, head * t as u64 + i as u64),
                threshold,
                kscale,
                keep,
            );
            for (x, &k) in s.iter_mut().zip(keep.iter()) {
                *x *= k;
            }
        }
        let mut a0 = [T::ZERO; HD];
        let mut a1 = [T::ZERO; HD];
        let mut j = 0;
        while j + 2 <= n {
            let v0 = &io.v[io.vv.row(ib, ih, j)..][..HD];
            let v1 = &io.v[io.vv.row(ib, ih, j + 1)..][..HD];
            let (p0, p1) = (s[j], s[j + 1]);
            for d in 0..HD {
                a0[d] = p0.fma(v0[d], a0[d]);
                a1[d] = p1.fma(v1[d], a1[d]);
            }
            j += 2;
        }
        if j < n {
            let v0 = &io.v[io.vv.row(ib, ih, j)..][..HD];
            for d in 0..HD {
                a0[d] += s[j] * v0[d];
            }
        }
        for d in 0..HD {
            a0[d] += a1[d];
        }
        let off = ((ib * t + i) * h + ih) * HD;
        // SAFETY: row (ib, i, ih) belongs to this task's head only; the buffer holds b·t·h·hd elements.
        let dst = unsafe { std::slice::from_raw_parts_mut(o.0.add(off), HD) };
        dst.copy_from_slice(&a0);
    }
}

/// Backward of one head with a compile-time head dim, [`QB`] query rows at a time: each key row's `dk_j`, `dv_j`
/// is loaded and stored once per block of queries instead of once per query.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn bwd_head_const<T: Real, const HD: usize>(
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
    let [_, h, t, _] = io.vq.dims;
    let tp = t.div_ceil(16) * 16;
    let scale = T::c(1.0 / (HD as f64).sqrt());
    let kt = load_transposed(io.k, &io.vk, ib, ih, tp);
    let vt = load_transposed(io.v, &io.vv, ib, ih, tp);
    // Per block row r: `ds[r]` = dS row (zero past the diagonal), `aw[r]` = dropped probabilities (the weights of
    // dO in dV).
    let mut ds = vec![T::ZERO; QB * tp];
    let mut aw = vec![T::ZERO; QB * tp];
    let mut keep = vec![T::ZERO; tp];
    let drop = p_drop > 0.0;
    let threshold = (p_drop as f64 * 4_294_967_296.0).min(4_294_967_295.0) as u32;
    let kscale = T::c(1.0 / (1.0 - p_drop as f64));
    let head = (ib * h + ih) as u64;
    let mut i0 = 0;
    while i0 < t {
        let rows = QB.min(t - i0);
        let nmax = i0 + rows;
        let mut qb = [[T::ZERO; HD]; QB];
        let mut gb = [[T::ZERO; HD]; QB];
        for r in 0..rows {
            qb[r].copy_from_slice(&io.q[io.vq.row(ib, ih, i0 + r)..][..HD]);
            gb[r].copy_from_slice(&g[vg.row(ib, ih, i0 + r)..][..HD]);
        }
        let nb = nmax.div_ceil(16) * 16;
        scores_blocked_rows(&qb, &kt, tp, scale, nb, &mut aw);
        scores_blocked_rows(&gb, &vt, tp, T::ONE, nb, &mut ds);
        for r in 0..rows {
            let i = i0 + r;
            let n = i + 1;
            let p = &mut aw[r * tp..(r + 1) * tp];
            let d = &mut ds[r * tp..(r + 1) * tp];
            softmax_row(&mut p[..n]);
            if drop {
                let keep = &mut keep[..n];
                dropout_row(
                    row_key(seed, head * t as u64 + i as u64),
                    threshold,
                    kscale,
                    keep,
                );
                for (x, &k) in d[..n].iter_mut().zip(keep.iter()) {
                    *x *= k; // dP_j
                }
            }
            // D = Σ p_j dP_j
            let mut dsum = [T::ZERO; 16];
            let mut pc = p[..n].chunks_exact(16);
            let mut dc = d[..n].chunks_exact(16);
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
            for j in 0..n {
                d[j] = p[j] * (d[j] - dd) * scale;
            }
            if drop {
                for j in 0..n {
                    p[j] *= keep[j];
                }
            }
            for j in n..nmax {
                d[j] = T::ZERO;
                p[j] = T::ZERO;
            }
        }
        let mut dqb = [[T::ZERO; HD]; QB];
        for j in 0..nmax {
            let kr: &[T; HD] = io.k[io.vk.row(ib, ih, j)..][..HD].try_into().unwrap();
            let dkj: &mut [T; HD] = (&mut dk[j * HD..(j + 1) * HD]).try_into().unwrap();
            let mut kacc = *dkj;
            for r in 0..rows {
                let s = ds[r * tp + j];
                for d in 0..HD {
                    dqb[r][d] = s.fma(kr[d], dqb[r][d]);
                    kacc[d] = s.fma(qb[r][d], kacc[d]);
                }
            }
            *dkj = kacc;
            let dvj: &mut [T; HD] = (&mut dv[j * HD..(j + 1) * HD]).try_into().unwrap();
            let mut vacc = *dvj;
            for r in 0..rows {
                let a = aw[r * tp + j];
                for d in 0..HD {
                    vacc[d] = a.fma(gb[r][d], vacc[d]);
                }
            }
            *dvj = vacc;
        }
        for (r, row) in dqb.iter().take(rows).enumerate() {
            let i = i0 + r;
            dq[i * HD..(i + 1) * HD].copy_from_slice(row);
        }
        i0 += rows;
    }
}

multiversion! {
    fn fwd_head_32<T: Real>(io: &HeadIo<'_, T>, ib: usize, ih: usize, p_drop: f32, seed: u64, o: SendPtr<T>) {
        fwd_head_const::<T, 32>(io, ib, ih, p_drop, seed, o)
    }
}

multiversion! {
    fn fwd_head_64<T: Real>(io: &HeadIo<'_, T>, ib: usize, ih: usize, p_drop: f32, seed: u64, o: SendPtr<T>) {
        fwd_head_const::<T, 64>(io, ib, ih, p_drop, seed, o)
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn bwd_head_32<T: Real>(
        io: &HeadIo<'_, T>, g: &[T], vg: View4, ib: usize, ih: usize, p_drop: f32, seed: u64,
        dq: &mut [T], dk: &mut [T], dv: &mut [T],
    ) {
        bwd_head_const::<T, 32>(io, g, vg, ib, ih, p_drop, seed, dq, dk, dv)
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn bwd_head_64<T: Real>(
        io: &HeadIo<'_, T>, g: &[T], vg: View4, ib: usize, ih: usize, p_drop: f32, seed: u64,
        dq: &mut [T], dk: &mut [T], dv: &mut [T],
    ) {
        bwd_head_const::<T, 64>(io, g, vg, ib, ih, p_drop, seed, dq, dk, dv)
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
    pub(super) fn fwd<T: Real>(&self, io: &HeadIo<'_, T>) -> Vec<T> {
        let [b, h, t, hd] = io.vq.dims;
        let mut o = vec![T::ZERO; b * h * t * hd];
        let ptr = SendPtr(o.as_mut_ptr());
        (0..b * h).into_par_iter().for_each(|bh| {
            let (ib, ih) = (bh / h, bh % h);
            match hd {
                32 => fwd_head_32(io, ib, ih, self.p_drop, self.seed, ptr),
                64 => fwd_head_64(io, ib, ih, self.p_drop, self.seed, ptr),
                _ => fwd_head(io, ib, ih, self.p_drop, self.seed, ptr),
            }
        });
        o
    }

    pub(super) fn bwd_run<T: Real>(&self, io: &HeadIo<'_, T>, g: &[T], vg: View4) -> Vec<T> {
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
                let (ib, ih) = (bh / h, bh % h);
                let (p, s) = (self.p_drop, self.seed);
                match hd {
                    32 => bwd_head_32(io, g, vg, ib, ih, p, s, dq, dk, dv),
                    64 => bwd_head_64(io, g, vg, ib, ih, p, s, dq, dk, dv),
                    _ => bwd_head(io, g, vg, ib, ih, p, s, dq, dk, dv),
                }
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
        map_real!(self.name(), s1.dtype(), |T| {
            let (q, k, v) = (T::slice(s1)?, T::slice(s2)?, T::slice(s3)?);
            let io = HeadIo {
                q,
                k,
                v,
                vq,
                vk,
                vv,
            };
            Ok(out(self.fwd(&io), shape))
        })
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
            candle_core::bail!(
                "{}: gradient shape {:?} != {:?}",
                self.name(),
                vg.dims,
                vq.dims
            )
        }
        let [b, h, t, hd] = vq.dims;
        let shape = (3, b, h, t, hd);
        let (gs, _) = self.g.storage_and_layout();
        let gs = match &*gs {
            candle_core::Storage::Cpu(s) => s,
            _ => candle_core::bail!("{}: gradient not on the CPU", self.name()),
        };
        map_real!(self.name(), s1.dtype(), |T| {
            let (q, k, v, g) = (T::slice(s1)?, T::slice(s2)?, T::slice(s3)?, T::slice(gs)?);
            let io = HeadIo {
                q,
                k,
                v,
                vq,
                vk,
                vv,
            };
            Ok(out(self.fwd.bwd_run(&io, g, vg), shape))
        })
    }
}
