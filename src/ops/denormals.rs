//! Flushing subnormal floats to zero on the CPU.
//!
//! A product of two small floats can fall below the smallest normal value (about 1.2e-38 in f32): the result is
//! then subnormal, and x86 cores compute with subnormal inputs or outputs through a slow microcode path, tens of
//! times slower per operation. Training makes them: softmax probabilities of masked or unlikely positions, the
//! Gaussian factor of GELU's derivative far from zero, and their products in the backward pass. How many there
//! are depends on the weights, so the same step can run at half speed or worse after a change of learning rate.
//! Setting the FTZ (flush-to-zero) and DAZ (denormals-are-zero) bits of a thread's MXCSR register makes such
//! values exact zeros instead, as `torch.set_flush_denormal(True)` does: the results change only where a value
//! below 1.2e-38 (f32) or 2.2e-308 (f64) appeared, by less than that value.
//!
//! The setters are `unsafe`: the compiler assumes IEEE subnormals, so a value it computes at compile time (constant
//! folding) can differ from the same operation at run time where the result is subnormal. No code of this crate
//! depends on such values; code that does must not run on a flushing thread.

/// FTZ (bit 15) and DAZ (bit 6) of MXCSR.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

/// Turns flush-to-zero and denormals-are-zero on (`on`) or off on the calling thread (x86-64; nothing elsewhere).
/// Returns whether they were on before.
///
/// # Safety
/// The thread must not run code that relies on subnormal results: the compiler assumes IEEE subnormals, so a value
/// folded at compile time can differ from the same operation at run time where the result is subnormal.
pub unsafe fn set_flush_denormals_on_this_thread(on: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr stores the 32-bit MXCSR register to the given address, ldmxcsr loads it back with the two
        // bits changed; both only touch that u32 and the thread's own floating-point control state.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            let was = csr & FTZ_DAZ == FTZ_DAZ;
            let new = if on { csr | FTZ_DAZ } else { csr & !FTZ_DAZ };
            std::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, readonly));
            was
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = on;
        false
    }
}

/// [`set_flush_denormals_on_this_thread`] on the calling thread and on every thread of the current rayon pool (the
/// global one, where candle's and this crate's CPU kernels run, when called from outside a pool), so that a
/// training loop runs at a speed that does not depend on how many tiny values its weights produce. Threads started
/// later inherit the setting of the thread that starts them (on Linux); the Walsh-Hadamard transform's own helper
/// threads keep theirs (its sums and differences of normal values make no subnormals unless they cancel).
///
/// # Safety
/// As [`set_flush_denormals_on_this_thread`], for all those threads.
pub unsafe fn set_flush_denormals(on: bool) {
    // SAFETY: passed on to the caller.
    unsafe { set_flush_denormals_on_this_thread(on) };
    rayon::broadcast(|_| {
        // SAFETY: passed on to the caller.
        unsafe { set_flush_denormals_on_this_thread(on) };
    });
}

/// Whether the calling thread flushes subnormals to zero.
pub fn flushes_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: as in `set_flush_denormals_on_this_thread`, a store of MXCSR to a local u32.
        unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack)) };
        csr & FTZ_DAZ == FTZ_DAZ
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On x86-64 a subnormal product becomes an exact zero once the thread flushes, normal products are unchanged,
    /// and turning it off again brings the subnormal back; on a fresh thread (default MXCSR) it stays subnormal.
    #[test]
    fn subnormal_products_become_zero() {
        let (a, b) = (
            std::hint::black_box(1.5e-20f32),
            std::hint::black_box(3.0e-20f32),
        );
        let before = std::thread::spawn(move || (a * b, flushes_denormals()))
            .join()
            .unwrap();
        assert!(
            before.0 > 0.0 && before.0 < f32::MIN_POSITIVE,
            "{}",
            before.0
        );
        assert!(!before.1);
        // Each product reads its operands through `black_box` after the switch, so the compiler cannot compute it
        // once for both (it does not know that the switch changes what a multiplication gives).
        let mul = |x: f32, y: f32| std::hint::black_box(x) * std::hint::black_box(y);
        let after = std::thread::spawn(move || {
            // SAFETY: this thread computes nothing but the products below.
            let was = unsafe { set_flush_denormals_on_this_thread(true) };
            let flushed = (mul(a, b), flushes_denormals());
            let normal = std::hint::black_box(1.5f32) * std::hint::black_box(3.0f32);
            // SAFETY: as above.
            unsafe { set_flush_denormals_on_this_thread(false) };
            (was, flushed, normal, mul(a, b), flushes_denormals())
        })
        .join()
        .unwrap();
        let (was, flushed, normal, again, off) = after;
        assert!(!was);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(flushed.0.to_bits(), 0);
            assert!(flushed.1);
        }
        assert_eq!(normal, 4.5);
        assert_eq!(again.to_bits(), before.0.to_bits());
        assert!(!off);
    }
}
