//! Training windows from a counter-based generator, and the fixed evaluation windows.

use super::TokenFile;
use crate::Error;
use candle_core::{Device, Result, Tensor};
use serde::{Deserialize, Serialize};

use crate::rng::splitmix64;

/// Draws training windows of `seq_len + 1` tokens at pseudo-random offsets. Window `k` starts at
/// `mix(seed, k) mod (len − seq_len)`, a pure function of the seed and the window counter, so the sampler's whole
/// state is `(seed, drawn)` and a resumed run draws exactly the windows the uninterrupted run would have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchSampler {
    /// Seed of the window sequence.
    pub seed: u64,
    /// Windows drawn so far (the data position).
    pub drawn: u64,
}

impl BatchSampler {
    /// A sampler at the start of the sequence of `seed`.
    pub fn new(seed: u64) -> Self {
        Self { seed, drawn: 0 }
    }

    /// Start of window `k` in a stream of `len` tokens.
    pub fn offset(&self, k: u64, len: usize, seq_len: usize) -> usize {
        let span = (len - seq_len) as u64;
        (splitmix64(self.seed ^ splitmix64(k)) % span) as usize
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
