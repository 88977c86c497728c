//! Causal self-attention with rotary embeddings straight from a fused QKV projection, as one graph node.
//!
//! Input `qkv` `(b, t, 3·d)` holds, per position, the queries, keys and values of all heads (`d = heads · hd`, heads
//! contiguous); the output `(b, t, d)` holds the heads' outputs side by side, ready for the output projection.
//! Composed from candle ops this takes a reshape, a permute, three slices made contiguous, two rotary ops, the
//! attention and a transpose back: each a graph node whose backward allocates, zero-fills and adds a gradient
//! buffer (the slices' backward even pads their gradients back to the full `3·d` width). Here the forward rotates
//! `q` and `k` into per-head buffers, runs the fused attention kernels with `v` read in place, and the backward
//! runs the attention backward and writes `dq`, `dk` (rotated back) and `dv` directly into one `(b, t, 3·d)`
//! gradient.

use super::attention::{CausalAttention, HeadIo};
use super::kernels::{expect_contiguous, map_real, multiversion, CpuTensor, Real, View4};
use super::rotary::{rotate, rotate_head};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Mutex;

multiversion! {
    /// One position's gradient row `(3·d)` from the packed `(3, b, h, t, hd)` attention gradient: `dq`, `dk`
    /// rotated back, `dv` copied.
    fn scatter_row<T: Real>(packed: &[T], hv: View4, ib: usize, it: usize, cos: &[T], sin: &[T], dst: &mut [T]) {
        let [_, h, _, hd] = hv.dims;
        let n = packed.len() / 3;
        let d = h * hd;
        for ih in 0..h {
            let o = hv.row(ib, ih, it);
            for part in 0..3 {
                let src = &packed[part * n + o..part * n + o + hd];
                let dst = &mut dst[part * d + ih * hd..part * d + (ih + 1) * hd];
                if part < 2 {
                    rotate(src, cos, sin, dst, true);
                } else {
                    dst.copy_from_slice(src);
                }
            }
        }
    }
}

pub(crate) struct RotaryAttention {
    n_heads: usize,
    /// Dropout on the attention probabilities (0 disables it).
    p_drop: f32,
    seed: u64,
    /// The rotated queries and keys of the forward, taken by the backward.
    saved: Mutex<Option<[CpuStorage; 2]>>,
}

/// `(b, t, h, hd)` of a `(b, t, 3·d)` input.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    hd: usize,
}

impl Dims {
    fn d(&self) -> usize {
        self.h * self.hd
    }
    /// A contiguous `(b, h, t, hd)` buffer.
    fn heads_view(&self) -> View4 {
        let Dims { b, t, h, hd } = *self;
        View4 {
            dims: [b, h, t, hd],
            strides: [h * t * hd, t * hd, hd, 1],
            offset: 0,
        }
    }
    /// Part `part` (0 = q, 1 = k, 2 = v) of the `(b, t, 3·d)` input, or (with `width = d`) a `(b, t, d)` tensor, as
    /// `(b, h, t, hd)`.
    fn packed_view(&self, width: usize, part: usize) -> View4 {
        let Dims { b, t, h, hd } = *self;
        View4 {
            dims: [b, h, t, hd],
            strides: [t * width, hd, width, 1],
            offset: part * self.d(),
        }
    }
}

impl RotaryAttention {
    pub fn new(n_heads: usize, p_drop: f32, seed: u64) -> Self {
        Self {
            n_heads,
            p_drop,
            seed,
            saved: Mutex::new(None),
        }
    }

    fn dims(&self, l: &Layout, cos: &Layout, sin: &Layout) -> Result<Dims> {
        let name = "fused-rotary-attention";
        let (b, t, w) = l.shape().dims3()?;
        let h = self.n_heads;
        if h == 0 || w % (3 * h) != 0 || !(w / (3 * h)).is_multiple_of(2) {
            candle_core::bail!("{name}: last dimension {w} is not 3 · {h} heads · an even head dim")
        }
        let hd = w / (3 * h);
        if cos.dims() != [t, hd / 2] || sin.dims() != [t, hd / 2] {
            candle_core::bail!(
                "{name}: cos/sin must be ({t}, {}), got {:?} and {:?}",
                hd / 2,
                cos.dims(),
                sin.dims()
            )
        }
        Ok(Dims { b, t, h, hd })
    }

    /// Parts q (0) and k (1) of `qkv`, rotated, as contiguous `(b, h, t, hd)` buffers.
    fn rotated<T: Real>(qkv: &[T], dm: Dims, cos: &[T], sin: &[T]) -> [Vec<T>; 2] {
        let Dims { h, t, hd, .. } = dm;
        [0, 1].map(|part| {
            let src = dm.packed_view(3 * dm.d(), part);
            let mut y = vec![T::ZERO; dm.b * h * t * hd];
            y.par_chunks_mut(t * hd).enumerate().for_each(|(bh, yh)| {
                let (ib, ih) = (bh / h, bh % h);
                rotate_head(qkv, src, ib, ih, cos, sin, yh, false);
            });
            y
        })
    }

