//! The CUDA kernels of `cuda/fwht.cu`, run on the CPU without a GPU: `cuda/emu/check.cpp` includes the kernel
//! source with a small emulation of the CUDA features it uses (`cuda/emu/cuda_emu.h`: threads as fibers,
//! barriers, warp shuffles, shared memory with a guard zone and a count of its bank conflicts, 16-byte alignment
//! checks, blocks at uneven speeds for the persistent kernel) and compares every kernel family (one pass, its transposed variant, packed n ≤ 4,
//! the two-kernel and the persistent multi-pass paths), every element type and every n from 2^0 to 2^20 bit for
//! bit against a plain transform in the CPU kernel's butterfly order; the one-pass kernels must also be free of
//! shared-memory bank conflicts.
//!
//! This test builds that program with the system's C++ compiler (`CXX`, else `c++`), so that CI checks the
//! kernels' logic on every change; speed and the real memory model wait for a GPU (`examples/gpu_check.rs`).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn cuda_kernels_match_the_reference_in_emulation() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let exe = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fwht_cuda_emulated");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
    let build = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-Wall", "-Wno-unknown-pragmas", "-o"])
        .arg(&exe)
        .arg(root.join("cuda/emu/check.cpp"))
        .output()
        .unwrap_or_else(|e| {
            panic!("this test needs a C++17 compiler ({cxx}: {e}); install g++ or set CXX")
        });
    assert!(
        build.status.success(),
        "{cxx} failed on cuda/emu/check.cpp:\n{}",
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
    // the summary line counts the comparisons: every family and type must have run
    let summary = stdout.lines().last().unwrap_or_default();
    let count: usize = summary
        .split_whitespace()
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(
        summary.starts_with("ALL PASSED") && count >= 240,
        "{summary}"
    );
}
