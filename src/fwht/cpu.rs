//! CPU kernels and the slice-level API.
//!
//! The portable kernel is the radix-2 butterfly written plainly; it is the reference the SIMD kernels are tested
//! against. Batches of rows are spread over threads: the transform's own helper threads for calls from outside
//! rayon's pool (see `pool`), rayon's scope for calls from inside one.

use super::check_len;
use crate::error::Error;
use candle_core::{backend::BackendStorage, CpuStorage, Layout, Result};
use half::slice::HalfFloatSliceExt;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

/// Instruction sets the CPU kernels can use. [`Isa::detect`] picks the best one this CPU has.
///
/// Every kernel performs the same additions in the same order, so they all give the same results bit for bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Isa {
    /// Plain Rust, any target.
    Portable = 0,
    /// x86-64 AVX2 + FMA (256-bit registers).
    Avx2 = 1,
    /// x86-64 AVX-512F (512-bit registers), tuned for CPUs that split 512-bit operations into two 256-bit halves
    /// (AMD Zen 4 and earlier): rows of up to 128 f32 or 64 f64 elements run the straight-line AVX2 kernels (latency
    /// bounds them, and a split 512-bit operation costs two 256-bit ones), longer rows the AVX-512 kernel, through an
    /// aligned buffer when they do not start on a cache line.
    Avx512Split = 2,
    /// x86-64 AVX-512F on CPUs that run 512-bit operations at full width: the short rows that fill all 16 AVX2
    /// registers (128 f32 or 64 f64 elements) run a straight-line AVX-512 kernel (8 registers), shorter ones the
    /// AVX2 kernels, longer ones the AVX-512 kernel; rows that do not start on a cache line stay in place (split
    /// accesses cost little there).
    Avx512 = 3,
}

impl Isa {
    /// Every instruction set, from the most portable to the widest.
    pub const ALL: [Isa; 4] = [Isa::Portable, Isa::Avx2, Isa::Avx512Split, Isa::Avx512];

    /// Whether this CPU can run kernels for `self` (detected once, then cached). Both AVX-512 variants run on any
    /// CPU with AVX-512F; [`Isa::detect`] picks the one tuned for it.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            Isa::Avx2 => Isa::detect() != Isa::Portable,
            Isa::Avx512Split | Isa::Avx512 => {
                matches!(Isa::detect(), Isa::Avx512Split | Isa::Avx512)
            }
        }
    }

    /// The widest instruction set this CPU supports, in the variant tuned for it (detected once, then cached).
    pub fn detect() -> Isa {
        static DETECTED: AtomicU8 = AtomicU8::new(u8::MAX);
        match DETECTED.load(Ordering::Relaxed) {
            0 => Isa::Portable,
            1 => Isa::Avx2,
            2 => Isa::Avx512Split,
            3 => Isa::Avx512,
            _ => {
                let isa = Isa::probe();
                DETECTED.store(isa as u8, Ordering::Relaxed);
                isa
            }
        }
    }

    /// Asks the CPU (the cached [`Isa::detect`] calls this once).
    fn probe() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                return if splits_512_bit_ops() {
                    Isa::Avx512Split
                } else {
                    Isa::Avx512
                };
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

/// Whether this CPU executes 512-bit operations as two 256-bit halves: AMD processors up to family 19h (Zen 4);
/// Intel's and AMD's later cores run them at full width.
#[cfg(target_arch = "x86_64")]
fn splits_512_bit_ops() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: CPUID leaves 0 and 1 exist on every x86-64 CPU (`__cpuid` is a safe function from Rust 1.94 on).
    #[allow(unused_unsafe)]
    let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1).eax) };
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163); // "AuthenticAMD"
    let family = ((signature >> 8) & 0xf) + ((signature >> 20) & 0xff);
    amd && family <= 0x19
}

/// An [`Isa`] checked to be available on this CPU; only this crate can make one.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Available(Isa);

impl Available {
    /// `isa` if this CPU has it, else [`Isa::Portable`].
    fn new(isa: Isa) -> Self {
        Available(if isa.is_available() {
            isa
        } else {
            Isa::Portable
        })
    }
}

