//! The crate's seeded generators and hashes, in one place.
//!
//! * [`SeededRng`]: a ChaCha8 stream (`rand_chacha`, whose output is value-stable across versions) with samplers
//!   written out here (Box–Muller normals, Marsaglia–Tsang gamma, Fisher–Yates shuffles, Lemire's unbiased bounded
//!   integers), so a seed names the same numbers on every machine and every future build: the layers'
//!   initial values and permutations, the frozen weights.
//! * [`splitmix64`]: the counter-based stream of the dropout seeds, the batch sampler and text sampling.
//! * [`derive_seed`]: independent sub-seeds by name; [`fnv1a`]: fingerprints and checksums (not cryptographic).

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// 64-bit FNV-1a hash of `bytes`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_extend(0xcbf2_9ce4_8422_2325, bytes)
}

/// Continues an FNV-1a hash from `state`.
pub(crate) fn fnv1a_extend(mut state: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        state ^= u64::from(b);
        state = state.wrapping_mul(0x0000_0100_0000_01b3);
    }
    state
}

/// Derives an independent seed for a named sub-stream (`"perm"`, `"init"`, `"attn.c_attn"`, …) of `seed`.
///
/// FNV-1a over the name, mixed with the seed by SplitMix64: stable, cheap, and different names give unrelated
/// streams.
pub fn derive_seed(seed: u64, name: &str) -> u64 {
    splitmix64(seed ^ splitmix64(fnv1a(name.as_bytes())))
}

/// SplitMix64 finaliser: a bijective 64-bit mix, the one hash every seeded stream of the crate derives from.
pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A seeded random stream with the few samplers the layers need.
pub(crate) struct SeededRng {
    rng: ChaCha8Rng,
    spare_normal: Option<f64>,
}

impl SeededRng {
    /// The stream named `name` of `seed` (see [`derive_seed`]).
    pub(crate) fn new(seed: u64, name: &str) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(derive_seed(seed, name)),
            spare_normal: None,
        }
    }

    /// Uniform on [0, 1) with 53 random bits.
    pub(crate) fn uniform(&mut self) -> f64 {
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform on [lo, hi).
    pub(crate) fn uniform_in(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Standard normal (Box–Muller, both values used).
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * u2).sin_cos();
        self.spare_normal = Some(r * s);
        r * c
    }

    /// ±1 with probability ½ each.
    pub(crate) fn sign(&mut self) -> f64 {
        if self.rng.next_u64() >> 63 == 0 {
            1.0
        } else {
            -1.0
        }
    }

    /// Uniform integer in `0..bound` (Lemire's multiply-and-reject, unbiased). `bound` must be positive.
    pub(crate) fn below(&mut self, bound: u64) -> u64 {
        debug_assert!(bound > 0);
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.rng.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }

    /// A uniformly random permutation of `0..n` (Fisher–Yates).
    pub(crate) fn permutation(&mut self, n: usize) -> Vec<u32> {
        let mut p: Vec<u32> = (0..n as u32).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        p
    }

    /// Gamma(shape, 1) by Marsaglia–Tsang (with the `U^{1/a}` boost for shape < 1).
    pub(crate) fn gamma(&mut self, shape: f64) -> f64 {
        if shape < 1.0 {
            let g = self.gamma(shape + 1.0);
            let u = 1.0 - self.uniform();
            return g * u.powf(1.0 / shape);
        }
        let d = shape - 1.0 / 3.0;
        let c = 1.0 / (9.0 * d).sqrt();
        loop {
            let x = self.normal();
            let v = 1.0 + c * x;
            if v <= 0.0 {
                continue;
            }
            let v = v * v * v;
            let u = 1.0 - self.uniform();
            if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
                return d * v;
            }
        }
    }

    /// χ with `dof` degrees of freedom: the length of a standard Gaussian vector of dimension `dof`.
    pub(crate) fn chi(&mut self, dof: usize) -> f64 {
        (2.0 * self.gamma(dof as f64 / 2.0)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_known_values() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn samplers_have_the_right_moments() {
        let mut rng = SeededRng::new(7, "test");
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            mean.abs() < 0.01 && (var - 1.0).abs() < 0.01,
            "{mean} {var}"
        );
        // E[χ_k²] = k.
        for k in [1usize, 2, 7, 256] {
            let m = (0..20_000).map(|_| rng.chi(k).powi(2)).sum::<f64>() / 20_000.0;
            assert!((m / k as f64 - 1.0).abs() < 0.05, "chi {k}: {m}");
        }
        let mut p = rng.permutation(1000);
        p.sort_unstable();
        assert!(p.iter().enumerate().all(|(i, &v)| i as u32 == v));
        assert!((0..10_000).all(|_| rng.below(3) < 3));
    }

    #[test]
    fn derived_seeds_differ() {
        assert_ne!(derive_seed(1, "a"), derive_seed(1, "b"));
        assert_ne!(derive_seed(1, "a"), derive_seed(2, "a"));
        assert_eq!(derive_seed(3, "perm"), derive_seed(3, "perm"));
    }
}
