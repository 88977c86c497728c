//! Benchmark of the Walsh-Hadamard transform: prints Markdown tables (`docs/fwht-bench.md` keeps measured ones).
//!
//! * against FFHT, its peer, built from its C sources in this run (see `peers/ffht.rs`; `benches/get_ffht.sh` fetches
//!   them from PyPI): one thread, in-place repeated transforms of a hot row aligned to a cache line (as FFHT's own
//!   benchmark measures), f32 and f64, the two timed side by side (each sample runs both in turn); the ratio is the
//!   crate's time over FFHT's, median over the samples. Without the sources the crate's columns are shown alone;
//! * one thread, ns per element, for each instruction set this CPU has, f32 and f64, and the best instruction set on
//!   a row 16 bytes past a cache line (a large `Vec`'s usual start); and the candle op on a `(1, n)` tensor (a new
//!   output per call);
//! * batches of rows: speed-up of rayon's global pool (called from the main thread) and of a 2-thread pool (called
//!   from inside it) over one thread;
//! * the candle op against candle's dense matmul by `H_n` (256 × n, f32, all threads).
//!
//! ```text
//! benches/get_ffht.sh                                   # once: FFHT's sources into target/ffht-src
//! taskset -c 1 cargo run --release --example fwht_bench              # everything (a few minutes)
//! taskset -c 1 cargo run --release --example fwht_bench -- --only ffht --min-log2 6   # against FFHT only
//! cargo run --release --example fwht_bench -- --quick   # fewer repetitions
//! cargo run --release --example fwht_bench -- --min-log2 4 --max-log2 22   # fewer rows
//! cargo run --release --example fwht_bench -- --fastest --samples 101 --only f32   # fastest sample, one table
//! cargo run --release --example fwht_bench -- --only batch   # only the batch table
//! ```
use candle_core::{Device, Tensor};
use candle_structured::fwht::{
    fwht_inplace, fwht_rows_inplace, fwht_rows_inplace_with, FwhtFloat, Isa,
};
use candle_structured::{hadamard_transform, hadamard_transform_ref};
use clap::Parser;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[path = "peers/ffht.rs"]
mod ffht;
use ffht::{Ffht, FfhtFloat};

#[derive(Parser)]
#[command(about = "Walsh-Hadamard transform benchmark (Markdown tables)")]
struct Args {
    /// Fewer and shorter repetitions.
    #[arg(long)]
    quick: bool,
    /// Smallest log2(n) of the one-thread tables.
    #[arg(long, default_value_t = 1)]
    min_log2: u32,
    /// Largest log2(n) of the one-thread tables.
    #[arg(long, default_value_t = 22)]
    max_log2: u32,
    /// Skip the dense-matmul comparison (slow).
    #[arg(long)]
    no_dense: bool,
    /// Only the tables against FFHT (ffht), the one-thread table for one dtype (f32 or f64), or the batch table
    /// (batch).
    #[arg(long)]
    only: Option<String>,
    /// One-thread table: report the fastest sample instead of the median (less sensitive to other processes on a
    /// shared machine).
    #[arg(long)]
    fastest: bool,
    /// Samples per one-thread measurement (default 41, 11 with --quick).
    #[arg(long)]
    samples: Option<usize>,
    /// Folder of FFHT's sources (`fht.c`, `fast_copy.c`, or a folder above them); else `FFHT_SRC`, else
    /// `target/ffht-src` in the repository, else `/tmp/ffht-src`.
    #[arg(long)]
    ffht_src: Option<PathBuf>,
}

