//! The CUDA kernels of `cuda/`, run on the CPU without a GPU: a check program includes the kernel source with a
//! small emulation of the CUDA features it uses (`cuda/emu/cuda_emu.h`: threads as fibers, barriers, warp
//! shuffles, shared memory with a guard zone and a count of its bank conflicts, 16-byte alignment checks, blocks
//! at uneven speeds for the persistent kernel) and compares the kernels with references:
//!
//! * `cuda/emu/check.cpp`, the Walsh–Hadamard kernels of `cuda/fwht.cu`: every kernel family (one pass, its
//!   transposed variant, packed n ≤ 4, the two-kernel and the persistent multi-pass paths), every element type
//!   and every n from 2^0 to 2^20, bit for bit against a plain transform in the CPU kernel's butterfly order; the
//!   one-pass kernels must also be free of shared-memory bank conflicts.
//! * `cuda/emu/ops_check.cpp`, the training-op kernels of `cuda/ops.cu` (LayerNorm, GELU, dropout, rotary, the
//!   causal attention softmax, cross-entropy; forward and backward; f32, f16, bf16) against double-precision
//!   references, with the host's launch shapes and with small odd grids.
//!
//! These tests build the programs with the system's C++ compiler (`CXX`, else `c++`), so that CI checks the
//! kernels' logic on every change; speed and the real memory model wait for a GPU (`examples/gpu_check.rs`).

use std::path::PathBuf;
use std::process::Command;

/// Builds `cuda/emu/<name>.cpp`, runs it and returns its last line, after asserting that it exited cleanly and
/// printed no `FAIL` line.
fn build_and_run(name: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("emulated_{name}"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let src = root.join(format!("cuda/emu/{name}.cpp"));
    let build = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas", "-o"])
        .arg(&exe)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs a C++17 compiler ({cxx}: {e}); install g++ or set CXX")
        });
    assert!(
        build.status.success(),
        "{cxx} failed on {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(&exe)
        .output()
        .expect("run the emulated kernel checks");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert!(
        run.status.success() && failed.is_empty(),
        "emulated CUDA kernels failed (status {}):\n{}\n{}",
        run.status,
        failed.join("\n"),
        String::from_utf8_lossy(&run.stderr)
    );
    stdout.lines().last().unwrap_or_default().to_string()
}

/// The number of comparisons in a summary line `ALL PASSED: <n> comparisons, 0 failures`.
fn passed(summary: &str) -> usize {
    assert!(summary.starts_with("ALL PASSED"), "{summary}");
    summary
        .split_whitespace()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn cuda_kernels_match_the_reference_in_emulation() {
    // every family and type must have run
    let summary = build_and_run("check");
    assert!(passed(&summary) >= 240, "{summary}");
}

#[test]
fn cuda_op_kernels_match_the_reference_in_emulation() {
    // 18 comparisons per dtype and launch shape: 3 dtypes, 2 shapes
    let summary = build_and_run("ops_check");
    assert!(passed(&summary) >= 108, "{summary}");
}