/// Element types of the slice API: `f32` and `f64`.
pub trait FwhtFloat: Copy + Send + Sync + sealed::Sealed + 'static {
    /// `dst ← scale · src · H_n` for the row of `n` elements at `src`.
    ///
    /// # Safety
    /// `src` must be valid for `n` reads and `dst` for `n` writes, and they must be the same pointer (in place) or
    /// not overlap; `n` a power of two.
    #[doc(hidden)]
    unsafe fn transform_raw(
        isa: Available,
        src: *const Self,
        dst: *mut Self,
        n: usize,
        scale: Self,
    );

    /// `row ← scale · row · H_n`.
    #[doc(hidden)]
    #[inline]
    fn transform_row(isa: Available, row: &mut [Self], scale: Self) {
        let p = row.as_mut_ptr();
        // SAFETY: one valid row, in place.
        unsafe { Self::transform_raw(isa, p, p, row.len(), scale) }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

macro_rules! impl_fwht_float {
    ($t:ty, $avx2:ident, $avx512:ident, $small:ident, $small512:ident, $min512:literal) => {
        impl FwhtFloat for $t {
            #[inline]
            unsafe fn transform_raw(
                isa: Available,
                src: *const $t,
                dst: *mut $t,
                n: usize,
                scale: $t,
            ) {
                #[cfg(target_arch = "x86_64")]
                if isa.0 != Isa::Portable && n > 4 {
                    // SAFETY: `Available` guarantees the CPU has the instruction set (AVX-512 implies AVX2 + FMA
                    // here); the short-row kernels do nothing and return false for lengths they do not cover,
                    // and the others handle any power-of-two length of at least their lane count (8 f32, 4 f64);
                    // the caller guarantees the pointers.
                    unsafe {
                        // Short rows: one straight-line kernel per length, AVX2 (shorter latency than AVX-512), or
                        // AVX-512 for the rows that fill all 16 AVX2 registers where 512-bit operations run at
                        // full width.
                        if isa.0 == Isa::Avx512 && super::simd::$small512(src, dst, n, scale) {
                            return;
                        }
                        if super::simd::$small(src, dst, n, scale) {
                            return;
                        }
                        match isa.0 {
                            Isa::Avx512 => return super::simd::$avx512(src, dst, n, scale, true),
                            // Split 512-bit operations: each costs two 256-bit ones, so below `$min512` elements
                            // (where latency, not bandwidth, bounds the pass) the 256-bit kernel serves.
                            Isa::Avx512Split if n >= $min512 => {
                                return super::simd::$avx512(src, dst, n, scale, false)
                            }
                            _ => return super::simd::$avx2(src, dst, n, scale),
                        }
                    }
                }
                let _ = isa.0;
                // SAFETY: the caller guarantees the pointers; after the copy `dst` holds `n` initialised values.
                let row = unsafe {
                    if src != dst.cast_const() {
                        std::ptr::copy_nonoverlapping(src, dst, n);
                    }
                    std::slice::from_raw_parts_mut(dst, n)
                };
                if n <= 4 {
                    tiny(row, scale)
                } else {
                    portable(row, scale)
                }
            }
        }
    };
}
impl_fwht_float!(
    f32,
    f32_avx2,
    f32_avx512,
    f32_small_avx2,
    f32_small_avx512,
    128
);
impl_fwht_float!(
    f64,
    f64_avx2,
    f64_avx512,
    f64_small_avx2,
    f64_small_avx512,
    64
);

/// Rows of 1, 2 or 4 elements (shorter than a SIMD register), unrolled; the portable kernel's additions in its
/// order, then the scale.
#[inline(always)]
fn tiny<T>(x: &mut [T], scale: T)
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T> + std::ops::Mul<Output = T>,
{
    match x {
        [a] => *a = *a * scale,
        [a, b] => {
            let (p, q) = (*a, *b);
            *a = (p + q) * scale;
            *b = (p - q) * scale;
        }
        [a, b, c, d] => {
            let (u0, u1, u2, u3) = (*a + *b, *a - *b, *c + *d, *c - *d);
            *a = (u0 + u2) * scale;
            *c = (u0 - u2) * scale;
            *b = (u1 + u3) * scale;
            *d = (u1 - u3) * scale;
        }
        _ => portable(x, scale),
    }
}

/// The radix-2 butterfly, in place, then the scale.
fn portable<T>(x: &mut [T], scale: T)
where
    T: Copy + std::ops::Add<Output = T> + std::ops::Sub<Output = T> + std::ops::Mul<Output = T>,
{
    let n = x.len();
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (u, v) in a.iter_mut().zip(b.iter_mut()) {
                let (p, q) = (*u, *v);
                *u = p + q;
                *v = p - q;
            }
        }
        h *= 2;
    }
    for v in x.iter_mut() {
        *v = *v * scale;
    }
}

