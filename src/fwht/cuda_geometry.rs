//! Launch geometry of the CUDA kernels in `cuda/fwht.cu`: pure functions, compiled with or without the `cuda`
//! feature, so that their tests run everywhere, including the check that they agree with the kernels' own
//! compile-time constants (`cuda/emu/geometry.cpp`, built with the system's C++ compiler).

use candle_core::Layout;

/// Range of `log2 n` that the persistent kernels cover (n = 2^12 · 2^A, A = 1 … 8).
pub(super) const PERSISTENT_LOG2: std::ops::RangeInclusive<u32> = 13..=20;
/// Range of `log2 n` that the transposed one-pass kernels cover.
pub(super) const TRANSPOSED_LOG2: std::ops::RangeInclusive<u32> = 10..=15;

/// Launch plan of the persistent kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Plan {
    pub blocks: usize,
    pub slots: usize,
    pub lag: usize,
    pub smem: u32,
}

/// Shared bytes of the persistent kernel for n = 2^log_n: the item slot (16 bytes), then the larger of a
/// sub-row of 4096 and a column tile.
pub(super) fn persistent_smem(log_n: u32, acc_bytes: u32) -> u32 {
    16 + col_cfg(log_n - 12, acc_bytes).2.max(4096 * acc_bytes)
}

/// Plans the persistent kernel for `rows` rows of 2^log_n with `resident` blocks on the device at once. The
/// column items of row r are handed out `lag` rows after its row items, and a ring slot is reused `slots` rows
/// later; both leave about 1.5 rounds of the resident blocks' items in between, as far as the ring stays
/// within `ring_max` bytes. Invariant of the kernel: `slots > lag` unless no slot is reused (`slots ≥ rows`).
pub(super) fn plan(
    rows: usize,
    log_n: u32,
    acc_bytes: u32,
    resident: usize,
    ring_max: usize,
) -> Plan {
    let a = log_n - 12;
    let nc = col_cfg(a, acc_bytes).0;
    let row_items = 1usize << a;
    let items = row_items + (4096 / nc as usize);
    let blocks = resident.clamp(1, rows * items);
    let window = (3 * blocks).div_ceil(2 * items).max(1); // 1.5 rounds of resident blocks, in rows
    let row_bytes = (1usize << log_n) * acc_bytes as usize;
    let mut slots = 2 * window + 1;
    let mut lag = window;
    let fit = (ring_max / row_bytes).max(2);
    if slots > fit {
        slots = fit;
        lag = lag.min(slots - 1);
    }
    if slots >= rows {
        slots = rows;
    }
    Plan {
        blocks,
        slots,
        lag: lag.min(rows),
        smem: persistent_smem(log_n, acc_bytes),
    }
}

/// Launch geometry of the one-pass kernel; mirrors `RowCfg` in `cuda/fwht.cu` (the kernel traps on a mismatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowCfg {
    pub rows_per_block: u32,
    pub block: u32,
    pub smem: u32,
}

pub(super) fn row_cfg(log_n: u32, acc_bytes: u32, in_bytes: u32, transposed: bool) -> RowCfg {
    let transposed = transposed && log_n >= 10 && acc_bytes == 4;
    let log_e = if transposed {
        5
    } else if log_n <= 3 {
        log_n
    } else {
        (if in_bytes == 2 { 4 } else { 3 }).max((log_n - 4) / 2)
    };
    let log_t = log_n - log_e;
    let t = 1u32 << log_t;
    let rows_per_block = if t >= 256 { 1 } else { 256 / t };
    let smem = if log_t > 5 || transposed {
        rows_per_block * (1u32 << log_n) * acc_bytes
    } else {
        0
    };
    RowCfg {
        rows_per_block,
        block: rows_per_block * t,
        smem,
    }
}

/// Largest log2(n) done in one pass (the row must fit in shared memory as f32 or f64).
pub(super) fn one_pass_max(acc_bytes: u32) -> u32 {
    if acc_bytes == 4 {
        15
    } else {
        14
    }
}

