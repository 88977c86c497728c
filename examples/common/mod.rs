//! Helpers shared by the example binaries (included with `#[path = "common/mod.rs"] mod common;`).
#![allow(dead_code)]

use anyhow::{bail, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// The training text: `data` when given (`--data PATH`), else the corpus of this repository checkout,
/// `data/fr-debian-large`. The published crate carries no corpus: outside a checkout, pass a path.
pub fn corpus_dir(data: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = data {
        return Ok(p.to_path_buf());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join("fr-debian-large");
    if !dir.is_dir() {
        bail!(
            "no corpus at {} (it is part of the repository checkout, not of the published crate); \
             pass a UTF-8 text file or folder with --data PATH",
            dir.display()
        )
    }
    Ok(dir)
}

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

/// Environment for a training process, each set only where the caller has not set it:
/// * mimalloc keeps freed memory (`MIMALLOC_PURGE_DELAY=-1`) in a large arena (`MIMALLOC_ARENA_RESERVE=4GiB`, so
///   that the logit-sized buffers stay inside it too) instead of giving it back to the OS after 10 ms and taking
///   zeroed pages again at the next step;
/// * candle's element-wise thread pool spins 1,000 rounds instead of 25,000 before it parks a worker: a spinning
///   worker takes a core from the matmul threads that run next.
///
/// What each costs when left out is measured in `docs/cpu-speed.md`.
pub fn set_runtime_env(cmd: &mut std::process::Command) {
    for (k, v) in [
        ("MIMALLOC_PURGE_DELAY", "-1"),
        ("MIMALLOC_ARENA_RESERVE", "4GiB"),
        ("CANDLE_BARRIER_POOL_SPIN_LIMIT", "1000"),
    ] {
        if std::env::var_os(k).is_none() {
            cmd.env(k, v);
        }
    }
}

/// mimalloc gives freed memory back to the OS after 10 ms by default, and every training step then takes zeroed
/// pages again from the kernel (`docs/cpu-speed.md`). Its options are read at process start, so the example re-runs itself once with them set, unless the caller set them.
pub fn reexec_with_allocator_options() -> Result<Option<i32>> {
    const MARK: &str = "CANDLE_STRUCTURED_ALLOC_SET";
    if std::env::var_os(MARK).is_some() {
        return Ok(None);
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1)).env(MARK, "1");
    set_runtime_env(&mut cmd);
    // Ctrl-C reaches the child too (same process group); the parent just waits for it.
    ctrlc::set_handler(|| {})?;
    match cmd.status() {
        Ok(status) => Ok(Some(status.code().unwrap_or(130))),
        Err(_) => Ok(None), // cannot re-run: train in this process with the default options
    }
}