/// `x ← scale · x · H_n` for one vector of length `n = x.len()` (a power of two up to 2^24), on this thread.
///
/// Any alignment works; a row that starts on a 64-byte cache line is fastest (long rows that do not are run through
/// an aligned per-thread scratch buffer of up to 1 MiB).
///
/// ```
/// let mut x = [1f32, 2., 3., 4.];
/// candle_structured::fwht::fwht_inplace(&mut x, 1.0)?;
/// assert_eq!(x, [10., -2., -4., 0.]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn fwht_inplace<T: FwhtFloat>(x: &mut [T], scale: T) -> Result<()> {
    check_len(x.len())?;
    T::transform_row(Available::new(Isa::detect()), x, scale);
    Ok(())
}

/// `row ← scale · row · H_n` for every contiguous row of length `n` in `data` (a power of two up to 2^24;
/// `data.len()` a multiple of `n`), spread over threads in chunks of whole rows (at most 4K elements unless a row
/// is longer, and at least 16 chunks where the rows allow) when the batch has at least 8K elements. Called from
/// outside rayon's pool, the calling thread works with helper threads of the transform's own (one per extra
/// thread of rayon's global pool), which spin for 200 µs after a batch, then park; called from inside a pool, it
/// uses that pool.
///
/// ```
/// use candle_structured::fwht::fwht_rows_inplace;
/// let mut rows = [1f64, 2., 3., 4., /* second row */ 1., 1., 1., 1.];
/// fwht_rows_inplace(&mut rows, 4, 0.5)?;
/// assert_eq!(rows, [5., -1., -2., 0., 2., 0., 0., 0.]);
/// assert!(fwht_rows_inplace(&mut rows[..6], 4, 1.0).is_err()); // not a whole number of rows
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn fwht_rows_inplace<T: FwhtFloat>(data: &mut [T], n: usize, scale: T) -> Result<()> {
    fwht_rows_inplace_with(Isa::detect(), true, data, n, scale)
}

/// [`fwht_rows_inplace`] with an explicit instruction set (an unavailable one falls back to
/// [`Isa::Portable`]) and threading, for tests and benchmarks.
pub fn fwht_rows_inplace_with<T: FwhtFloat>(
    isa: Isa,
    parallel: bool,
    data: &mut [T],
    n: usize,
    scale: T,
) -> Result<()> {
    check_len(n)?;
    // n is a power of two: a mask, not a division (this runs on every call, however short the rows).
    if data.len() & (n - 1) != 0 {
        return Err(Error::RaggedRows { len: data.len(), n }.into());
    }
    let isa = Available::new(isa);
    if data.len() == n {
        // One row: no chunking, no closures.
        T::transform_row(isa, data, scale);
        return Ok(());
    }
    for_row_chunks(data, n, parallel, |_, chunk| {
        for_each_row(chunk, n, |row| T::transform_row(isa, row, scale));
    });
    Ok(())
}

/// Fewest elements in a batch worth spreading over threads.
const PARALLEL_MIN: usize = 1 << 13;
/// Most elements per chunk of rows, unless one row is longer: small enough to stay in L1 between steps.
const TASK_MIN: usize = 1 << 12;
/// Batches are cut into at least `2^CHUNKS_LOG` chunks where rows allow (so that threads that start late can
/// still take an even share).
const CHUNKS_LOG: u32 = 4;
/// Fewest elements in a chunk (below this, claiming a chunk costs about as much as transforming it).
const CHUNK_MIN: usize = 1 << 8;

/// A raw pointer that may cross threads (the code that shares it guarantees exclusive, disjoint access).
struct SendPtr<D>(*mut D);
impl<D> Clone for SendPtr<D> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<D> Copy for SendPtr<D> {}
// SAFETY: only used by `for_row_chunks` to hand disjoint chunks of a `&mut [D]` (D: Send) to other threads.
unsafe impl<D: Send> Send for SendPtr<D> {}
unsafe impl<D: Send> Sync for SendPtr<D> {}
impl<D> SendPtr<D> {
    /// The pointer (a method, so that closures capture the whole `Sync` wrapper, not the raw field).
    fn get(self) -> *mut D {
        self.0
    }
}

