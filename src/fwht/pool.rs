//! Helper threads for batches of rows called from outside rayon's pool.
//!
//! A batch of a few thousand rows takes microseconds on one core, which is the scale of a thread's wake-up: waking a
//! parked thread is a system call for the waker, and a job handed to rayon's pool reaches its worker late even
//! when the worker is awake (`docs/fwht.md`, tuning notes, has the measurements). So the transform keeps its
//! own helpers: one thread per extra core of rayon's pool (so `RAYON_NUM_THREADS` counts for both), started on first
//! use, which after each batch *spins* for a short while ([`SPIN`], yielding the core to any other thread that wants
//! it) and only then parks. A batch that comes while a helper spins reaches it through one shared atomic, with no
//! system call.
//!
//! Waking a parked helper is only worth its cost for a long batch, or when batches come in a stream (the helper then
//! spins between them): a short batch that finds the helpers parked, with no batch in the [`SPIN`] before it, runs
//! on the calling thread alone.
//!
//! The work is a list of indices. The caller claims from the front, helpers from the back, each claim taking half of
//! what is left (so a call touches the shared counter a handful of times, and the last claims are single indices).
//! The caller never parks: it does all the work itself if the helpers are late, and only spins for the indices a
//! helper has claimed.

use super::CacheLine;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};
use std::thread::Thread;
use std::time::{Duration, Instant};

/// How long an idle helper spins before it parks.
const SPIN: Duration = Duration::from_micros(200);
/// Batches of at least this many elements wake parked helpers: hundreds of microseconds of work on one core, so
/// that the wake-up (a system call here, a late start with cold caches there) is small beside it. Shorter batches
/// that woke a helper ran slower than one thread alone (`docs/fwht.md`, tuning notes).
const WAKE_MIN: usize = 1 << 20;
/// A spinning helper checks the clock and yields its core (to any other runnable thread) once per this many spins.
const YIELD_EVERY: u32 = 1 << 6;

/// The work of one call of [`share`]: indices `front..back` are unclaimed (packed in one atomic, front in the low
/// half); `run` is the caller's closure.
#[repr(align(64))] // its own cache line, away from the caller's other stack variables
struct Claims<'a> {
    range: AtomicU64,
    run: &'a (dyn Fn(usize) + Sync),
    /// Set when `run` panicked on a helper (the caller then panics too).
    panicked: AtomicBool,
}

impl Claims<'_> {
    /// Claims half of the unclaimed indices (rounded up), from the front or from the back.
    fn claim(&self, from_back: bool) -> Option<std::ops::Range<usize>> {
        let mut cur = self.range.load(SeqCst);
        loop {
            let (front, back) = (cur & 0xFFFF_FFFF, cur >> 32);
            if front >= back {
                return None;
            }
            let take = (back - front).div_ceil(2);
            let (next, got) = if from_back {
                (front | (back - take) << 32, back - take..back)
            } else {
                (cur + take, front..front + take)
            };
            match self.range.compare_exchange_weak(cur, next, SeqCst, SeqCst) {
                Ok(_) => return Some(got.start as usize..got.end as usize),
                Err(now) => cur = now,
            }
        }
    }

    /// Runs claims from one end until none is left.
    fn drain(&self, from_back: bool) {
        while let Some(range) = self.claim(from_back) {
            if from_back {
                range.rev().for_each(self.run);
            } else {
                range.for_each(self.run);
            }
        }
    }
}

const SPINNING: u8 = 0;
const PARKED: u8 = 1;

/// One helper thread's mailbox.
struct Helper {
    /// Bumped by the caller for each job it posts.
    generation: AtomicU64,
    /// The posted job, null when there is none; a `Claims` on the caller's stack, erased to `'static`.
    job: AtomicPtr<Claims<'static>>,
    /// Set while the helper may be reading `job`: the caller clears `job`, then waits for this to drop. On its own
    /// cache line: the helper writes it, the caller only reads it at the end of a call.
    busy: CacheLine<AtomicBool>,
    state: AtomicU8,
    thread: OnceLock<Thread>,
}

impl Helper {
    fn new() -> Self {
        Helper {
            generation: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            busy: CacheLine(AtomicBool::new(false)),
            state: AtomicU8::new(SPINNING),
            thread: OnceLock::new(),
        }
    }

