//! FFHT (FALCONN-LIB/FFHT, MIT; the fastest published CPU FWHT), built from its C sources at run time as a peer
//! for `fwht_bench`, so that its column is measured beside the crate's in the same run, never typed in.
//!
//! The sources are not part of this crate: `benches/get_ffht.sh` fetches them from PyPI (the sdist of
//! `ffht-unofficial`). [`Ffht::build`] compiles `fht.c` and `fast_copy.c` with the system C compiler (`$CC`, else
//! `cc`) and `-O3 -march=native` into a shared library in the temporary directory, and loads it with `libloading`.

use std::ffi::c_int;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where [`Ffht::find`] looks when neither `--ffht-src` nor `FFHT_SRC` names a directory.
pub const DEFAULT_DIRS: [&str; 2] = [
    concat!(env!("CARGO_MANIFEST_DIR"), "/target/ffht-src"),
    "/tmp/ffht-src",
];

type Fht<T> = unsafe extern "C" fn(*mut T, c_int) -> c_int;

/// FFHT's in-place transforms `fht_float` / `fht_double` (unnormalised: `x ← x · H_n`), loaded from the library.
pub struct Ffht {
    f32: Fht<f32>,
    f64: Fht<f64>,
    /// The compiler and flags it was built with, for the report.
    pub build: String,
    /// Keeps the library mapped while the function pointers above are in use.
    _lib: libloading::Library,
}

/// The element types FFHT transforms.
pub trait FfhtFloat: Copy {
    /// `buf ← buf · H_n`, `n = buf.len()` (a power of two ≥ 2); false if FFHT refuses the length.
    fn fht(lib: &Ffht, buf: &mut [Self]) -> bool;
}

impl FfhtFloat for f32 {
    fn fht(lib: &Ffht, buf: &mut [f32]) -> bool {
        // SAFETY: FFHT transforms the 2^log_n elements at `buf` in place; `buf` holds that many.
        unsafe { (lib.f32)(buf.as_mut_ptr(), buf.len().trailing_zeros() as c_int) == 0 }
    }
}

impl FfhtFloat for f64 {
    fn fht(lib: &Ffht, buf: &mut [f64]) -> bool {
        // SAFETY: as for f32.
        unsafe { (lib.f64)(buf.as_mut_ptr(), buf.len().trailing_zeros() as c_int) == 0 }
    }
}

impl Ffht {
    /// The directory holding `fht.c`: `explicit` (`--ffht-src`), else `$FFHT_SRC`, else the first of
    /// [`DEFAULT_DIRS`] that has it. Each candidate may be the `ffht/` source folder itself or any folder above it
    /// (such as the unpacked sdist, `FFHT-unofficial-0.3/ffht/`), searched two levels down.
    pub fn find(explicit: Option<&Path>) -> Result<PathBuf, String> {
        let candidates: Vec<PathBuf> = match (explicit, std::env::var_os("FFHT_SRC")) {
            (Some(p), _) => vec![p.to_path_buf()],
            (None, Some(p)) => vec![PathBuf::from(p)],
            (None, None) => DEFAULT_DIRS.iter().map(PathBuf::from).collect(),
        };
        for dir in &candidates {
            if let Some(found) = find_fht_c(dir, 3) {
                return Ok(found);
            }
        }
        let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
        Err(format!("no fht.c under {}", tried.join(" or ")))
    }

    /// Compiles the sources in `src` (the folder of `fht.c`) and loads the library.
    pub fn build(src: &Path) -> Result<Ffht, String> {
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let flags = ["-O3", "-march=native", "-std=gnu99", "-shared", "-fPIC"];
        let out = std::env::temp_dir().join(format!("ffht-peer-{}.so", std::process::id()));
        let status = Command::new(&cc)
            .args(flags)
            .arg(src.join("fht.c"))
            .arg(src.join("fast_copy.c"))
            .arg("-o")
            .arg(&out)
            .status()
            .map_err(|e| format!("could not run the C compiler `{cc}`: {e}"))?;
        if !status.success() {
            return Err(format!("`{cc}` failed on {}: {status}", src.display()));
        }
        let version = Command::new(&cc)
            .arg("--version")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.lines().next().map(str::to_owned))
            .unwrap_or_default();
        // SAFETY: the library is FFHT, just built; loading it runs no initialisers of note.
        let lib = unsafe { libloading::Library::new(&out) }.map_err(|e| e.to_string())?;
        // The file is mapped now; removing its name keeps the temporary directory clean.
        let _ = std::fs::remove_file(&out);
        // SAFETY: the symbols have these C signatures (fht.h).
        let (f32, f64) = unsafe {
            let f: libloading::Symbol<Fht<f32>> =
                lib.get(b"fht_float\0").map_err(|e| e.to_string())?;
            let d: libloading::Symbol<Fht<f64>> =
                lib.get(b"fht_double\0").map_err(|e| e.to_string())?;
            (*f, *d)
        };
        Ok(Ffht {
            f32,
            f64,
            build: format!(
                "{} from {} ({cc} {}: {version})",
                "fht.c fast_copy.c",
                src.display(),
                flags.join(" ")
            ),
            _lib: lib,
        })
    }
}

/// The folder of the first `fht.c` at most `depth` levels below `dir` (beside a `fast_copy.c`).
fn find_fht_c(dir: &Path, depth: u32) -> Option<PathBuf> {
    if dir.join("fht.c").is_file() && dir.join("fast_copy.c").is_file() {
        return Some(dir.to_path_buf());
    }
    if depth == 0 {
        return None;
    }
    let mut subdirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    subdirs.into_iter().find_map(|d| find_fht_c(&d, depth - 1))
}

/// How to get the sources, for the message printed when they are missing.
pub const HOW_TO_GET: &str = "benches/get_ffht.sh fetches FFHT's sources from PyPI (the sdist of ffht-unofficial 0.3, \
MIT) into target/ffht-src; or pass --ffht-src DIR / set FFHT_SRC to a folder holding fht.c and fast_copy.c";