/// Calls `f(offset, chunk)` on consecutive chunks of whole rows of `dst` (at most [`TASK_MIN`] elements each
/// unless a row is longer), spread over threads when the batch is large enough to pay for it.
fn for_row_chunks<D: Send>(
    dst: &mut [D],
    n: usize,
    parallel: bool,
    f: impl Fn(usize, &mut [D]) + Sync,
) {
    // Powers of two: `max` instead of divisions, which cost more than a short row's transform.
    // The largest power of two at most `len / 16`, within [CHUNK_MIN, TASK_MIN], and whole rows.
    let sixteenth = (dst.len() >> CHUNKS_LOG).max(1);
    let chunk = (1usize << sixteenth.ilog2())
        .clamp(CHUNK_MIN, TASK_MIN)
        .max(n);
    if dst.len() <= chunk {
        f(0, dst);
    } else if parallel && dst.len() >= PARALLEL_MIN && rayon::current_num_threads() > 1 {
        let len = dst.len();
        let chunks = len.div_ceil(chunk);
        let threads = rayon::current_num_threads();
        if rayon::current_thread_index().is_some() {
            // On a pool thread (inside `install`, a parallel iterator or a candle op run by one): one
            // contiguous span of whole chunks per thread with rayon's scope, the first on this thread; this
            // thread steals back any span no other worker has started when it finishes its own.
            let span = chunks.div_ceil(threads) * chunk;
            let (first, rest) = dst.split_at_mut(span.min(len));
            let f = &f;
            rayon::in_place_scope(|scope| {
                for (i, s) in rest.chunks_mut(span).enumerate() {
                    scope.spawn(move |_| walk_chunks(s, (i + 1) * span, chunk, f));
                }
                walk_chunks(first, 0, chunk, f);
            });
        } else {
            // Outside the pool (the usual case: the main thread): the transform's own helpers, which never park
            // this thread (see `pool`).
            let base = SendPtr(dst.as_mut_ptr());
            let run = |i: usize| {
                let at = i * chunk;
                // SAFETY: `share` runs each index below `chunks` exactly once, so the chunks handed out are
                // disjoint parts of `dst`, which stays mutably borrowed until `share` returns (after every run
                // has finished).
                let c = unsafe {
                    std::slice::from_raw_parts_mut(base.get().add(at), chunk.min(len - at))
                };
                f(at, c);
            };
            super::pool::share(chunks, len, &run);
        }
    } else {
        let mut at = 0;
        for c in dst.chunks_mut(chunk) {
            f(at, c);
            at += c.len();
        }
    }
}

/// Calls `f(at + offset, chunk)` on consecutive chunks of `chunk` elements of `s`, in order.
fn walk_chunks<D>(s: &mut [D], mut at: usize, chunk: usize, f: &impl Fn(usize, &mut [D])) {
    for c in s.chunks_mut(chunk) {
        f(at, c);
        at += c.len();
    }
}

/// Calls `f` on each row of length `n` of `rows` (a whole number of rows), without dividing by `n`.
#[inline]
fn for_each_row<T>(mut rows: &mut [T], n: usize, mut f: impl FnMut(&mut [T])) {
    while rows.len() >= n && n > 0 {
        let (row, rest) = std::mem::take(&mut rows).split_at_mut(n);
        f(row);
        rows = rest;
    }
}

/// Copies the (possibly strided) input into a fresh contiguous buffer, converting on the way.
fn gather<T: Copy, U>(src: &[T], layout: &Layout, f: impl Fn(T) -> U) -> Vec<U> {
    // Odometer over the dimensions in row-major order, the last one innermost.
    let (dims, strides) = (layout.dims(), layout.stride());
    let inner = *dims.last().unwrap_or(&1);
    let inner_stride = *strides.last().unwrap_or(&1);
    let mut out = Vec::with_capacity(layout.shape().elem_count());
    let mut index = vec![0usize; dims.len().saturating_sub(1)];
    let mut base = layout.start_offset();
    loop {
        out.extend((0..inner).map(|j| f(src[base + j * inner_stride])));
        // Advance the outer index, carrying into earlier dimensions.
        let mut d = index.len();
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            index[d] += 1;
            base += strides[d];
            if index[d] < dims[d] {
                break;
            }
            base -= strides[d] * dims[d];
            index[d] = 0;
        }
    }
}

