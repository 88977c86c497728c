//! Run-time settings of the GPU that training wants (no-ops on the CPU and in builds without the `cuda` feature).

use candle_core::{Device, Result};
use std::sync::atomic::{AtomicU32, Ordering};

/// A process-wide setting of the opt-in CUDA code: the value code last [`set`](Self::set), else the one the
/// environment variable `var` gives through `parse` (read once, at the first [`get`](Self::get); an unset
/// variable parses as `""`).
pub(crate) struct EnvSetting {
    cell: AtomicU32,
    var: &'static str,
    parse: fn(&str) -> u32,
}

impl EnvSetting {
    const UNSET: u32 = u32::MAX - 1;

    pub(crate) const fn new(var: &'static str, parse: fn(&str) -> u32) -> Self {
        Self {
            cell: AtomicU32::new(Self::UNSET),
            var,
            parse,
        }
    }

    /// An on/off switch: `1`, `true` or `yes` in the environment is on (1), anything else off (0).
    pub(crate) const fn flag(var: &'static str) -> Self {
        Self::new(var, |s| u32::from(matches!(s, "1" | "true" | "yes")))
    }

    pub(crate) fn set(&self, v: u32) {
        self.cell.store(v, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u32 {
        let v = self.cell.load(Ordering::Relaxed);
        if v != Self::UNSET {
            return v;
        }
        let from_env = (self.parse)(std::env::var(self.var).unwrap_or_default().trim());
        let _ =
            self.cell
                .compare_exchange(Self::UNSET, from_env, Ordering::Relaxed, Ordering::Relaxed);
        self.cell.load(Ordering::Relaxed)
    }
}

/// Makes the CUDA driver keep the memory that candle frees in the device's default memory pool, instead of handing
/// it back to the system at every synchronisation. Returns whether anything was changed (false on the CPU).
///
/// candle allocates through cudarc with `cuMemAllocAsync` from the device's default pool, whose release threshold
/// is 0: every synchronisation (a loss read back each step) returns the pool's unused memory to the system, and the
/// next step maps it again. Raising the threshold to the maximum keeps it, like PyTorch's caching allocator; the
/// memory stays reserved for this process until it exits.
///
/// ```
/// use candle_core::Device;
/// assert!(!candle_structured::gpu::keep_freed_memory(&Device::Cpu)?); // nothing to do on the CPU
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn keep_freed_memory(device: &Device) -> Result<bool> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            use cudarc::driver::sys;
            let stream = dev.cuda_stream();
            let ctx = stream.context();
            if !ctx.has_async_alloc() {
                return Ok(false);
            }
            let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
            let mut threshold = u64::MAX;
            // SAFETY: a valid device handle from cudarc's context; the attribute takes a pointer to a u64.
            unsafe {
                sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device())
                    .result()
                    .map_err(candle_core::Error::wrap)?;
                sys::cuMemPoolSetAttribute(
                    pool,
                    sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                    (&mut threshold as *mut u64).cast(),
                )
                .result()
                .map_err(candle_core::Error::wrap)?;
            }
            Ok(true)
        }
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::EnvSetting;

    #[test]
    fn env_setting_takes_the_set_value_over_the_environment() {
        // a variable no environment sets: the flag parses "" as off
        static S: EnvSetting = EnvSetting::flag("CANDLE_STRUCTURED_TEST_SETTING_NEVER_SET");
        assert_eq!(S.get(), 0);
        S.set(1);
        assert_eq!(S.get(), 1);
        static N: EnvSetting = EnvSetting::new("CANDLE_STRUCTURED_TEST_SETTING_NEVER_SET", |s| {
            s.parse().unwrap_or(7)
        });
        assert_eq!(N.get(), 7);
        N.set(3);
        assert_eq!(N.get(), 3);
    }
}
