//! Benchmark of the Walsh-Hadamard transform: prints Markdown tables for the README.
//!
//! * one thread, ns per element, for each instruction set this CPU has, f32 and f64, against the published FFHT
//!   figures (in-place repeated transforms of a hot buffer aligned to a cache line, as FFHT measures; median of many
//!   repetitions), and the best instruction set on a row 16 bytes past a cache line (a large `Vec`'s usual start);
//!   and the candle op on a `(1, n)` tensor (a new output per call);
//! * batches of rows: speed-up of rayon's global pool (called from the main thread) and of a 2-thread pool (called
//!   from inside it) over one thread;
//! * the candle op against candle's dense matmul by `H_n` (256 × n, f32, all threads).
//!
//! ```text
//! cargo run --release --example fwht_bench              # everything (about a minute)
//! cargo run --release --example fwht_bench -- --quick   # fewer repetitions
//! cargo run --release --example fwht_bench -- --min-log2 4 --max-log2 22   # fewer rows
//! cargo run --release --example fwht_bench -- --fastest --samples 101 --only f32   # fastest sample, one table
//! cargo run --release --example fwht_bench -- --only batch   # only the batch table
//! ```
use candle_core::{Device, Tensor};
use candle_structured::fwht::{fwht_rows_inplace, fwht_rows_inplace_with, FwhtFloat, Isa};
use candle_structured::{hadamard_transform, hadamard_transform_ref};
use clap::Parser;
use std::hint::black_box;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "Walsh-Hadamard transform benchmark (Markdown tables)")]
struct Args {
    /// Fewer and shorter repetitions.
    #[arg(long)]
    quick: bool,
    /// Smallest log2(n) of the one-thread table.
    #[arg(long, default_value_t = 1)]
    min_log2: u32,
    /// Largest log2(n) of the one-thread table.
    #[arg(long, default_value_t = 22)]
    max_log2: u32,
    /// Skip the dense-matmul comparison (slow).
    #[arg(long)]
    no_dense: bool,
    /// Only the one-thread table for this dtype (f32 or f64), or only the batch table (batch).
    #[arg(long)]
    only: Option<String>,
    /// One-thread table: report the fastest sample instead of the median (less sensitive to other processes on a
    /// shared machine).
    #[arg(long)]
    fastest: bool,
    /// Samples per one-thread measurement (default 41, 11 with --quick).
    #[arg(long)]
    samples: Option<usize>,
}

/// Set by `--fastest`: [`median_time`] returns the fastest sample instead of the median.
static FASTEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// FFHT (AVX, one thread) in ns per element, from the issue: (log2 n, f32, f64).
const FFHT: [(u32, Option<f64>, Option<f64>); 7] = [
    (6, Some(0.386), None),
    (8, Some(0.332), None),
    (10, Some(0.378), Some(0.585)),
    (12, Some(0.395), None),
    (14, Some(0.441), Some(0.816)),
    (16, Some(0.499), None),
    (18, Some(0.534), Some(0.981)),
];

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

/// ns per element of one in-place transform of a hot row of `2^log2` elements, on this thread, starting `skew` bytes
/// past a cache line (FFHT's benchmark aligns its buffer with `posix_memalign`; a large `Vec` from the system
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
    let is_f32 = name == "f32";
    print!("| n ({name}) |");
    for isa in &isas {
        print!(" {isa:?} |");
    }
    println!(" FFHT | best / FFHT | best, row 16 B past a line | candle op, 1 × n tensor |");
    print!("|---|");
    for _ in &isas {
        print!("---:|");
    }
    println!("---:|---:|---:|---:|");
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
        let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let ffht = FFHT
            .iter()
            .find(|f| f.0 == log2)
            .and_then(|f| if is_f32 { f.1 } else { f.2 });
        match ffht {
            Some(f) => print!(" {f:.3} | {:.2}× |", best / f),
            None => print!(" — | — |"),
        }
        println!(" {skewed:.3} | {op:.3} |");
    }
    println!();
}

/// Times several ways of doing the same work side by side: each sample runs every mode in turn (`reps` calls each,
/// about 5 ms), so that a change in the machine's speed (this VM's neighbours) hits all modes alike. Returns, per
/// mode, the median ns per element and the median over samples of mode 0's time divided by this mode's (the
/// speed-up, from times taken a few ms apart).
fn interleaved(samples: usize, elems: usize, modes: &mut [&mut dyn FnMut(u32)]) -> Vec<(f64, f64)> {
    for m in modes.iter_mut() {
        m(2);
    }
    let t = Instant::now();
    modes[0](1);
    let reps = (0.005 / t.elapsed().as_secs_f64()).clamp(1.0, 1e6) as u32;
    let mut walls = vec![Vec::with_capacity(samples); modes.len()];
    for _ in 0..samples {
        for (i, m) in modes.iter_mut().enumerate() {
            let t = Instant::now();
            m(reps);
            walls[i].push(t.elapsed().as_secs_f64() * 1e9 / (reps as f64 * elems as f64));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (0..modes.len())
        .map(|i| {
            let ratios: Vec<f64> = walls[0].iter().zip(&walls[i]).map(|(a, b)| a / b).collect();
            (median(walls[i].clone()), median(ratios))
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
    match args.only.as_deref() {
        Some("f64") => pool.install(|| one_thread_table::<f64>("f64", &args, samples, target)),
        Some("batch") => batch_table(samples),
        Some(_) => pool.install(|| one_thread_table::<f32>("f32", &args, samples, target)),
        None => {
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