/// A new buffer filled chunk by chunk of rows of [`for_row_chunks`]: `fill(part, chunk)` writes the output chunk
/// from the matching part of `src` (so the chunk is transformed while it is hot in L1). The output is never zeroed
/// first.
///
/// # Safety
/// `fill` must initialise every element of the chunk it is given.
unsafe fn from_chunks<D: Copy + Send + Sync>(
    src: &[D],
    n: usize,
    fill: impl Fn(&[D], &mut [MaybeUninit<D>]) + Sync,
) -> Vec<D> {
    let len = src.len();
    let mut out: Vec<D> = Vec::with_capacity(len);
    for_row_chunks(
        &mut out.spare_capacity_mut()[..len],
        n,
        true,
        |at, chunk| fill(&src[at..at + chunk.len()], chunk),
    );
    // SAFETY: `for_row_chunks` visits the `len` spare elements exactly once, and `fill` initialised each.
    unsafe { out.set_len(len) };
    out
}

/// f32/f64 forward: each row is transformed from the input straight into the output (the kernels' first pass reads
/// the input, their last writes the output), chunk by chunk of rows; a strided input is gathered once first, then
/// transformed in place.
fn forward_float<T: FwhtFloat>(src: &[T], layout: &Layout, n: usize, scale: T) -> Vec<T> {
    let isa = Available::new(Isa::detect());
    match layout.contiguous_offsets() {
        Some((start, end)) => {
            let fill = |part: &[T], chunk: &mut [MaybeUninit<T>]| {
                let (from, to) = (part.as_ptr(), chunk.as_mut_ptr().cast::<T>());
                let mut at = 0;
                while at < part.len() {
                    // SAFETY: `part` and `chunk` are distinct buffers of the same length, a whole number of rows;
                    // the kernel writes every element of the row at `to + at`.
                    unsafe { T::transform_raw(isa, from.add(at), to.add(at), n, scale) };
                    at += n;
                }
            };
            // SAFETY: `fill` writes every row of its chunk.
            unsafe { from_chunks(&src[start..end], n, fill) }
        }
        None => {
            let mut out = gather(src, layout, |x| x);
            for_row_chunks(&mut out, n, true, |_, chunk| {
                for_each_row(chunk, n, |row| T::transform_row(isa, row, scale))
            });
            out
        }
    }
}

/// f16/bf16 forward (a strided input is gathered once first): each chunk of rows is copied into the output, widened
/// to f32 (half's vectorised conversion), transformed, and rounded once back into place.
fn forward_half<H>(src: &[H], layout: &Layout, n: usize, scale: f32) -> Vec<H>
where
    H: Copy + Send + Sync,
    [H]: HalfFloatSliceExt,
{
    let isa = Available::new(Isa::detect());
    let gathered;
    let src = match layout.contiguous_offsets() {
        Some((start, end)) => &src[start..end],
        None => {
            gathered = gather(src, layout, |x| x);
            &gathered[..]
        }
    };
    let fill = |part: &[H], chunk: &mut [MaybeUninit<H>]| {
        // SAFETY: `part` and `chunk` have the same length and do not overlap; after the copy every element of
        // `chunk` is initialised, so viewing it as `&mut [H]` is sound.
        let chunk = unsafe {
            let dst = chunk.as_mut_ptr().cast::<H>();
            std::ptr::copy_nonoverlapping(part.as_ptr(), dst, part.len());
            std::slice::from_raw_parts_mut(dst, part.len())
        };
        let mut work = vec![0f32; chunk.len()];
        chunk.convert_to_f32_slice(&mut work);
        for_each_row(&mut work, n, |row| f32::transform_row(isa, row, scale));
        chunk.convert_from_f32_slice(&work);
    };
    // SAFETY: `fill` copies the whole part into its chunk first.
    unsafe { from_chunks(src, n, fill) }
}

/// The candle op's CPU forward: `storage` viewed through `layout`, rows of the last dimension transformed.
///
/// The input is read once, chunk by chunk of rows: f32/f64 rows are transformed from the input into the output
/// buffer, half-precision rows are copied there, widened to an f32 chunk, transformed and rounded back once.
pub(super) fn forward(storage: &CpuStorage, layout: &Layout, scale: f64) -> Result<CpuStorage> {
    let n = layout.shape().dims().last().copied().unwrap_or(1);
    check_len(n)?;
    Ok(match storage {
        CpuStorage::F32(v) => CpuStorage::F32(forward_float(v, layout, n, scale as f32)),
        CpuStorage::F64(v) => CpuStorage::F64(forward_float(v, layout, n, scale)),
        CpuStorage::F16(v) => CpuStorage::F16(forward_half(v, layout, n, scale as f32)),
        CpuStorage::BF16(v) => CpuStorage::BF16(forward_half(v, layout, n, scale as f32)),
        other => return Err(Error::UnsupportedDType(other.dtype()).into()),
    })
}
