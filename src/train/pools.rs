//! Work spread over the training workers' one-thread pools: the micro-batches of a step ([`super::Trainer`]) and
//! Muon's orthogonalisations ([`super::AdamW`]).

use candle_core::Result;

/// `f(k)` for every `k` of `shares[i]` on `pools[i]` (each pool on its own thread, the first on the caller's), the
/// results in order of `k` (the `shares` together must be `0..n`).
pub(crate) fn on_pools<T, F>(
    pools: &[rayon::ThreadPool],
    shares: &[Vec<usize>],
    f: &F,
) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize) -> Result<T> + Sync,
{
    debug_assert_eq!(shares.len(), pools.len());
    let run = |i: usize| -> Result<Vec<(usize, T)>> {
        shares[i].iter().map(|&k| Ok((k, f(k)?))).collect()
    };
    let mut parts = std::thread::scope(|s| {
        let others: Vec<_> = pools[1..]
            .iter()
            .enumerate()
            .map(|(i, pool)| s.spawn(move || pool.install(|| run(i + 1))))
            .collect();
        let mut parts = vec![pools[0].install(|| run(0))];
        for h in others {
            parts.push(h.join().unwrap_or_else(|_| {
                Err(candle_core::Error::Msg("a training worker panicked".into()))
            }));
        }
        parts
    })
    .into_iter()
    .collect::<Result<Vec<_>>>()?
    .into_iter()
    .flatten()
    .collect::<Vec<_>>();
    parts.sort_by_key(|(k, _)| *k);
    Ok(parts.into_iter().map(|(_, r)| r).collect())
}
