//! x86-64 SIMD kernels (AVX2 + FMA, AVX-512F) for the in-place Walsh-Hadamard transform.
//!
//! One generic kernel, written over the small [`Vector`] trait and instantiated per register type inside
//! `#[target_feature]` entry points (every generic function is `#[inline(always)]`, so the intrinsics are compiled
//! with the entry point's features). For a row of `n = 2^k` elements in vectors of `W = 2^w` lanes:
//!
//! 1. the first pass loads up to `2^r` consecutive vectors, runs the `w` stages of stride `< W` inside each register
//!    (a lane permutation and one FMA with a ±1 sign vector per stage), then `r` stages of butterflies across the
//!    registers;
//! 2. every later pass loads `2^r` vectors at a stride of `h` vectors and runs `r` more stages across registers
//!    (radix-`2^r`), so a row of `2^k` elements costs about `(k - w) / r` sweeps over memory;
//! 3. rows longer than an L1-sized block are first transformed block by block (each block stays in L1), then the
//!    remaining stages run as radix-`2^r` passes over the whole row, at most 8 registers at once when the stride is
//!    4 KiB or more (such vectors share one set of the L1, and holding more of them than its ways evicts lines
//!    still in use); rows longer than L2 are first transformed that way in L2-sized blocks, so only the stages that
//!    span blocks sweep the whole row, in one sweep through L3 or memory: one pass, run chunk by chunk beside the
//!    last block's last pass (which makes each chunk of that block while it is still in cache), or, for more
//!    stages than one pass holds, column chunks of every block taken through all of those passes while they sit in
//!    L2;
//! 4. the scale is multiplied into the values of the last pass before they are stored;
//! 5. rows of up to 16 AVX2 registers skip all of that: [`small`] is one straight-line kernel per length, written
//!    for latency (a repeated transform of a hot short row is a single dependency chain); where 512-bit operations
//!    run at full width, the rows that fill all 16 AVX2 registers use 8 AVX-512 ones instead.
//!
//! Each stage performs the same additions, in the same order, as the portable kernel, so results agree bit for bit.

use std::arch::x86_64::*;

/// A SIMD register of `2^LOG` lanes of `E`, with the operations the kernel needs.
pub(super) trait Vector: Copy {
    type E: Copy + PartialEq;
    /// log2 of the lane count.
    const LOG: u32;
    const ONE: Self::E;
    const NEG_ONE: Self::E;
    unsafe fn load(p: *const Self::E) -> Self;
    unsafe fn store(self, p: *mut Self::E);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// `self · m + a`, rounded once.
    unsafe fn fma(self, m: Self, a: Self) -> Self;
    unsafe fn splat(v: Self::E) -> Self;
    /// The `LOG` stages of strides `1, 2, …, 2^(LOG-1)` inside the register.
    unsafe fn inreg(self) -> Self;
    /// [`Vector::inreg`] with a shorter dependency chain (for short rows, where the latency of one call is what
    /// counts): each stage adds the permuted register to the register with its sign bits flipped where bit `s` of
    /// the lane index is set, the flip running beside the permutation. The types that run short rows override
    /// it.
    #[inline(always)]
    unsafe fn inreg_short(self) -> Self {
        self.inreg()
    }
}

#[derive(Clone, Copy)]
pub(super) struct F32x8(__m256);
#[derive(Clone, Copy)]
pub(super) struct F64x4(__m256d);
#[derive(Clone, Copy)]
pub(super) struct F32x16(__m512);
#[derive(Clone, Copy)]
pub(super) struct F64x8(__m512d);

// In every in-register stage of stride s, lane i becomes x[i ^ s] + sign_i · x[i] with sign_i = +1 where bit s of i
// is clear (x[i] + x[i + s]) and -1 where it is set (x[i - s] - x[i]): one permutation and one exact FMA.

