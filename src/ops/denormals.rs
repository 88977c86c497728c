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

/// FTZ (bit 15) and DAZ (bit 6) of MXCSR.
#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

/// Sets flush-to-zero and denormals-are-zero on the calling thread (x86-64; nothing elsewhere). Returns whether
/// they were already set.
pub fn flush_denormals_on_this_thread() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr stores the 32-bit MXCSR register to the given address, ldmxcsr loads it back with two
        // more bits set; both only touch that u32 and the thread's own floating-point control state.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            let was = csr & FTZ_DAZ == FTZ_DAZ;
            let new = csr | FTZ_DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &new, options(nostack, readonly));
            was
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Sets flush-to-zero and denormals-are-zero on the calling thread and on every thread of rayon's global pool
/// (where candle's and this crate's CPU kernels run), so that a training loop runs at a speed that does not depend
/// on how many tiny values its weights produce (subnormal operands take a microcode path tens of times slower). Other threads keep their setting:
/// a trainer's workers set it when they start; the Walsh-Hadamard transform's own helper threads do not need it
/// (sums and differences of normal values are never subnormal unless they cancel to below 1.2e-38).
pub fn flush_denormals() {
    flush_denormals_on_this_thread();
    rayon::broadcast(|_| {
        flush_denormals_on_this_thread();
    });
}

/// Whether the calling thread flushes subnormals to zero.
pub fn flushes_denormals() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: as in `flush_denormals_on_this_thread`, a store of MXCSR to a local u32.
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

    /// On x86-64 a subnormal product becomes an exact zero once the thread flushes, and normal products are
    /// unchanged; on a fresh thread (default MXCSR) it stays subnormal.
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
        let after = std::thread::spawn(move || {
            flush_denormals_on_this_thread();
            (
                a * b,
                flushes_denormals(),
                std::hint::black_box(1.5f32) * std::hint::black_box(3.0f32),
            )
        })
        .join()
        .unwrap();
        if cfg!(target_arch = "x86_64") {
            assert_eq!(after.0.to_bits(), 0);
            assert!(after.1);
        }
        assert_eq!(after.2, 4.5);
    }
}
