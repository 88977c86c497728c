//! Build script. With the `cuda` feature on, compiles `cuda/fwht.cu` (the Walsh–Hadamard transform's kernels that
//! have run on a GPU) to PTX with nvcc (as candle builds its own kernels); with `cuda-untested` also the kernels
//! not yet run on a GPU: the transform's transposed and persistent variants (`FWHT_UNTESTED_VARIANTS`) and
//! `cuda/ops.cu` (the training ops). The PTX is embedded in the library and loaded by the driver at first use.
//! Without the feature it does nothing, so the default build needs no CUDA toolkit.
//!
//! Environment: `NVCC` (the compiler; else `$CUDA_ROOT/bin/nvcc`, `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc` or
//! `nvcc` on the PATH) and `CUDA_COMPUTE_CAP` (e.g. `90`; else asked of `nvidia-smi`; else 80, whose PTX the
//! driver JIT-compiles for any newer GPU).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    for file in ["cuda/fwht.cu", "cuda/ops.cu", "cuda/common.cuh"] {
        println!("cargo:rerun-if-changed={file}");
    }
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_COMPUTE_CAP",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let nvcc = find_nvcc();
    let cap = compute_cap();
    let untested = env::var_os("CARGO_FEATURE_CUDA_UNTESTED").is_some();
    let files: &[&str] = if untested {
        &["fwht", "ops"]
    } else {
        &["fwht"]
    };
    for name in files {
        let src = format!("cuda/{name}.cu");
        let mut cmd = Command::new(&nvcc);
        if untested {
            cmd.arg("-DFWHT_UNTESTED_VARIANTS");
        }
        let status = cmd
            .args(["--ptx", "-O3", "-std=c++17", "-diag-suppress", "177"])
            .arg(format!("-arch=sm_{cap}"))
            .arg(&src)
            .arg("-o")
            .arg(out_dir.join(format!("{name}.ptx")))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("nvcc ({}) failed on {src} with {s}", nvcc.display()),
            Err(e) => panic!(
                "the `cuda` feature needs nvcc, which could not be run ({}: {e}); set NVCC or CUDA_ROOT",
                nvcc.display()
            ),
        }
    }
}

fn find_nvcc() -> PathBuf {
    if let Some(p) = env::var_os("NVCC") {
        return PathBuf::from(p);
    }
    for var in ["CUDA_ROOT", "CUDA_HOME", "CUDA_PATH"] {
        if let Some(root) = env::var_os(var) {
            let p = PathBuf::from(root).join("bin").join("nvcc");
            if p.exists() {
                return p;
            }
        }
    }
    PathBuf::from("nvcc")
}

fn compute_cap() -> u32 {
    if let Ok(v) = env::var("CUDA_COMPUTE_CAP") {
        if let Ok(c) = v.trim().replace('.', "").parse() {
            return c;
        }
    }
    let smi = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output();
    if let Ok(o) = smi {
        if o.status.success() {
            let text = String::from_utf8_lossy(&o.stdout);
            if let Some(Ok(c)) = text
                .lines()
                .next()
                .map(|l| l.trim().replace('.', "").parse())
            {
                return c;
            }
        }
    }
    80
}