impl Vector for F32x8 {
    type E = f32;
    const LOG: u32 = 3;
    const ONE: f32 = 1.0;
    const NEG_ONE: f32 = -1.0;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        F32x8(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F32x8(_mm256_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        F32x8(_mm256_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F32x8(_mm256_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, m: Self, a: Self) -> Self {
        F32x8(_mm256_fmadd_ps(self.0, m.0, a.0))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        F32x8(_mm256_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn inreg(self) -> Self {
        let x = self.0;
        let s1 = _mm256_setr_ps(1., -1., 1., -1., 1., -1., 1., -1.);
        let x = _mm256_fmadd_ps(x, s1, _mm256_permute_ps(x, 0b1011_0001));
        let s2 = _mm256_setr_ps(1., 1., -1., -1., 1., 1., -1., -1.);
        let x = _mm256_fmadd_ps(x, s2, _mm256_permute_ps(x, 0b0100_1110));
        let s4 = _mm256_setr_ps(1., 1., 1., 1., -1., -1., -1., -1.);
        let x = _mm256_fmadd_ps(x, s4, _mm256_permute2f128_ps(x, x, 0x01));
        F32x8(x)
    }
    #[inline(always)]
    unsafe fn inreg_short(self) -> Self {
        let x = self.0;
        let n = -0.0f32;
        let m1 = _mm256_setr_ps(0., n, 0., n, 0., n, 0., n);
        let x = _mm256_add_ps(_mm256_permute_ps(x, 0b1011_0001), _mm256_xor_ps(x, m1));
        let m2 = _mm256_setr_ps(0., 0., n, n, 0., 0., n, n);
        let x = _mm256_add_ps(_mm256_permute_ps(x, 0b0100_1110), _mm256_xor_ps(x, m2));
        let m4 = _mm256_setr_ps(0., 0., 0., 0., n, n, n, n);
        let x = _mm256_add_ps(_mm256_permute2f128_ps(x, x, 0x01), _mm256_xor_ps(x, m4));
        F32x8(x)
    }
}

impl Vector for F64x4 {
    type E = f64;
    const LOG: u32 = 2;
    const ONE: f64 = 1.0;
    const NEG_ONE: f64 = -1.0;
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        F64x4(_mm256_loadu_pd(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        _mm256_storeu_pd(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F64x4(_mm256_add_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        F64x4(_mm256_sub_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F64x4(_mm256_mul_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, m: Self, a: Self) -> Self {
        F64x4(_mm256_fmadd_pd(self.0, m.0, a.0))
    }
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        F64x4(_mm256_set1_pd(v))
    }
    #[inline(always)]
    unsafe fn inreg(self) -> Self {
        let x = self.0;
        let s1 = _mm256_setr_pd(1., -1., 1., -1.);
        let x = _mm256_fmadd_pd(x, s1, _mm256_permute_pd(x, 0b0101));
        let s2 = _mm256_setr_pd(1., 1., -1., -1.);
        let x = _mm256_fmadd_pd(x, s2, _mm256_permute2f128_pd(x, x, 0x01));
        F64x4(x)
    }
    #[inline(always)]
    unsafe fn inreg_short(self) -> Self {
        let x = self.0;
        let n = -0.0f64;
        let m1 = _mm256_setr_pd(0., n, 0., n);
        let x = _mm256_add_pd(_mm256_permute_pd(x, 0b0101), _mm256_xor_pd(x, m1));
        let m2 = _mm256_setr_pd(0., 0., n, n);
        let x = _mm256_add_pd(_mm256_permute2f128_pd(x, x, 0x01), _mm256_xor_pd(x, m2));
        F64x4(x)
    }
}

impl Vector for F32x16 {
    type E = f32;
    const LOG: u32 = 4;
    const ONE: f32 = 1.0;
    const NEG_ONE: f32 = -1.0;
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        F32x16(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F32x16(_mm512_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        F32x16(_mm512_sub_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F32x16(_mm512_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, m: Self, a: Self) -> Self {
        F32x16(_mm512_fmadd_ps(self.0, m.0, a.0))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        F32x16(_mm512_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn inreg(self) -> Self {
        let x = self.0;
        let s1 = _mm512_setr_ps(
            1., -1., 1., -1., 1., -1., 1., -1., 1., -1., 1., -1., 1., -1., 1., -1.,
        );
        let x = _mm512_fmadd_ps(x, s1, _mm512_permute_ps(x, 0b1011_0001));
        let s2 = _mm512_setr_ps(
            1., 1., -1., -1., 1., 1., -1., -1., 1., 1., -1., -1., 1., 1., -1., -1.,
        );
        let x = _mm512_fmadd_ps(x, s2, _mm512_permute_ps(x, 0b0100_1110));
        let s4 = _mm512_setr_ps(
            1., 1., 1., 1., -1., -1., -1., -1., 1., 1., 1., 1., -1., -1., -1., -1.,
        );
        let x = _mm512_fmadd_ps(x, s4, _mm512_shuffle_f32x4(x, x, 0b1011_0001));
        let s8 = _mm512_setr_ps(
            1., 1., 1., 1., 1., 1., 1., 1., -1., -1., -1., -1., -1., -1., -1., -1.,
        );
        let x = _mm512_fmadd_ps(x, s8, _mm512_shuffle_f32x4(x, x, 0b0100_1110));
        F32x16(x)
    }
    #[inline(always)]
    unsafe fn inreg_short(self) -> Self {
        // Sign flips as integer XORs (AVX-512F has no floating-point XOR without DQ).
        let flip = |x: __m512, m: __m512i| {
            _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(x), m))
        };
        let n = i32::MIN;
        let x = self.0;
        let m1 = _mm512_setr_epi32(0, n, 0, n, 0, n, 0, n, 0, n, 0, n, 0, n, 0, n);
        let x = _mm512_add_ps(_mm512_permute_ps(x, 0b1011_0001), flip(x, m1));
        let m2 = _mm512_setr_epi32(0, 0, n, n, 0, 0, n, n, 0, 0, n, n, 0, 0, n, n);
        let x = _mm512_add_ps(_mm512_permute_ps(x, 0b0100_1110), flip(x, m2));
        let m4 = _mm512_setr_epi32(0, 0, 0, 0, n, n, n, n, 0, 0, 0, 0, n, n, n, n);
        let x = _mm512_add_ps(_mm512_shuffle_f32x4(x, x, 0b1011_0001), flip(x, m4));
        let m8 = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, n, n, n, n, n, n, n, n);
        let x = _mm512_add_ps(_mm512_shuffle_f32x4(x, x, 0b0100_1110), flip(x, m8));
        F32x16(x)
    }
}

impl Vector for F64x8 {
    type E = f64;
    const LOG: u32 = 3;
    const ONE: f64 = 1.0;
    const NEG_ONE: f64 = -1.0;
    #[inline(always)]
    unsafe fn load(p: *const f64) -> Self {
        F64x8(_mm512_loadu_pd(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f64) {
        _mm512_storeu_pd(p, self.0)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        F64x8(_mm512_add_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        F64x8(_mm512_sub_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        F64x8(_mm512_mul_pd(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn fma(self, m: Self, a: Self) -> Self {
        F64x8(_mm512_fmadd_pd(self.0, m.0, a.0))
    }
    #[inline(always)]
    unsafe fn splat(v: f64) -> Self {
        F64x8(_mm512_set1_pd(v))
    }
    #[inline(always)]
    unsafe fn inreg(self) -> Self {
        let x = self.0;
        let s1 = _mm512_setr_pd(1., -1., 1., -1., 1., -1., 1., -1.);
        let x = _mm512_fmadd_pd(x, s1, _mm512_permute_pd(x, 0b0101_0101));
        let s2 = _mm512_setr_pd(1., 1., -1., -1., 1., 1., -1., -1.);
        let x = _mm512_fmadd_pd(x, s2, _mm512_shuffle_f64x2(x, x, 0b1011_0001));
        let s4 = _mm512_setr_pd(1., 1., 1., 1., -1., -1., -1., -1.);
        let x = _mm512_fmadd_pd(x, s4, _mm512_shuffle_f64x2(x, x, 0b0100_1110));
        F64x8(x)
    }
    #[inline(always)]
    unsafe fn inreg_short(self) -> Self {
        let flip = |x: __m512d, m: __m512i| {
            _mm512_castsi512_pd(_mm512_xor_si512(_mm512_castpd_si512(x), m))
        };
        let n = i64::MIN;
        let x = self.0;
        let m1 = _mm512_setr_epi64(0, n, 0, n, 0, n, 0, n);
        let x = _mm512_add_pd(_mm512_permute_pd(x, 0b0101_0101), flip(x, m1));
        let m2 = _mm512_setr_epi64(0, 0, n, n, 0, 0, n, n);
        let x = _mm512_add_pd(_mm512_shuffle_f64x2(x, x, 0b1011_0001), flip(x, m2));
        let m4 = _mm512_setr_epi64(0, 0, 0, 0, n, n, n, n);
        let x = _mm512_add_pd(_mm512_shuffle_f64x2(x, x, 0b0100_1110), flip(x, m4));
        F64x8(x)
    }
}

/// The `log2(N)` butterfly stages across `N` registers (strides 1, 2, …, N/2 in register units).
///
/// With `FMA`, `a - b` is computed as the exact `fma(b, -1, a)`: on CPUs with separate add and FMA pipes (AMD Zen)
/// the two halves of each butterfly then run side by side, which pays when the add pipes are the bottleneck (the
/// radix passes). `neg_one` must then be opaque to the compiler, which would otherwise fold the FMA back into a
/// subtraction. Without `FMA` it is a plain subtraction, of shorter latency (the straight-line short rows).
#[inline(always)]
unsafe fn butterflies<V: Vector, const N: usize, const FMA: bool>(r: &mut [V; N], neg_one: V) {
    let mut s = 1;
    while s < N {
        let mut i = 0;
        while i < N {
            for j in i..i + s {
                let (a, b) = (r[j], r[j + s]);
                r[j] = a.add(b);
                r[j + s] = if FMA { b.fma(neg_one, a) } else { a.sub(b) };
            }
            i += 2 * s;
        }
        s *= 2;
    }
}

/// The groups of a pass it runs: those whose first vector `j` (counted from the start of its run of `N · h`
/// vectors) lies in `start..end` modulo `period` (a power of two dividing `h`). [`Span::all`] is the whole pass.
#[derive(Clone, Copy)]
struct Span {
    period: usize,
    start: usize,
    end: usize,
}

impl Span {
    /// Every group of a pass of stride `h`.
    fn all(h: usize) -> Self {
        Span {
            period: h,
            start: 0,
            end: h,
        }
    }
}

/// One radix-`N` pass over `nvec` vectors read at `src` and written at the same offsets from `dst` (the same pointer
/// for a pass in place): for every group of `N` vectors `h` apart within `span`, `log2(N)` stages across registers
/// (after the in-register stages when `FIRST`, where `h` must be 1), times `scale` when `SCALE`.
///
/// Inlined into the entry point in optimised builds; in debug builds each instance is a function of its own, since
/// without optimisation the dozens of instances inlined into one entry point would each keep their own registers'
/// worth of stack, megabytes in all, more than a test thread's 2 MiB.
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
unsafe fn pass<V: Vector, const N: usize, const FIRST: bool, const SCALE: bool>(
    src: *const V::E,
    dst: *mut V::E,
    nvec: usize,
    h: usize,
    span: Span,
    scale: V,
) {
    debug_assert!(
        h.is_multiple_of(span.period) && span.start < span.end && span.end <= span.period
    );
    let w = 1usize << V::LOG;
    let neg_one = std::hint::black_box(V::splat(V::NEG_ONE));
    let mut block = 0;
    while block < nvec {
        for m in (0..h).step_by(span.period) {
            for j in m + span.start..m + span.end {
                let at = (block + j) * w;
                let (q, d) = (src.add(at), dst.add(at));
                let mut r = [scale; N];
                for (i, v) in r.iter_mut().enumerate() {
                    let x = V::load(q.add(i * h * w));
                    *v = if FIRST { x.inreg() } else { x };
                }
                butterflies::<V, N, true>(&mut r, neg_one);
                for (i, v) in r.iter().enumerate() {
                    let y = if SCALE { v.mul(scale) } else { *v };
                    y.store(d.add(i * h * w));
                }
            }
        }
        block += N * h;
    }
}

/// Where a sequence of passes reads and writes: the first pass reads `from`, the passes in between work in place in
/// `work`, the last one writes `to` (a single pass goes straight from `from` to `to`). All three are the row itself
/// for a transform in place; an aligned scratch buffer is `work` when the row is not aligned to a cache line.
#[derive(Clone, Copy)]
struct Route<E> {
    from: *const E,
    work: *mut E,
    to: *mut E,
}

impl<E> Route<E> {
    /// Everything in place at `p`.
    fn at(p: *mut E) -> Self {
        Route {
            from: p,
            work: p,
            to: p,
        }
    }

    /// The same route `offset` elements further on.
    unsafe fn add(self, offset: usize) -> Self {
        Route {
            from: self.from.add(offset),
            work: self.work.add(offset),
            to: self.to.add(offset),
        }
    }

    /// Source and destination of pass `i` of `count`.
    fn pass(self, i: u32, count: u32) -> (*const E, *mut E) {
        let src = if i == 0 { self.from } else { self.work };
        let dst = if i + 1 == count { self.to } else { self.work };
        (src, dst)
    }
}

/// Runs [`pass`] with `N = 2^radix` (0 ≤ radix ≤ 4: no plan holds more than 16 vectors).
#[inline(always)]
unsafe fn run_pass<V: Vector>(
    radix: u32,
    first: bool,
    (src, dst): (*const V::E, *mut V::E),
    nvec: usize,
    h: usize,
    span: Span,
    scale: Option<V>,
) {
    let one = V::splat(V::ONE);
    macro_rules! go {
        ($n:literal) => {
            match (first, scale) {
                (true, None) => pass::<V, $n, true, false>(src, dst, nvec, h, span, one),
                (true, Some(s)) => pass::<V, $n, true, true>(src, dst, nvec, h, span, s),
                (false, None) => pass::<V, $n, false, false>(src, dst, nvec, h, span, one),
                (false, Some(s)) => pass::<V, $n, false, true>(src, dst, nvec, h, span, s),
            }
        };
    }
    match radix {
        0 => go!(1),
        1 => go!(2),
        2 => go!(4),
        3 => go!(8),
        4 => go!(16),
        _ => unreachable!("radix {radix} above the widest plan's"),
    }
}

/// How many passes [`passes`] makes for `stages` stages starting at a stride of `h` vectors: at most `plan.rmax`
/// stages each, and at most `plan.far_rmax` when the stride is 4 KiB or more (such vectors share one set of the L1).
#[inline(always)]
fn pass_count<V: Vector>(h: usize, stages: u32, plan: Plan) -> u32 {
    let rmax = if (h << V::LOG) * std::mem::size_of::<V::E>() >= 4096 {
        plan.far_rmax
    } else {
        plan.rmax
    };
    stages.div_ceil(rmax)
}

/// The radices of `count` passes that share `stages` stages as evenly as possible, the wider ones first.
fn radices(stages: u32, count: u32) -> impl Iterator<Item = u32> {
    (0..count).map(move |i| stages / count + u32::from(i < stages % count))
}

/// Cross-register stages, `stages ≥ 1` of them, starting at a stride of `h` vectors, in passes of at most
/// [`pass_count`] stages (as even as possible) along `route`, each over the groups in `span` (whose period must
/// divide `h`); the last pass applies `scale`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn passes<V: Vector>(
    route: Route<V::E>,
    nvec: usize,
    mut h: usize,
    stages: u32,
    plan: Plan,
    span: Span,
    scale: Option<V>,
) {
    let count = pass_count::<V>(h, stages, plan);
    for (i, r) in (0..count).zip(radices(stages, count)) {
        let s = if i + 1 == count { scale } else { None };
        run_pass::<V>(r, false, route.pass(i, count), nvec, h, span, s);
        h <<= r;
    }
}

/// The whole transform of `2^k` elements (`k ≥ V::LOG`) along `route`, with the data kept within one level of
/// cache: a first pass with the in-register stages, then radix passes.
#[inline(always)]
unsafe fn in_cache<V: Vector>(route: Route<V::E>, k: u32, plan: Plan, scale: Option<V>) {
    let nvec = 1usize << (k - V::LOG);
    let cross = k - V::LOG;
    let first = cross.min(plan.rmax);
    // One pass does it all (into `route.to`, scaled), or it is the first of several (into `route.work`).
    let (to, s) = if cross == first {
        (route.to, scale)
    } else {
        (route.work, None)
    };
    run_pass::<V>(first, true, (route.from, to), nvec, 1, Span::all(1), s);
    if cross == first {
        return;
    }
    let rest = Route {
        from: route.work,
        ..route
    };
    passes::<V>(
        rest,
        nvec,
        1 << first,
        cross - first,
        plan,
        Span::all(1 << first),
        scale,
    );
}

/// Tuning of one kernel: the widest radix (log2 of the registers held at once), the widest radix at strides of
/// 4 KiB or more, the L1 block and the L2 block (log2 of elements), and whether rows that do not start on a cache
/// line go through an aligned buffer ([`transform`]).
#[derive(Clone, Copy)]
struct Plan {
    rmax: u32,
    far_rmax: u32,
    l1_log: u32,
    l2_log: u32,
    realign: bool,
}

/// A cache line of scratch space.
type Line = super::CacheLine<[u8; 64]>;

thread_local! {
    /// Each thread's scratch buffer for rows that are not aligned to a cache line (kept between calls).
    static SCRATCH: std::cell::Cell<Vec<Line>> = const { std::cell::Cell::new(Vec::new()) };
}

/// How far (modulo 4 KiB) the scratch buffer starts from the row: loads from the row and stores into the scratch
/// that are a multiple of 4 KiB apart look alike to the CPU's memory disambiguation (false store-to-load
/// dependencies stall the first pass), so the scratch is placed half a page away (`docs/fwht.md`, tuning notes).
const ALIAS_SHIFT: usize = 2048;

/// Rows of up to this many bytes that do not start on a cache line go through a scratch buffer as long as the row
/// (longer rows through one of an L2 block).
const SCRATCH_ROW_BYTES: usize = 4 << 20;

/// `x ← scale · x · H_n` in place, `n = x.len() = 2^k` with `k ≥ V::LOG`.
///
/// Rows longer than the L1 block are transformed block by block, then the stages that span blocks run as radix
/// passes over the whole row (8 registers at once, the strides being 4 KiB or more). Rows longer than L2 (1 MiB)
/// are first transformed in 1 MiB blocks that way, so that only the stages spanning those blocks sweep the whole
/// row (through L3 or memory), once ([`by_blocks`], [`across_in_chunks`]). (A variant that copied column panels
/// into a contiguous buffer moved more bytes and was slower, so it is not used; the measurements are in
/// `docs/fwht.md`, tuning notes.)
///
/// A row that does not start on a cache line (the usual case for a large `Vec` from the system allocator, 16 bytes
/// past a page boundary) makes vector loads and stores straddle two lines. Where that costs (`plan.realign`: AMD
/// Zen 4, where every such access costs two), such rows longer than the L1 block run their first pass from the row
/// into a thread-local aligned buffer (an L2 block at most, kept for the thread's next call), the middle passes
/// there, and the last pass back into the row: the same passes, in the same order, so the results do not change.
/// Rows within the L1 block are left in place: their two or three passes do not pay for the copy. Where split
/// accesses cost little (Intel, 512-bit operations at full width), every row stays in place: the buffer's extra
/// traffic cost more than it saved (`docs/fwht.md`, tuning notes).
#[inline(always)]
unsafe fn transform<V: Vector>(
    src: *const V::E,
    dst: *mut V::E,
    n: usize,
    scale: V::E,
    plan: Plan,
) {
    debug_assert!(n.is_power_of_two() && n >= 1 << V::LOG);
    let k = n.trailing_zeros();
    let scale = if scale == V::ONE {
        None
    } else {
        Some(V::splat(scale))
    };
    if (dst as usize).is_multiple_of(64) || k <= plan.l1_log || !plan.realign {
        return by_blocks::<V>(src, dst, Scratch::None, k, plan, scale);
    }
    // Rows up to `SCRATCH_ROW_BYTES` go through a scratch as long as the row; longer ones through one L2 block.
    let bytes = n * std::mem::size_of::<V::E>();
    let whole = bytes <= SCRATCH_ROW_BYTES;
    let line_log = 6 - std::mem::size_of::<V::E>().trailing_zeros();
    let lines = if whole {
        bytes / 64
    } else {
        1usize << (plan.l2_log - line_log)
    };
    // 64 lines more, to place the scratch half a page away from the row modulo 4 KiB.
    let mut scratch = SCRATCH.take();
    if scratch.len() < lines + 64 {
        scratch = vec![super::CacheLine([0; 64]); lines + 64];
    }
    let base = scratch.as_mut_ptr();
    let want = ((dst as usize) + ALIAS_SHIFT) % 4096 / 64;
    let have = (base as usize) % 4096 / 64;
    let work = base.add((want + 64 - have) % 64);
    let scratch_kind = if whole {
        Scratch::Row(work.cast())
    } else {
        Scratch::Block(work.cast())
    };
    by_blocks::<V>(src, dst, scratch_kind, k, plan, scale);
    SCRATCH.set(scratch);
}

/// The aligned buffer [`by_blocks`] works in, if any.
#[derive(Clone, Copy)]
enum Scratch<E> {
    /// Work in the destination row itself.
    None,
    /// A buffer as long as the row: every pass but the first and the last runs there.
    Row(*mut E),
    /// A buffer of one L2 block (`2^l2_log` elements), reused by each block; the passes that span blocks run in the
    /// destination row.
    Block(*mut E),
}

/// [`transform`] of the `2^k` elements at `src` into `dst` (the same pointer in place), working in `scratch`.
#[inline(always)]
unsafe fn by_blocks<V: Vector>(
    src: *const V::E,
    dst: *mut V::E,
    scratch: Scratch<V::E>,
    k: u32,
    plan: Plan,
    scale: Option<V>,
) {
    let work = match scratch {
        Scratch::None => dst,
        Scratch::Row(s) | Scratch::Block(s) => s,
    };
    let route = Route {
        from: src,
        work,
        to: dst,
    };
    if k <= plan.l1_log {
        in_cache::<V>(route, k, plan, scale);
        return;
    }
    if k <= plan.l2_log {
        in_l2::<V>(route, k, plan, scale);
        return;
    }
    let (n, block) = (1usize << k, 1usize << plan.l2_log);
    for start in (0..n - block).step_by(block) {
        in_l2::<V>(
            block_route(src, dst, scratch, start),
            plan.l2_log,
            plan,
            None,
        );
    }
    // The last block, but for its last pass, then the stages that span blocks: from the row's scratch into the row,
    // or in the row.
    let last = l2_all_but_last::<V>(block_route(src, dst, scratch, n - block), plan.l2_log, plan);
    let across = match scratch {
        Scratch::Row(s) => Route {
            from: s,
            work: s,
            to: dst,
        },
        _ => Route::at(dst),
    };
    let (nvec, bv, stages) = (n >> V::LOG, block >> V::LOG, k - plan.l2_log);
    if stages > plan.far_rmax {
        last.run::<V>(Span::all(last.h), None);
        across_in_chunks::<V>(across, nvec, bv, stages, plan, scale);
        return;
    }
    // One pass (up to 8 vectors, one per block, which the L1 holds at once although they share a set), run chunk by
    // chunk beside the last block's last pass, which makes each chunk of that block while it is still in cache: the
    // sweep through L3 reads and writes one block less.
    let chunk = top_chunk::<V>();
    for c in (0..last.h).step_by(chunk) {
        let span = Span {
            period: last.h,
            start: c,
            end: (c + chunk).min(last.h),
        };
        last.run::<V>(span, None);
        run_pass::<V>(stages, false, across.pass(0, 1), nvec, bv, span, scale);
    }
}

/// Where the L2 block at `start` of a row longer than one goes: through the row's scratch (landing in its place
/// there), through the block scratch (landing in the row), or in the row.
#[inline(always)]
unsafe fn block_route<E>(
    src: *const E,
    dst: *mut E,
    scratch: Scratch<E>,
    start: usize,
) -> Route<E> {
    let from = src.add(start);
    match scratch {
        Scratch::Row(s) => Route {
            from,
            work: s.add(start),
            to: s.add(start),
        },
        Scratch::Block(s) => Route {
            from,
            work: s,
            to: dst.add(start),
        },
        Scratch::None => Route {
            from,
            work: dst.add(start),
            to: dst.add(start),
        },
    }
}

/// The last L2-level pass of a block, not yet run: its radix, its stride and the block's length (in vectors), and
/// where it reads and writes.
#[derive(Clone, Copy)]
struct LastPass<E> {
    radix: u32,
    h: usize,
    nvec: usize,
    io: (*const E, *mut E),
}

impl<E> LastPass<E> {
    /// Runs the pass over the groups in `span`.
    #[inline(always)]
    unsafe fn run<V: Vector<E = E>>(self, span: Span, scale: Option<V>) {
        run_pass::<V>(self.radix, false, self.io, self.nvec, self.h, span, scale);
    }
}

/// Bytes of each L2 block that one chunk of the stages across blocks takes (32 cache lines).
const TOP_CHUNK_BYTES: usize = 2048;

/// Vectors of each L2 block in one chunk of the stages across blocks ([`TOP_CHUNK_BYTES`]).
fn top_chunk<V: Vector>() -> usize {
    (TOP_CHUNK_BYTES >> V::LOG) / std::mem::size_of::<V::E>()
}

/// The `stages` stages that span the L2 blocks of `bv` vectors (a row of `nvec` vectors), more than one pass of
/// `plan.far_rmax` stages holds, along `route`; the last pass applies `scale`.
///
/// Wider passes would hold more vectors of one L1 set at once than the L1 has ways (they would evict one another
/// between load and store, and the lines prefetched for the next group), and more passes over the row would sweep it
/// through L3 or memory again. Instead the row is walked in chunks of [`TOP_CHUNK_BYTES`] of every block
/// (`2^stages` · 2 KiB, which L2 holds unless too many of them fall in the same sets), and each chunk goes through
/// all the passes, of at most `plan.far_rmax` stages each, before the next: one sweep through L3, the later passes
/// from L2. Each element still sees the stages in order, so the results do not change.
#[inline(always)]
unsafe fn across_in_chunks<V: Vector>(
    route: Route<V::E>,
    nvec: usize,
    bv: usize,
    stages: u32,
    plan: Plan,
    scale: Option<V>,
) {
    let chunk = top_chunk::<V>();
    for start in (0..bv).step_by(chunk) {
        let span = Span {
            period: bv,
            start,
            end: (start + chunk).min(bv),
        };
        passes::<V>(route, nvec, bv, stages, plan, span, scale);
    }
}

/// The L1-sized blocks of `2^k` elements along `route`, transformed one by one, each left in `route.work`.
#[inline(always)]
unsafe fn l1_blocks<V: Vector>(route: Route<V::E>, k: u32, plan: Plan) {
    let (n, block) = (1usize << k, 1usize << plan.l1_log);
    let mut start = 0;
    while start < n {
        let r = route.add(start);
        let to_work = Route { to: r.work, ..r };
        in_cache::<V>(to_work, plan.l1_log, plan, None);
        start += block;
    }
}

/// [`in_l2`] of `2^k` elements along `route`, but for its last pass, which is returned for the caller to run: the
/// L1-sized blocks, then all but the last of the passes that span them, in `route.work`.
#[inline(always)]
unsafe fn l2_all_but_last<V: Vector>(route: Route<V::E>, k: u32, plan: Plan) -> LastPass<V::E> {
    l1_blocks::<V>(route, k, plan);
    let rest = Route {
        from: route.work,
        ..route
    };
    let (nvec, mut h) = (1usize << (k - V::LOG), 1usize << (plan.l1_log - V::LOG));
    let stages = k - plan.l1_log;
    let count = pass_count::<V>(h, stages, plan);
    let mut radix = radices(stages, count);
    for i in 0..count - 1 {
        let r = radix.next().unwrap_or(0);
        run_pass::<V>(r, false, rest.pass(i, count), nvec, h, Span::all(h), None);
        h <<= r;
    }
    LastPass {
        radix: radix.next().unwrap_or(0),
        h,
        nvec,
        io: rest.pass(count - 1, count),
    }
}

/// `2^k` elements (`k > plan.l1_log`) that fit in L2, along `route`: L1-sized blocks transformed one by one (each
/// left in `route.work`), then the stages that span blocks as radix passes over all of them.
#[inline(always)]
unsafe fn in_l2<V: Vector>(route: Route<V::E>, k: u32, plan: Plan, scale: Option<V>) {
    let last = l2_all_but_last::<V>(route, k, plan);
    last.run(Span::all(last.h), scale);
}

// At strides of 4 KiB or more the vectors of one pass share a set of the L1 (8- to 12-way on the CPUs tuned for),
// so such passes hold at most 8: more would evict lines the pass still needs, and the lines prefetched for the next
// group. That holds for the passes that span L2 blocks too, which [`across_in_chunks`] chunks instead of widening.
/// Every plan has stages between its L1 and L2 blocks, and passes of at least one stage.
const fn valid(p: Plan) -> bool {
    p.l1_log < p.l2_log && p.rmax >= p.far_rmax && p.far_rmax >= 1 && p.rmax <= 4
}
const _: () = assert!(valid(AVX2_F32) && valid(AVX2_F64) && valid(AVX512_F32) && valid(AVX512_F64));

const AVX2_F32: Plan = Plan {
    rmax: 3,
    far_rmax: 3,
    l1_log: 12,
    l2_log: 18,
    realign: true,
};
const AVX2_F64: Plan = Plan {
    rmax: 3,
    far_rmax: 3,
    l1_log: 11,
    l2_log: 17,
    realign: true,
};
const AVX512_F32: Plan = Plan {
    rmax: 4,
    far_rmax: 3,
    l1_log: 12,
    l2_log: 18,
    realign: true,
};
const AVX512_F64: Plan = Plan {
    rmax: 4,
    far_rmax: 3,
    l1_log: 11,
    l2_log: 17,
    realign: true,
};

/// AVX2 kernel for f32: the row of `n` elements at `src` (a power of two ≥ 8), transformed into `dst` (`src`
/// itself in place, else not overlapping it).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn f32_avx2(src: *const f32, dst: *mut f32, n: usize, scale: f32) {
    transform::<F32x8>(src, dst, n, scale, AVX2_F32)
}

/// AVX2 kernel for f64, as [`f32_avx2`] (`n` ≥ 4).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn f64_avx2(src: *const f64, dst: *mut f64, n: usize, scale: f64) {
    transform::<F64x4>(src, dst, n, scale, AVX2_F64)
}

/// AVX-512 kernel for f32, as [`f32_avx2`] (`n` ≥ 16), for CPUs that run 512-bit operations at full width
/// (`full`: rows that do not start on a cache line stay in place) or split them.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn f32_avx512(src: *const f32, dst: *mut f32, n: usize, scale: f32, full: bool) {
    let plan = Plan {
        realign: !full,
        ..AVX512_F32
    };
    transform::<F32x16>(src, dst, n, scale, plan)
}

/// AVX-512 kernel for f64, as [`f32_avx512`] (`n` ≥ 8).
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn f64_avx512(src: *const f64, dst: *mut f64, n: usize, scale: f64, full: bool) {
    let plan = Plan {
        realign: !full,
        ..AVX512_F64
    };
    transform::<F64x8>(src, dst, n, scale, plan)
}

/// The whole transform of `N` vectors (`N · 2^V::LOG` elements) read at `src` and written at `p` (the same pointer
/// in place), in registers, straight-line: the in-register
/// stages with the short dependency chain, the `log2(N)` stages across registers as plain additions and
/// subtractions (shorter latency than the FMA form, which only pays when the add pipes are the bottleneck), then
/// the scale, if any. For short rows one call is a single dependency chain, so its latency is its cost. (A function
/// of its own in debug builds, as [`pass`].)
#[cfg_attr(not(debug_assertions), inline(always))]
#[cfg_attr(debug_assertions, inline(never))]
unsafe fn small<V: Vector, const N: usize>(src: *const V::E, p: *mut V::E, scale: V::E) {
    let w = 1usize << V::LOG;
    let mut r = [V::splat(scale); N];
    for (i, v) in r.iter_mut().enumerate() {
        *v = V::load(src.add(i * w)).inreg_short();
    }
    butterflies::<V, N, false>(&mut r, V::splat(V::NEG_ONE));
    if scale == V::ONE {
        for (i, v) in r.iter().enumerate() {
            v.store(p.add(i * w));
        }
    } else {
        let sv = V::splat(scale);
        for (i, v) in r.iter().enumerate() {
            v.mul(sv).store(p.add(i * w));
        }
    }
}

/// An entry point that runs [`small`] on rows of the listed lengths (`len => N` registers), from `src` into `dst`
/// (`src` itself in place, else not overlapping it), and returns true, or does nothing and returns false for other
/// lengths.
macro_rules! small_entry {
    ($(#[$doc:meta])* $name:ident, $feat:literal, $v:ty, $e:ty, $($len:literal => $n:literal),*) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The CPU must support the instruction sets named in `target_feature`.
        #[target_feature(enable = $feat)]
        pub(super) unsafe fn $name(src: *const $e, dst: *mut $e, n: usize, scale: $e) -> bool {
            match n {
                $($len => small::<$v, $n>(src, dst, scale),)*
                _ => return false,
            }
            true
        }
    };
}

small_entry!(
    /// Short f32 rows (8 to 128 elements) with AVX2: one straight-line kernel per length. (A short row is one
    /// dependency chain, and the 256-bit kernels' shorter permutation latency wins over wider registers.)
    f32_small_avx2, "avx2,fma", F32x8, f32, 8 => 1, 16 => 2, 32 => 4, 64 => 8, 128 => 16
);
small_entry!(
    /// Short f64 rows (4 to 64 elements) with AVX2: one straight-line kernel per length, as [`f32_small_avx2`].
    f64_small_avx2, "avx2,fma", F64x4, f64, 4 => 1, 8 => 2, 16 => 4, 32 => 8, 64 => 16
);
small_entry!(
    /// The f32 rows that take all 16 AVX2 registers (128 elements) with AVX-512 (8 registers), for CPUs that run
    /// 512-bit operations at full width (it then needs 8 registers instead of 16); shorter rows stay on AVX2.
    f32_small_avx512, "avx512f", F32x16, f32, 128 => 8
);
small_entry!(
    /// The f64 rows that take all 16 AVX2 registers (64 elements) with AVX-512, as [`f32_small_avx512`].
    f64_small_avx512, "avx512f", F64x8, f64, 64 => 8
);
