//! Helpers shared by the example binaries (included with `#[path = "common/mod.rs"] mod common;`).
#![allow(dead_code)]

use anyhow::{bail, Result};
use candle_core::Device;

/// The device named on the command line: `cpu`, or `cuda` (GPU 0) when built with the `cuda` feature.
pub fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                Ok(Device::new_cuda(0)?)
            }
            #[cfg(not(feature = "cuda"))]
            {
                bail!("this binary was built without CUDA; rebuild with `--features cuda`")
            }
        }
        other => bail!("unknown device {other:?} (expected cpu or cuda)"),
    }
}

/// mimalloc gives freed memory back to the OS after 10 ms by default, and every training step then takes zeroed
/// pages again from the kernel (a third of the CPU time went to page clearing). Its options are read at process
/// start, so the example re-runs itself once with them set, unless the caller set them.
pub fn reexec_with_allocator_options() -> Result<Option<i32>> {
    const MARK: &str = "CANDLE_STRUCTURED_ALLOC_SET";
    if std::env::var_os(MARK).is_some() {
        return Ok(None);
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1)).env(MARK, "1");
    for (k, v) in [
        ("MIMALLOC_PURGE_DELAY", "-1"),
        ("MIMALLOC_ARENA_RESERVE", "4GiB"),
    ] {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
    // Ctrl-C reaches the child too (same process group); the parent just waits for it.
    ctrlc::set_handler(|| {})?;
    match cmd.status() {
        Ok(status) => Ok(Some(status.code().unwrap_or(130))),
        Err(_) => Ok(None), // cannot re-run: train in this process with the default options
    }
}
