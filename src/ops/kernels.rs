//! Shared machinery of the fused CPU ops: the float trait the kernels are generic over, vectorisable `exp`/`erf`,
//! run-time selection of AVX-512 / AVX2 code paths, and helpers to read candle's CPU storage.

use candle_core::{CpuStorage, DType, Device, Layout, Result, Shape, Tensor};

/// The float types the fused kernels run on: `f32` (the fast path) and `f64` (accurate, used by the tests'
/// finite differences). Other dtypes go to the slow twins.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + 'static
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
    + std::ops::AddAssign
    + std::ops::SubAssign
    + std::ops::MulAssign
    + candle_core::WithDType
{
    const ZERO: Self;
    const ONE: Self;
    fn c(x: f64) -> Self;
    fn f64(self) -> f64;
    /// `exp`, vectorisable (branch-free polynomial) for `f32`, libm for `f64`.
    fn vexp(self) -> Self;
    /// `erf`, vectorisable for `f32` (abs. error < 2e-7), accurate for `f64`.
    fn verf(self) -> Self;
    fn sqrt(self) -> Self;
    /// `self · a + b`, fused (one rounding). Compiles to an FMA instruction in the AVX2/AVX-512 code paths; the
    /// portable path calls libm.
    fn fma(self, a: Self, b: Self) -> Self;
    fn ln(self) -> Self;
    fn vmax(self, o: Self) -> Self;
    fn vmin(self, o: Self) -> Self;
    fn slice(s: &CpuStorage) -> Result<&[Self]>;
    fn storage(v: Vec<Self>) -> CpuStorage;
    /// The vector behind a storage of this type, without copying.
    fn into_vec(s: CpuStorage) -> Option<Vec<Self>>;
}

/// The `Real` impl of a float type: only the conversions, `exp`, `erf` and the storage variant differ.
macro_rules! impl_real {
    ($t:ident, $variant:ident, c: $c:expr, f64: $f:expr, exp: $exp:expr, erf: $erf:expr) => {
        impl Real for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            #[inline(always)]
            fn c(x: f64) -> Self {
                $c(x)
            }
            #[inline(always)]
            fn f64(self) -> f64 {
                $f(self)
            }
            #[inline(always)]
            fn vexp(self) -> Self {
                $exp(self)
            }
            #[inline(always)]
            fn verf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                $t::sqrt(self)
            }
            #[inline(always)]
            fn fma(self, a: Self, b: Self) -> Self {
                $t::mul_add(self, a, b)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                $t::ln(self)
            }
            #[inline(always)]
            fn vmax(self, o: Self) -> Self {
                if self > o {
                    self
                } else {
                    o
                }
            }
            #[inline(always)]
            fn vmin(self, o: Self) -> Self {
                if self < o {
                    self
                } else {
                    o
                }
            }
            fn slice(s: &CpuStorage) -> Result<&[Self]> {
                s.as_slice::<$t>()
            }
            fn storage(v: Vec<Self>) -> CpuStorage {
                CpuStorage::$variant(v)
            }
            fn into_vec(s: CpuStorage) -> Option<Vec<Self>> {
                match s {
                    CpuStorage::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

impl_real!(f32, F32, c: |x: f64| x as f32, f64: |x: f32| x as f64, exp: exp_f32, erf: erf_f32);
impl_real!(f64, F64, c: |x: f64| x, f64: |x: f64| x, exp: f64::exp, erf: candle_core::cpu::erf::erf_f64);

/// `exp(x)` for `f32` without branches or calls, so loops over it vectorise: `2^n · p(r)` with `n = round(x·log2 e)`,
/// `r = x - n·ln 2` split in two parts, and a degree-6 Taylor polynomial (relative error ~2e-7). Inputs are
/// clamped to `[-87.3, 88.7]` (so `exp(-inf)` gives ~1e-38, not 0; callers never rely on exact zeros).
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer kept in the low mantissa bits
    let x = x.vmax(-87.3).vmin(88.7);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(t.to_bits().wrapping_shl(23).wrapping_add(127 << 23));
    p * scale
}

/// `erf(x)` for `f32`, branch-free (Abramowitz & Stegun 7.1.26 with the vectorisable [`exp_f32`]), abs. error
/// below 2e-7.
#[inline(always)]
pub(crate) fn erf_f32(x: f32) -> f32 {
    let (e, _) = erf_and_gauss_f32(x);
    e
}

/// `(erf(x), exp(-x²))`, sharing the exponential.
#[inline(always)]
pub(crate) fn erf_and_gauss_f32(x: f32) -> (f32, f32) {
    let a = if x < 0.0 { -x } else { x };
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t
        * (0.254_829_6
            + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let g = exp_f32(-a * a);
    let y = 1.0 - poly * g;
    (if x < 0.0 { -y } else { y }, g)
}

/// Which instruction-set path the fused kernels take: 2 = AVX-512 (F/BW/DQ/VL + FMA), 1 = AVX2 + FMA, 0 = portable.
/// `CANDLE_STRUCTURED_ISA=portable|avx2|avx512` caps it (for comparisons).
pub(crate) fn isa_level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[allow(unused_mut)]
        let mut level = 0u8;
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                level = 1;
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512dq")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    level = 2;
                }
            }
        }
        let cap = match std::env::var("CANDLE_STRUCTURED_ISA").as_deref() {
            Ok("portable") => 0,
            Ok("avx2") => 1,
            _ => 2,
        };
        level.min(cap)
    })
}

