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
/// pages again from the kernel (a third of the CPU time went to page clearing). Its options are read at process
/// start, so the example replaces its own process image once with them set (`exec`, Unix: the same PID, no child
/// left behind when the process is killed), unless the caller set them. Where `exec` is not available or fails,
/// the example runs on with the default options.
pub fn reexec_with_allocator_options() -> Result<()> {
    const MARK: &str = "CANDLE_STRUCTURED_ALLOC_SET";
    if std::env::var_os(MARK).is_some() {
        return Ok(());
    }
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(std::env::args_os().skip(1)).env(MARK, "1");
    set_runtime_env(&mut cmd);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        // Only returns on failure.
        let err = cmd.exec();
        eprintln!(
            "cannot re-execute with the allocator options ({err}); running with the defaults"
        );
    }
    Ok(())
}

/// A flag raised by the first Ctrl-C or SIGTERM (`kill PID`; the loop then stops after its step and checkpoints,
/// `what` says so); a second one quits at once.
pub fn stop_on_ctrl_c(what: &'static str) -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            eprintln!("\nsecond stop request: quitting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nstop requested (Ctrl-C or SIGTERM): {what} (again to quit at once)");
    })?;
    Ok(stop)
}

/// GPU set-up before training: keep freed memory for the next step (unless `release`), and say which training ops
/// run. Nothing on the CPU.
pub fn prepare_gpu(device: &Device, release: bool) -> Result<()> {
    if !release && candle_structured::gpu::keep_freed_memory(device)? {
        eprintln!("GPU memory pool: freed memory is kept for the next step (--release-gpu-memory to disable)");
    }
    if device.is_cuda() {
        eprintln!(
            "training ops on the GPU: {}",
            if candle_structured::ops::cuda_fused_ops() {
                "the crate's CUDA kernels (cuda/ops.cu)"
            } else {
                "candle's own ops (CANDLE_STRUCTURED_CUDA_OPS=1 for the crate's CUDA kernels)"
            }
        );
    }
    Ok(())
}

/// The compute dtype of `--precision` (`f32`, `tf32`: f32 with TensorFloat-32 CUDA matmuls, `bf16`).
pub fn compute_dtype(precision: &str, device: &Device) -> candle_core::DType {
    match precision {
        "bf16" => candle_core::DType::BF16,
        "tf32" => {
            // A process-wide switch of candle's CUDA backend (a no-op in builds without CUDA).
            candle_core::cuda::set_gemm_reduced_precision_f32(true);
            if device.is_cpu() {
                eprintln!(
                    "--precision tf32 only changes CUDA matmuls; on the CPU this run is plain f32"
                );
            }
            candle_core::DType::F32
        }
        _ => candle_core::DType::F32,
    }
}