/// Split of log2(n) into (log2 n_lo, log2 n_hi) for the multi-pass transform: n_lo = 2^12 while n_hi ≤ 2^9,
/// then n_lo grows up to the one-pass limit (n_hi ≤ 2^10).
pub(super) fn split(log_n: u32, acc_bytes: u32) -> (u32, u32) {
    let lo = 12.max(log_n.saturating_sub(9)).min(one_pass_max(acc_bytes));
    (lo, log_n - lo)
}

/// (columns per block, threads, shared bytes) of the column kernel; mirrors `ColCfg` in `cuda/fwht.cu`.
pub(super) fn col_cfg(log_hi: u32, acc_bytes: u32) -> (u32, u32, u32) {
    let nc = 16u32.max(1 << 13u32.saturating_sub(log_hi));
    (nc, 256, (1u32 << log_hi) * nc * acc_bytes)
}

/// If every row of `layout` is contiguous and the rows sit at one constant stride, returns that stride.
pub(super) fn row_stride(layout: &Layout) -> Option<usize> {
    let dims = layout.dims();
    let strides = layout.stride();
    let k = dims.len();
    let n = dims[k - 1];
    if n > 1 && strides[k - 1] != 1 {
        return None;
    }
    let mut stride = None;
    let mut span = 1usize;
    for i in (0..k - 1).rev() {
        if dims[i] == 1 {
            continue;
        }
        match stride {
            None => stride = Some(strides[i]),
            Some(s) => {
                if strides[i] != s * span {
                    return None;
                }
            }
        }
        span *= dims[i];
    }
    Some(stride.unwrap_or(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_matches_the_kernel_rules() {
        // n = 2^15 f32: 1024 threads of 32 values, 128 KiB of shared memory.
        assert_eq!(
            row_cfg(15, 4, 4, false),
            RowCfg {
                rows_per_block: 1,
                block: 1024,
                smem: 128 << 10
            }
        );
        // n = 2^10: 8 values per thread, 128 threads per row, 2 rows per block.
        assert_eq!(
            row_cfg(10, 4, 4, false),
            RowCfg {
                rows_per_block: 2,
                block: 256,
                smem: 2 * 1024 * 4
            }
        );
        // transposed, n = 2^10: 32 values per thread, one warp per row, 8 rows per block, and shared memory
        // (the exchange does all five lane bits, no shuffles); 2^15: 1024 threads, like the default kernel.
        assert_eq!(
            row_cfg(10, 4, 2, true),
            RowCfg {
                rows_per_block: 8,
                block: 256,
                smem: 8 * 1024 * 4
            }
        );
        assert_eq!(row_cfg(15, 4, 2, true), row_cfg(15, 4, 4, false));
        assert_eq!(row_cfg(12, 8, 8, true), row_cfg(12, 8, 8, false));
        // n = 2^5: one warp-free row of 4 threads, no shared memory.
        assert_eq!(row_cfg(5, 4, 4, false).smem, 0);
        // bf16, n = 2^10: 16 values per thread, 64 threads per row, 4 rows per block.
        assert_eq!(
            row_cfg(10, 4, 2, false),
            RowCfg {
                rows_per_block: 4,
                block: 256,
                smem: 4 * 1024 * 4
            }
        );
        for log_n in 0..=15 {
            for in_bytes in [2, 4] {
                for transposed in [false, true] {
                    let c = row_cfg(log_n, 4, in_bytes, transposed);
                    assert!(
                        c.block.is_multiple_of(32) && c.block <= 1024,
                        "{log_n}: {c:?}"
                    );
                    assert!(c.smem <= 227 << 10);
                }
            }
        }
        for log_n in 16..=24 {
            for acc in [4, 8] {
                let (lo, hi) = split(log_n, acc);
                assert_eq!(lo + hi, log_n);
                assert!(lo <= one_pass_max(acc) && (1..=10).contains(&hi));
                assert!(col_cfg(hi, acc).2 <= 227 << 10);
            }
        }
    }

    #[test]
    fn persistent_plans_keep_the_kernel_invariant() {
        for log_n in PERSISTENT_LOG2 {
            for acc in [4, 8] {
                for rows in [1, 2, 3, 7, 64, 4096] {
                    for resident in [1, 3, 660, 1056] {
                        for ring in [1 << 20, 24 << 20] {
                            let p = plan(rows, log_n, acc, resident, ring);
                            let what = format!(
                                "2^{log_n} acc {acc} rows {rows} resident {resident}: {p:?}"
                            );
                            assert!(p.slots >= 1 && p.lag >= 1 && p.blocks >= 1, "{what}");
                            assert!(p.slots > p.lag || p.slots >= rows, "{what}");
                            assert!(p.slots <= rows.max(2), "{what}");
                            assert!(p.smem <= 227 << 10, "{what}");
                            if p.slots > 2 {
                                assert!(p.slots << log_n <= ring / acc as usize, "{what}");
                            }
                        }
                    }
                }
            }
        }
        // n = 2^20 f32 on an H100 (5 blocks of 256 threads per SM, 132 SMs): 256 row items and 128 column items
        // per row, a window of 3 rows, but the 24 MiB ring holds 6 rows of 4 MiB.
        let p = plan(64, 20, 4, 660, 24 << 20);
        assert_eq!((p.blocks, p.slots, p.lag), (660, 6, 3));
    }

    /// The kernels' compile-time geometry, printed by `cuda/emu/geometry.cpp` (built with the system's C++
    /// compiler, `CXX` or `c++`), against the launch geometry above, for every kernel the op launches.
    #[test]
    fn rust_geometry_matches_the_kernels() {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let exe =
            std::env::temp_dir().join(format!("candle_structured_geometry_{}", std::process::id()));
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
        let build = std::process::Command::new(&cxx)
            .args(["-std=c++17", "-O0", "-w", "-o"])
            .arg(&exe)
            .arg(root.join("cuda/emu/geometry.cpp"))
            .output()
            .unwrap_or_else(|e| {
                panic!("this test needs a C++17 compiler ({cxx}: {e}); install g++ or set CXX")
            });
        assert!(
            build.status.success(),
            "{}",
            String::from_utf8_lossy(&build.stderr)
        );
        let out = std::process::Command::new(&exe)
            .output()
            .expect("run the geometry dump");
        let _ = std::fs::remove_file(&exe);
        let text = String::from_utf8(out.stdout).expect("ASCII output");
        let (mut rows, mut cols, mut fused) = (0, 0, 0);
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            let v: Vec<u32> = f[1..]
                .iter()
                .map(|x| x.parse().expect("a number"))
                .collect();
            match f[0] {
                "row" => {
                    let [log_n, acc, input, transposed, rows_per_block, block, smem] = v[..] else {
                        panic!("{line}")
                    };
                    if acc == 8 && log_n > one_pass_max(8) {
                        continue; // no f64 kernel at 2^15
                    }
                    let kernel = RowCfg {
                        rows_per_block,
                        block,
                        smem,
                    };
                    assert_eq!(
                        row_cfg(log_n, acc, input, transposed == 1),
                        kernel,
                        "{line}"
                    );
                    rows += 1;
                }
                "col" => {
                    let [log_hi, acc, nc, block, smem] = v[..] else {
                        panic!("{line}")
                    };
                    assert_eq!(col_cfg(log_hi, acc), (nc, block, smem), "{line}");
                    cols += 1;
                }
                "fused" => {
                    let [a, acc, _input, block, smem] = v[..] else {
                        panic!("{line}")
                    };
                    assert_eq!(block, 256, "{line}");
                    assert_eq!(plan(3, 12 + a, acc, 1, usize::MAX).smem, smem, "{line}");
                    fused += 1;
                }
                other => panic!("unknown line kind {other}"),
            }
        }
        assert_eq!(
            (rows, cols, fused),
            (79, 20, 24),
            "every family and size compared"
        );
    }

    #[test]
    fn row_strides() {
        use candle_core::Shape;
        let l = Layout::contiguous(Shape::from((3, 4, 8)));
        assert_eq!(row_stride(&l), Some(8));
        let l = Layout::contiguous(Shape::from((6, 16)))
            .narrow(1, 4, 8)
            .unwrap();
        assert_eq!(row_stride(&l), Some(16));
        let l = Layout::contiguous(Shape::from((8, 4)))
            .transpose(0, 1)
            .unwrap();
        assert_eq!(row_stride(&l), None);
        let l = Layout::contiguous(Shape::from((2, 6, 8)))
            .narrow(1, 1, 4)
            .unwrap();
        assert_eq!(row_stride(&l), None);
    }
}