    /// The attention kernels' inputs: the rotated `q`, `k` and `v` read in place from `qkv`.
    fn io<'a, T>(qkv: &'a [T], q: &'a [T], k: &'a [T], dm: Dims) -> HeadIo<'a, T> {
        HeadIo {
            q,
            k,
            v: qkv,
            vq: dm.heads_view(),
            vk: dm.heads_view(),
            vv: dm.packed_view(3 * dm.d(), 2),
        }
    }

    fn attention(&self) -> CausalAttention {
        CausalAttention {
            p_drop: self.p_drop,
            seed: self.seed,
        }
    }

    fn fwd<T: Real>(&self, qkv: &[T], dm: Dims, cos: &[T], sin: &[T]) -> Vec<T> {
        let [q, k] = Self::rotated(qkv, dm, cos, sin);
        // (b, t, h, hd) = (b, t, d).
        let o = self.attention().fwd(&Self::io(qkv, &q, &k, dm));
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) =
            Some([T::storage(q), T::storage(k)]);
        o
    }

    fn bwd<T: Real>(&self, qkv: &[T], g: &[T], dm: Dims, cos: &[T], sin: &[T]) -> Vec<T> {
        let Dims { b, t, .. } = dm;
        let d = dm.d();
        let saved = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        // A second backward through the same graph rotates again.
        let [q, k] = match saved {
            Some([q, k]) => match (T::into_vec(q), T::into_vec(k)) {
                (Some(q), Some(k)) => [q, k],
                _ => Self::rotated(qkv, dm, cos, sin),
            },
            None => Self::rotated(qkv, dm, cos, sin),
        };
        // (3, b, h, t, hd): dq and dk of the rotated q and k, and dv.
        let packed = self
            .attention()
            .bwd_run(&Self::io(qkv, &q, &k, dm), g, dm.packed_view(d, 0));
        drop((q, k));
        let half = dm.hd / 2;
        let hv = dm.heads_view();
        let mut dqkv = vec![T::ZERO; b * t * 3 * d];
        dqkv.par_chunks_mut(3 * d)
            .enumerate()
            .for_each(|(row, dst)| {
                let (ib, it) = (row / t, row % t);
                let (c, s) = (
                    &cos[it * half..(it + 1) * half],
                    &sin[it * half..(it + 1) * half],
                );
                scatter_row(&packed, hv, ib, it, c, s, dst);
            });
        dqkv
    }
}

impl CustomOp3 for RotaryAttention {
    fn name(&self) -> &'static str {
        "fused-rotary-attention"
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
        let dm = self.dims(l1, l2, l3)?;
        let shape = (dm.b, dm.t, dm.d());
        fn go<T: Real>(
            op: &RotaryAttention,
            dm: Dims,
            (s1, l1): (&CpuStorage, &Layout),
            (s2, l2): (&CpuStorage, &Layout),
            (s3, l3): (&CpuStorage, &Layout),
        ) -> Result<CpuStorage> {
            let name = op.name();
            let qkv = expect_contiguous::<T>(s1, l1, name)?;
            let cos = expect_contiguous::<T>(s2, l2, name)?;
            let sin = expect_contiguous::<T>(s3, l3, name)?;
            Ok(T::storage(op.fwd(qkv, dm, cos, sin)))
        }
        let args = ((s1, l1), (s2, l2), (s3, l3));
        let storage = map_real!(self.name(), s1.dtype(), |T| go::<T>(
            self, dm, args.0, args.1, args.2
        )?);
        Ok((storage, shape.into()))
    }

    fn bwd(
        &self,
        qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = self.dims(qkv.layout(), cos.layout(), sin.layout())?;
        let g = grad.contiguous()?;
        fn go<T: Real>(
            op: &RotaryAttention,
            dm: Dims,
            qkv: &Tensor,
            cos: &Tensor,
            sin: &Tensor,
            g: &Tensor,
        ) -> Result<Vec<T>> {
            let name = "fused-rotary-attention-bwd";
            let [q, c, s, g] = [qkv, cos, sin, g].map(CpuTensor::new);
            Ok(op.bwd(
                q.slice::<T>(name)?,
                g.slice::<T>(name)?,
                dm,
                c.slice::<T>(name)?,
                s.slice::<T>(name)?,
            ))
        }
        let dqkv = map_real!("fused-rotary-attention-bwd", qkv.dtype(), |T| {
            Tensor::from_vec(
                go::<T>(self, dm, qkv, cos, sin, &g)?,
                qkv.shape(),
                qkv.device(),
            )?
        });
        Ok((Some(dqkv), None, None))
    }
}