/// Defines a function whose body is compiled three times (AVX-512, AVX2+FMA, portable) and dispatched at run time
/// by [`isa_level`]. The body must be safe code; generic parameters are allowed.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident $(<$($g:ident : $b:path),*>)? ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name $(<$($g: $b),*>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn inner $(<$($g: $b),*>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4 $(<$($g: $b),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    inner $(::<$($g),*>)? ($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3 $(<$($g: $b),*>)? ($($arg: $ty),*) $(-> $ret)? {
                    inner $(::<$($g),*>)? ($($arg),*)
                }
                match $crate::ops::kernels::isa_level() {
                    // SAFETY: the level is only this high when the CPU reports these features.
                    2 => return unsafe { v4 $(::<$($g),*>)? ($($arg),*) },
                    1 => return unsafe { v3 $(::<$($g),*>)? ($($arg),*) },
                    _ => {}
                }
            }
            inner $(::<$($g),*>)? ($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Whether `t` can take the fused CPU path: on the CPU, and `f32` or `f64`.
pub(crate) fn fused_ok(ts: &[&Tensor]) -> bool {
    all_on(ts, Device::is_cpu, &[DType::F32, DType::F64])
}

/// Runs `$body` with the type alias `$t` bound to the float type of `$dtype` (f32 or f64), and refuses other dtypes
/// in the name of op `$name`: the one dtype dispatch of the fused CPU ops, written once as candle writes its
/// `map_dtype`, so each op's body is generic over [`Real`] instead of repeated per dtype.
macro_rules! map_real {
    ($name:expr, $dtype:expr, |$t:ident| $body:expr) => {
        match $dtype {
            candle_core::DType::F32 => {
                type $t = f32;
                $body
            }
            candle_core::DType::F64 => {
                type $t = f64;
                $body
            }
            dtype => candle_core::bail!(
                "{}: unsupported dtype {dtype:?} (the fused CPU ops take f32 and f64)",
                $name
            ),
        }
    };
}
pub(crate) use map_real;

/// Whether the tensors are all on a device that `on` accepts, all of one dtype among `dtypes`, and none empty
/// (empty tensors take the composed twins, which candle's ops handle, instead of the kernels' row loops).
pub(crate) fn all_on(ts: &[&Tensor], on: fn(&Device) -> bool, dtypes: &[DType]) -> bool {
    ts.iter()
        .all(|t| on(t.device()) && dtypes.contains(&t.dtype()) && t.elem_count() > 0)
        && ts.windows(2).all(|w| w[0].dtype() == w[1].dtype())
}

/// The contiguous slice behind a layout, or `None` when the layout is strided.
pub(crate) fn contiguous_slice<'a, T: Real>(
    s: &'a CpuStorage,
    l: &Layout,
) -> Result<Option<&'a [T]>> {
    let data = T::slice(s)?;
    Ok(l.contiguous_offsets().map(|(a, b)| &data[a..b]))
}