/// Set by `--fastest`: [`median_time`] returns the fastest sample instead of the median.
static FASTEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Median over `samples` of the time of one call of `f` (each sample times `reps` calls, `reps` chosen so that a
/// sample lasts about `target`), in seconds, without rounding to whole nanoseconds.
fn median_time(samples: usize, target: Duration, mut f: impl FnMut()) -> f64 {
    // Warm up and calibrate.
    let t = Instant::now();
    f();
    let once = t.elapsed().max(Duration::from_nanos(20));
    let reps = (target.as_secs_f64() / once.as_secs_f64()).clamp(1.0, 1e7) as u32;
    for _ in 0..reps.min(1000) {
        f();
    }
    let mut times: Vec<f64> = (0..samples)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    times.sort_by(f64::total_cmp);
    if FASTEST.load(std::sync::atomic::Ordering::Relaxed) {
        times[0]
    } else {
        times[samples / 2]
    }
}

fn random<T: From<f32>>(len: usize, seed: u64) -> Vec<T> {
    // A small xorshift: deterministic, no zeros.
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            T::from((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
        })
        .collect()
}

/// ns per element of the candle op on a `(1, 2^log2)` tensor, on this thread: a new output tensor per call (as a
/// user of `hadamard_transform` pays it), the row transformed from the input into it.
fn op_ns_per_element<T: FwhtFloat + From<f32> + candle_core::WithDType>(
    log2: u32,
    samples: usize,
    target: Duration,
) -> f64 {
    let n = 1usize << log2;
    let x = Tensor::from_vec(random::<T>(n, 5 + log2 as u64), (1, n), &Device::Cpu).unwrap();
    let scale = 1.0 / (n as f64).sqrt();
    let t = median_time(samples, target, || {
        black_box(hadamard_transform(black_box(&x), scale).unwrap());
    });
    t * 1e9 / n as f64
}

/// ns per element of one in-place transform of a hot row of `2^log2` elements, on this thread, starting `skew` bytes
/// past a cache line (FFHT's benchmark aligns its buffer with `posix_memalign`; a large `Vec` from the system
/// allocator starts 16 bytes past one).
fn ns_per_element<T: FwhtFloat + From<f32>>(
    isa: Isa,
    log2: u32,
    skew: usize,
    samples: usize,
    target: Duration,
) -> f64
where
    f64: From<T>,
{
    let n = 1usize << log2;
    let size = std::mem::size_of::<T>();
    let mut buf: Vec<T> = random(n + 128 / size, 7 + log2 as u64);
    let start = (64 - buf.as_ptr() as usize % 64) % 64 / size + skew / size;
    let x = &mut buf[start..start + n];
    let scale = T::from(1.0 / (n as f32).sqrt());
    let t = median_time(samples, target, || {
        fwht_rows_inplace_with(isa, false, black_box(&mut *x), n, scale).unwrap();
    });
    t * 1e9 / n as f64
}

fn one_thread_table<T: FwhtFloat + From<f32> + candle_core::WithDType>(
    name: &str,
    args: &Args,
    samples: usize,
    target: Duration,
) where
    f64: From<T>,
{
    let isas: Vec<Isa> = Isa::ALL.into_iter().filter(|i| i.is_available()).collect();
    print!("| n ({name}) |");
    for isa in &isas {
        print!(" {isa:?} |");
    }
    println!(" best, row 16 B past a line | candle op, 1 × n tensor |");
    print!("|---|");
    for _ in &isas {
        print!("---:|");
    }
    println!("---:|---:|");
    for log2 in args.min_log2..=args.max_log2 {
        let times: Vec<f64> = isas
            .iter()
            .map(|&isa| ns_per_element::<T>(isa, log2, 0, samples, target))
            .collect();
        let skewed = ns_per_element::<T>(Isa::detect(), log2, 16, samples, target);
        let op = op_ns_per_element::<T>(log2, samples, target);
        print!("| 2^{log2} |");
        for t in &times {
            print!(" {t:.3} |");
        }
        println!(" {skewed:.3} | {op:.3} |");
    }
    println!();
}

/// A hot row of `n` elements on a 64-byte boundary (FFHT's benchmark allocates with `posix_memalign(…, 64, …)`),
/// inside `buf`.
fn aligned_row<T>(buf: &mut [T], n: usize) -> &mut [T] {
    let size = std::mem::size_of::<T>();
    let start = (64 - buf.as_ptr() as usize % 64) % 64 / size;
    &mut buf[start..start + n]
}

/// The crate against FFHT, one thread, side by side: [`fwht_inplace`] with scale 1 (FFHT's work: both compute the
/// unnormalised `x · H_n`) and with the orthonormal scale `1/√n` (one multiply more per element, merged into the
/// last pass), each on its own 64-byte-aligned row, transformed again and again in place. Values grow by `√n` per
/// unnormalised call, to infinity and then NaN; neither costs extra time in SSE/AVX arithmetic (only subnormals
/// would, and growing values never are).
fn ffht_table<T: FwhtFloat + FfhtFloat + From<f32>>(
    name: &str,
    lib: Option<&Ffht>,
    args: &Args,
    samples: usize,
    target: Duration,
) {
    let size = std::mem::size_of::<T>();
    match lib {
        Some(_) => {
            println!("| n ({name}) | crate, scale 1 | FFHT | crate / FFHT | crate, scale 1/√n | crate (1/√n) / FFHT |");
            println!("|---|---:|---:|---:|---:|---:|");
        }
        None => {
            println!("| n ({name}) | crate, scale 1 | crate, scale 1/√n |");
            println!("|---|---:|---:|");
        }
    }
    for log2 in args.min_log2.max(1)..=args.max_log2 {
        let n = 1usize << log2;
        let scale = T::from(1.0 / (n as f32).sqrt());
        let bufs: Vec<std::cell::RefCell<Vec<T>>> = (0..3)
            .map(|i| std::cell::RefCell::new(random::<T>(n + 64 / size, 7 + log2 as u64 + i)))
            .collect();
        let crate_run = |b: &std::cell::RefCell<Vec<T>>, s: T, reps: u32| {
            let mut b = b.borrow_mut();
            let x = aligned_row(&mut b, n);
            for _ in 0..reps {
                fwht_inplace(black_box(&mut *x), s).unwrap();
            }
        };
        let mut unscaled = |reps| crate_run(&bufs[0], T::from(1.0), reps);
        let mut scaled = |reps| crate_run(&bufs[1], scale, reps);
        match lib {
            Some(lib) => {
                let mut peer = |reps| {
                    let mut b = bufs[2].borrow_mut();
                    let x = aligned_row(&mut b, n);
                    for _ in 0..reps {
                        assert!(T::fht(lib, black_box(&mut *x)), "FFHT refused n = 2^{log2}");
                    }
                };
                let r = interleaved(
                    samples,
                    n,
                    target,
                    &mut [&mut peer, &mut unscaled, &mut scaled],
                );
                println!(
                    "| 2^{log2} | {:.3} | {:.3} | {:.2}× | {:.3} | {:.2}× |",
                    r[1].0,
                    r[0].0,
                    1.0 / r[1].1,
                    r[2].0,
                    1.0 / r[2].1
                );
            }
            None => {
                let r = interleaved(samples, n, target, &mut [&mut unscaled, &mut scaled]);
                println!("| 2^{log2} | {:.3} | {:.3} |", r[0].0, r[1].0);
            }
        }
    }
    println!();
}

/// Times several ways of doing the same work side by side: each sample runs every mode in turn, in alternating order
/// (one untimed call, so that its data is hot again after the other modes ran, then `reps` timed calls, about
/// `target`), so that a change in the machine's speed (this VM's neighbours) hits all modes alike. Returns, per
/// mode, the median ns per element and the median over samples of mode 0's time divided by this mode's (the
/// speed-up, from times taken a few ms apart); with `--fastest`, the fastest sample of each mode and the ratio of
/// those (on a loaded machine most samples are interrupted, the fastest ones are not).
fn interleaved(
    samples: usize,
    elems: usize,
    target: Duration,
    modes: &mut [&mut dyn FnMut(u32)],
) -> Vec<(f64, f64)> {
    for m in modes.iter_mut() {
        m(2);
    }
    // Calibrate on mode 0: double the repetitions until they last a quarter of the target.
    let mut reps = 1u32;
    loop {
        let t = Instant::now();
        modes[0](reps);
        let e = t.elapsed().as_secs_f64();
        if e >= target.as_secs_f64() / 4.0 || reps >= 1 << 20 {
            reps = ((reps as f64) * target.as_secs_f64() / e.max(1e-9)).clamp(1.0, 1e6) as u32;
            break;
        }
        reps *= 2;
    }
    let mut walls = vec![Vec::with_capacity(samples); modes.len()];
    for s in 0..samples {
        let count = modes.len();
        for j in 0..count {
            let i = if s % 2 == 0 { j } else { count - 1 - j };
            let m = &mut modes[i];
            m(1);
            let t = Instant::now();
            m(reps);
            walls[i].push(t.elapsed().as_secs_f64() * 1e9 / (reps as f64 * elems as f64));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let fastest = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    (0..modes.len())
        .map(|i| {
            if FASTEST.load(std::sync::atomic::Ordering::Relaxed) {
                let t = fastest(&walls[i]);
                (t, fastest(&walls[0]) / t)
            } else {
                let ratios: Vec<f64> = walls[0].iter().zip(&walls[i]).map(|(a, b)| a / b).collect();
                (median(walls[i].clone()), median(ratios))
            }
        })
        .collect()
}

/// Batches of rows: one thread against the transform's helper threads called from the main thread (the usual case),
/// and against a 2-thread rayon pool called from inside it (`install`), timed side by side.
fn batch_table(samples: usize) {
    let two = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let global = rayon::current_num_threads();
    println!("| rows × n (f32) | 1 thread, ns/element | main thread + {} helper thread(s), ns/element | speed-up | inside a 2-thread rayon pool, ns/element | speed-up |", global - 1);
    println!("|---|---:|---:|---:|---:|---:|");
    for (rows, log2) in [
        (64, 6),
        (64, 8),
        (64, 10),
        (64, 12),
        (64, 14),
        (256, 6),
        (256, 8),
        (256, 10),
        (256, 12),
        (256, 14),
        (1024, 6),
        (1024, 8),
    ] {
        let n = 1usize << log2;
        let x = std::cell::RefCell::new(random::<f32>(rows * n, 11));
        let scale = 1.0 / (n as f32).sqrt();
        let run = |parallel: bool, reps: u32| {
            let mut x = x.borrow_mut();
            for _ in 0..reps {
                fwht_rows_inplace_with(Isa::detect(), parallel, black_box(&mut x[..]), n, scale)
                    .unwrap();
            }
        };
        let mut serial = |reps| run(false, reps);
        let mut helpers = |reps| run(true, reps);
        let xs = std::sync::Mutex::new(random::<f32>(rows * n, 11));
        let mut pooled = |reps: u32| {
            two.install(|| {
                let mut x = xs.lock().unwrap();
                for _ in 0..reps {
                    fwht_rows_inplace(black_box(&mut x[..]), n, scale).unwrap();
                }
            })
        };
        let r = interleaved(
            samples,
            rows * n,
            Duration::from_millis(5),
            &mut [&mut serial, &mut helpers, &mut pooled],
        );
        println!(
            "| {rows} × 2^{log2} | {:.3} | {:.3} | {:.2}× | {:.3} | {:.2}× |",
            r[0].0, r[1].0, r[1].1, r[2].0, r[2].1
        );
    }
    println!();
}

fn dense_table(samples: usize) -> candle_core::Result<()> {
    println!(
        "| x: 256 × n, f32, {} threads | dense `x.matmul(H_n)`, ns/element | `hadamard_transform`, ns/element | FWHT speed-up |",
        rayon::current_num_threads()
    );
    println!("|---|---:|---:|---:|");
    for log2 in [10u32, 12] {
        let n = 1usize << log2;
        let x = Tensor::from_vec(random::<f32>(256 * n, 3), (256, n), &Device::Cpu)?;
        let scale = 1.0 / (n as f64).sqrt();
        let h = candle_structured::fwht::hadamard_matrix(n, candle_core::DType::F32, &Device::Cpu)?;
        let dense = median_time(samples.min(7), Duration::from_millis(50), || {
            black_box(x.matmul(&h).unwrap());
        });
        let fast = median_time(samples, Duration::from_millis(2), || {
            black_box(hadamard_transform(&x, scale).unwrap());
        });
        // Sanity: both agree.
        let err = (hadamard_transform(&x, scale)? - hadamard_transform_ref(&x, scale)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(err < 1e-3, "fast and dense transforms disagree by {err}");
        let per = |t: f64| t * 1e9 / (256 * n) as f64;
        println!(
            "| n = {n} | {:.2} | {:.3} | {:.0}× |",
            per(dense),
            per(fast),
            dense / fast
        );
    }
    println!();
    Ok(())
}

fn main() -> candle_core::Result<()> {
    let args = Args::parse();
    FASTEST.store(args.fastest, std::sync::atomic::Ordering::Relaxed);
    let (samples, target) = if args.quick {
        (11, Duration::from_micros(300))
    } else {
        (41, Duration::from_millis(1))
    };
    let samples = args.samples.unwrap_or(samples).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    println!(
        "Walsh-Hadamard transform, detected instruction set: {:?}; ns per element, one thread, {} of {samples}.\n",
        Isa::detect(),
        if args.fastest { "fastest" } else { "median" }
    );
    let ffht_tables = |samples: usize| {
        // Samples of about 1 ms: short enough that many of them run between two preemptions on a loaded machine.
        let target = Duration::from_millis(1);
        let lib = Ffht::find(args.ffht_src.as_deref()).and_then(|src| Ffht::build(&src));
        match &lib {
            Ok(lib) => println!("FFHT built in this run: {}.\n", lib.build),
            Err(e) => println!(
                "FFHT not available ({e}): the crate's columns alone. {}.\n",
                ffht::HOW_TO_GET
            ),
        }
        let lib = lib.ok();
        pool.install(|| ffht_table::<f32>("f32", lib.as_ref(), &args, samples, target));
        pool.install(|| ffht_table::<f64>("f64", lib.as_ref(), &args, samples, target));
    };
    match args.only.as_deref() {
        Some("ffht") => ffht_tables(samples),
        Some("f64") => pool.install(|| one_thread_table::<f64>("f64", &args, samples, target)),
        Some("batch") => batch_table(samples),
        Some(_) => pool.install(|| one_thread_table::<f32>("f32", &args, samples, target)),
        None => {
            ffht_tables(samples.min(21));
            pool.install(|| one_thread_table::<f32>("f32", &args, samples, target));
            pool.install(|| one_thread_table::<f64>("f64", &args, samples, target));
            batch_table(samples.min(21));
            if !args.no_dense {
                dense_table(samples)?;
            }
        }
    }
    Ok(())
}