    /// The helper thread's loop.
    fn serve(&self) {
        let mut seen = 0;
        let mut idle = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = self.generation.load(SeqCst);
            if g != seen {
                seen = g;
                // Announce, then look: the caller clears `job` before it waits for `busy` to drop, so either it
                // sees this helper busy, or this helper sees no job.
                self.busy.0.store(true, SeqCst);
                let job = self.job.load(SeqCst);
                if !job.is_null() {
                    // SAFETY: the caller keeps the claims alive until `busy` is false (see `share`).
                    let claims = unsafe { &*job };
                    let run = std::panic::AssertUnwindSafe(|| claims.drain(true));
                    if std::panic::catch_unwind(run).is_err() {
                        claims.panicked.store(true, SeqCst);
                    }
                }
                self.busy.0.store(false, SeqCst);
                idle = Instant::now();
                spins = 0;
                continue;
            }
            spins += 1;
            if !spins.is_multiple_of(YIELD_EVERY) {
                std::hint::spin_loop();
            } else if idle.elapsed() < SPIN {
                // Let any other runnable thread on this core go first.
                std::thread::yield_now();
            } else {
                // Park, unless a job came meanwhile: the caller posts, then reads `state`; this helper sets
                // `state`, then reads the generation; one of the two sees the other.
                self.state.store(PARKED, SeqCst);
                if self.generation.load(SeqCst) == seen {
                    std::thread::park();
                }
                self.state.store(SPINNING, SeqCst);
                idle = Instant::now();
                spins = 0;
            }
        }
    }
}

/// The helpers, started on first use.
struct Pool {
    helpers: Vec<&'static Helper>,
    /// Held by the caller using the helpers (one at a time; a second caller runs alone).
    lock: Mutex<Option<Instant>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let count = rayon::current_num_threads().saturating_sub(1);
        let mut helpers = Vec::with_capacity(count);
        for i in 0..count {
            let helper: &'static Helper = Box::leak(Box::new(Helper::new()));
            let spawned = std::thread::Builder::new()
                .name(format!("fwht-helper-{i}"))
                .spawn(move || helper.serve());
            match spawned {
                Ok(handle) => {
                    let _ = helper.thread.set(handle.thread().clone());
                    helpers.push(helper);
                }
                Err(_) => break,
            }
        }
        Pool {
            helpers,
            lock: Mutex::new(None),
        }
    })
}

/// Runs `run(i)` exactly once for every `i < total`, on this thread and the helpers; `elems` (the batch's element
/// count) decides whether parked helpers are worth waking. Must not be called from a helper (the caller of
/// `for_row_chunks` is outside rayon's pool, and helpers only run `drain`).
pub(super) fn share(total: usize, elems: usize, run: &(dyn Fn(usize) + Sync)) {
    let pool = pool();
    let guard = match pool.lock.try_lock() {
        Ok(guard) if total > 1 && total <= u32::MAX as usize && !pool.helpers.is_empty() => guard,
        _ => return (0..total).for_each(run),
    };
    let mut last = guard;
    let now = Instant::now();
    // A batch within `SPIN` of the previous one wakes parked helpers whatever its size: they then spin until the
    // next batch of the stream.
    let streaming = last.is_some_and(|t| now.duration_since(t) < SPIN);
    let wake = elems >= WAKE_MIN || streaming;
    // No more helpers than indices beyond the caller's first (on a many-core machine a short batch leaves the rest
    // alone).
    let helpers = &pool.helpers[..pool.helpers.len().min(total - 1)];
    let parked = helpers.iter().all(|h| h.state.load(SeqCst) == PARKED);
    if parked && !wake {
        (0..total).for_each(run);
        *last = Some(Instant::now());
        return;
    }
    let claims = Claims {
        range: AtomicU64::new((total as u64) << 32),
        run,
        panicked: AtomicBool::new(false),
    };
    // SAFETY: only the lifetime is erased; the pointer is withdrawn, and every helper done with it, before
    // `claims` goes out of scope below.
    let job = unsafe {
        std::mem::transmute::<*const Claims<'_>, *mut Claims<'static>>(&claims as *const Claims<'_>)
    };
    for h in helpers {
        h.job.store(job, SeqCst);
        h.generation.fetch_add(1, SeqCst);
        if h.state.load(SeqCst) == PARKED {
            if let Some(t) = h.thread.get() {
                t.unpark();
            }
        }
    }
    let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| claims.drain(false)));
    // Withdraw the job, then wait for helpers still reading it (each finishes the indices it claimed).
    for h in helpers {
        h.job.store(std::ptr::null_mut(), SeqCst);
    }
    for h in helpers {
        let mut spins = 0u32;
        while h.busy.0.load(SeqCst) {
            spins += 1;
            if spins < 1 << 12 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
    *last = Some(Instant::now());
    drop(last);
    if let Err(panic) = mine {
        std::panic::resume_unwind(panic);
    }
    assert!(
        !claims.panicked.load(SeqCst),
        "a Walsh-Hadamard helper thread panicked"
    );
}
