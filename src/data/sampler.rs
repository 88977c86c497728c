//! Training windows from a counter-based generator, and the fixed evaluation windows.

use super::TokenFile;
use crate::Error;
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::rng::splitmix64;

/// How a [`BatchSampler`] places its windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowOrder {
    /// Window `k` starts at `mix(seed, k) mod (len − seq_len)`: independent draws with replacement, so windows
    /// overlap and some text is seen twice long before the budget reaches the split's size. Checkpoints written
    /// before [`WindowOrder::Epochs`] existed carry no order and resume with this one.
    #[default]
    Random,
    /// The split is cut into `⌊(len − 1) / seq_len⌋` disjoint windows at multiples of `seq_len`, visited in a
    /// seeded pseudo-random permutation; after the last one the next pass starts with a new permutation. A run
    /// whose budget is at most the split's length sees no token twice.
    Epochs,
}

/// Draws training windows of `seq_len + 1` tokens. The start of window `k` is a pure function of the seed, the
/// order and the window counter, so the sampler's whole state is `(seed, drawn, order)` and a resumed run draws
/// exactly the windows the uninterrupted run would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSampler {
    /// Seed of the window sequence.
    pub seed: u64,
    /// Windows drawn so far (the data position).
    pub drawn: u64,
    /// Where the windows lie (absent in old checkpoints: [`WindowOrder::Random`]).
    #[serde(default)]
    pub order: WindowOrder,
}

impl BatchSampler {
    /// A sampler at the start of the sequence of `seed`, visiting disjoint windows in passes
    /// ([`WindowOrder::Epochs`]).
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            drawn: 0,
            order: WindowOrder::Epochs,
        }
    }

    /// Start of window `k` in a stream of `len ≥ seq_len + 1` tokens.
    pub fn offset(&self, k: u64, len: usize, seq_len: usize) -> usize {
        match self.order {
            WindowOrder::Random => {
                let span = (len - seq_len) as u64;
                (splitmix64(self.seed ^ splitmix64(k)) % span) as usize
            }
            WindowOrder::Epochs => {
                let n = ((len - 1) / seq_len) as u64;
                let (pass, i) = (k / n, k % n);
                let key = splitmix64(self.seed ^ splitmix64(pass ^ 0x05ee_d0fe_90c4));
                permute(i, n, key) as usize * seq_len
            }
        }
    }

    /// The next `batch` windows as `(inputs, targets)`, both `(batch, seq_len)` u32 tensors on `device`; targets
    /// are the inputs shifted by one token.
    ///
    /// Errors if the stream holds fewer than `seq_len + 1` tokens.
    pub fn next_batch(
        &mut self,
        tokens: &TokenFile,
        batch: usize,
        seq_len: usize,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        if tokens.len() < seq_len + 1 {
            return Err(Error::Data(format!(
                "{} holds {} tokens, fewer than one window of seq_len + 1 = {}",
                tokens.path().display(),
                tokens.len(),
                seq_len + 1
            ))
            .into());
        }
        let mut buf = Vec::with_capacity(batch * (seq_len + 1));
        for _ in 0..batch {
            let start = self.offset(self.drawn, tokens.len(), seq_len);
            tokens.extend_window(start, seq_len + 1, &mut buf);
            self.drawn += 1;
        }
        windows_to_tensors(&buf, batch, seq_len, device)
    }
}

/// A bijection of `0..n` keyed by `key`: a four-round Feistel network on the smallest even power of two that
/// holds `n`, applied again while the result falls outside `0..n` (cycle walking, which keeps it a bijection of
/// `0..n`; fewer than four tries on average).
fn permute(i: u64, n: u64, key: u64) -> u64 {
    debug_assert!(i < n);
    let bits = (64 - (n - 1).max(1).leading_zeros()).div_ceil(2).max(1);
    let mask = (1u64 << bits) - 1;
    let mut x = i;
    loop {
        let (mut l, mut r) = (x >> bits, x & mask);
        for round in 0..4u64 {
            let f = splitmix64(r ^ key.rotate_left(16 * round as u32) ^ round) & mask;
            (l, r) = (r, l ^ f);
        }
        x = (l << bits) | r;
        if x < n {
            return x;
        }
    }
}

/// Splits `batch` windows of `seq_len + 1` tokens into `(inputs, targets)` tensors `(batch, seq_len)`.
pub fn windows_to_tensors(
    buf: &[u32],
    batch: usize,
    seq_len: usize,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let mut inp = Vec::with_capacity(batch * seq_len);
    let mut tgt = Vec::with_capacity(batch * seq_len);
    for w in buf.chunks_exact(seq_len + 1) {
        inp.extend_from_slice(&w[..seq_len]);
        tgt.extend_from_slice(&w[1..]);
    }
    Ok((
        Tensor::from_vec(inp, (batch, seq_len), device)?,
        Tensor::from_vec(tgt, (batch, seq_len), device)?,
    ))
}

/// Starts of the fixed evaluation windows of `seq_len + 1` tokens: non-overlapping, at most `max_windows`, spread
/// evenly over the stream when it holds more. Returns an empty list when the stream is shorter than one window.
pub fn eval_windows(len: usize, seq_len: usize, max_windows: usize) -> Vec<usize> {
    if len < seq_len + 1 || max_windows == 0 {
        return Vec::new();
    }
    let available = (len - 1) / seq_len;
    let n = available.min(max_windows);
    let stride = if n == available {
        seq_len
    } else {
        (len - seq_len - 1) / (n - 1).max(1)
    };
    (0..n).map(|i| i * stride).collect()
}