/// The contiguous slice behind a layout, or an error naming the op when it is strided (callers make their inputs
/// contiguous before applying the op).
pub(crate) fn expect_contiguous<'a, T: Real>(
    s: &'a CpuStorage,
    l: &Layout,
    op: &str,
) -> Result<&'a [T]> {
    contiguous_slice(s, l)?
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: expected a contiguous input")).bt())
}

/// A tensor's storage held for reading in a backward pass, where custom ops get tensors rather than storages.
pub(crate) struct CpuTensor<'a> {
    storage: candle_core::StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> CpuTensor<'a> {
    pub fn new(t: &'a Tensor) -> Self {
        let (storage, layout) = t.storage_and_layout();
        Self { storage, layout }
    }
    pub fn layout(&self) -> &Layout {
        self.layout
    }
    /// The contiguous CPU slice, or an error naming the op (strided or not on the CPU).
    pub fn slice<T: Real>(&self, op: &str) -> Result<&[T]> {
        match &*self.storage {
            candle_core::Storage::Cpu(s) => expect_contiguous(s, self.layout, op),
            _ => candle_core::bail!("{op}: expected CPU tensors"),
        }
    }
}

/// A 4-D strided view `(d0, d1, d2, d3)` with unit stride on the last axis, as the attention and rotary kernels
/// read their inputs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct View4 {
    pub dims: [usize; 4],
    pub strides: [usize; 4],
    pub offset: usize,
}

impl View4 {
    /// From a candle layout; `None` unless 4-D with unit last stride.
    pub fn from_layout(l: &Layout) -> Option<Self> {
        let d = l.dims();
        let s = l.stride();
        if d.len() != 4 || (s[3] != 1 && d[3] > 1) {
            return None;
        }
        Some(Self {
            dims: [d[0], d[1], d[2], d[3]],
            strides: [s[0], s[1], s[2], s[3].max(1)],
            offset: l.start_offset(),
        })
    }
    /// Element offset of row `(i0, i1, i2, ·)`.
    #[inline(always)]
    pub fn row(&self, i0: usize, i1: usize, i2: usize) -> usize {
        self.offset + i0 * self.strides[0] + i1 * self.strides[1] + i2 * self.strides[2]
    }
}

/// An error naming the op unless the two inputs have one shape.
pub(crate) fn expect_same_shape(l1: &Layout, l2: &Layout, op: &str) -> Result<()> {
    if l1.shape() != l2.shape() {
        candle_core::bail!(
            "{op}: shape mismatch, {:?} and {:?}",
            l1.shape(),
            l2.shape()
        )
    }
    Ok(())
}

/// Builds a candle output: storage plus shape.
pub(crate) fn out<T: Real>(v: Vec<T>, shape: impl Into<Shape>) -> (CpuStorage, Shape) {
    (T::storage(v), shape.into())
}

/// Minimum number of elements per parallel task for element-wise kernels.
pub(crate) const PAR_GRAIN: usize = 1 << 14;

/// Counter-based hashing for dropout masks that the backward can regenerate instead of storing.
#[inline(always)]
pub(crate) fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// The per-row key of the dropout hash.
#[inline(always)]
pub(crate) fn row_key(seed: u64, row: u64) -> u32 {
    let a = lowbias32((row as u32) ^ (seed as u32));
    lowbias32(a ^ ((row >> 32) as u32).wrapping_mul(0x9e37_79b9) ^ ((seed >> 32) as u32))
}

multiversion! {
    /// Dropout multipliers of one row, `keep[j] ∈ {0, 1/(1-p)}` for `j < keep.len()`.
    pub(crate) fn dropout_row<T: Real>(key: u32, threshold: u32, scale: T, keep: &mut [T]) {
        for (j, k) in keep.iter_mut().enumerate() {
            let u = lowbias32(key.wrapping_add((j as u32).wrapping_mul(0x9e37_79b9)));
            *k = if u >= threshold { scale } else { T::ZERO };
        }
    }
}
