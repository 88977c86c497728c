//! Every layer against its explicit dense form, built in f64 in the test: FastFood's V_j matrices, the block
//! matrices and Hadamard mixing, the frozen MLP, and the whole GPT block (a loop implementation of LayerNorm,
//! rotary attention and the MLP).

mod layers_common;

use candle_core::{DType, Device, Module, ModuleT, Result, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_structured::{
    adaptive_fastfood, adaptive_fastfood_no_bias, block_hadamard_mlp, frozen_random_mlp,
    rotary_gpt_block, AdaptiveFastFood, BlockConfig, BlockHadamardMlp, BlockKind, BlockMlp,
    Projection,
};
use layers_common::*;

fn gelu(x: &Mat) -> Result<Mat> {
    // candle's own erf-GELU on f64 (independent of this crate's ops).
    let t = Tensor::new(x.clone(), &Device::Cpu)?.gelu_erf()?;
    t.to_vec2::<f64>()
}

fn layer_norm(x: &Mat, w: Option<&[f64]>, b: Option<&[f64]>, eps: f64) -> Mat {
    x.iter()
        .map(|r| {
            let d = r.len() as f64;
            let mean = r.iter().sum::<f64>() / d;
            let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d;
            r.iter()
                .enumerate()
                .map(|(i, v)| {
                    let z = (v - mean) / (var + eps).sqrt();
                    z * w.map_or(1.0, |w| w[i]) + b.map_or(0.0, |b| b[i])
                })
                .collect()
        })
        .collect()
}

fn fastfood_ref(ff: &AdaptiveFastFood, x: &Mat) -> Result<Mat> {
    let w = fastfood_matrix(ff)?;
    let b = ff.bias().map(vec1).transpose()?;
    Ok(affine(x, &w, b.as_deref()))
}

#[test]
fn fastfood_equals_its_dense_form() -> Result<()> {
    // (in, out): padding, several blocks, truncation, exact powers of two, out < n.
    for (in_dim, out_dim, bias) in [
        (5, 19, true),
        (8, 8, true),
        (16, 3, false),
        (12, 40, true),
        (1, 2, true),
    ] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let ff = if bias {
            adaptive_fastfood(in_dim, out_dim, 11, vb)?
        } else {
            adaptive_fastfood_no_bias(in_dim, out_dim, 11, vb)?
        };
        assert_eq!(ff.n(), in_dim.next_power_of_two());
        assert_eq!(ff.n_blocks(), out_dim.div_ceil(ff.n()));
        assert!((ff.sigma() - (in_dim as f64 / 2.0).sqrt()).abs() < 1e-12);
        let x = randn(&[2, 3, in_dim], 1)?;
        let y = ff.forward(&x)?;
        assert_eq!(y.dims(), &[2, 3, out_dim]);
        let reference = fastfood_ref(&ff, &vec2(&x.reshape((6, in_dim))?)?)?;
        let err = max_rel(&vec1(&y)?, &flat(&reference));
        assert!(err < 1e-12, "fastfood {in_dim}->{out_dim}: {err}");
    }
    Ok(())
}

#[test]
fn fastfood_initialisation_follows_the_recipe() -> Result<()> {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
    let ff = adaptive_fastfood(64, 200, 5, vb)?; // n = 64, k = 4
    let (b, g, s) = (vec2(ff.diag_b())?, vec2(ff.diag_g())?, vec2(ff.diag_s())?);
    assert!(b.iter().flatten().all(|&v| v == 1.0 || v == -1.0));
    assert!(b.iter().flatten().any(|&v| v == 1.0) && b.iter().flatten().any(|&v| v == -1.0));
    let mut chi2 = Vec::new();
    for j in 0..4 {
        let norm = g[j].iter().map(|v| v * v).sum::<f64>().sqrt();
        chi2.extend(s[j].iter().map(|v| (v * norm).powi(2)));
        let mut p = ff.permutation(j)?;
        p.sort_unstable();
        assert_eq!(p, (0..64).collect::<Vec<u32>>());
    }
    assert!(chi2.iter().all(|&v| v > 0.0));
    // s_i² ~ χ²_64: mean 64, variance 128; the mean of 256 draws has sd ≈ 0.71.
    let mean = chi2.iter().sum::<f64>() / chi2.len() as f64;
    assert!((mean - 64.0).abs() < 4.0, "mean s² = {mean}");
    assert!(ff.permutation(4).is_err());
    Ok(())
}

fn block_hadamard_ref(m: &BlockHadamardMlp, x: &Mat) -> Result<Mat> {
    let (nb, d, h) = (m.n_blocks(), m.d_model(), m.hidden());
    let (db, hb) = (d / nb, h / nb);
    let w1 = m.w1().to_vec3::<f64>()?;
    let w2 = m.w2().to_vec3::<f64>()?;
    // Explicit block-diagonal matrices (out, in).
    let mut w1_full = vec![vec![0.0; d]; h];
    let mut w2_full = vec![vec![0.0; h]; d];
    for a in 0..nb {
        for i in 0..hb {
            for j in 0..db {
                w1_full[a * hb + i][a * db + j] = w1[a][j][i];
                w2_full[a * db + j][a * hb + i] = w2[a][i][j];
            }
        }
    }
    // Mixing (H_nb ⊗ I_hb) / √nb, explicit.
    let hn = hadamard(nb);
    let mut mix = vec![vec![0.0; h]; h];
    for a in 0..nb {
        for c in 0..nb {
            for i in 0..hb {
                mix[a * hb + i][c * hb + i] = hn[a][c] / (nb as f64).sqrt();
            }
        }
    }
    let z = affine(x, &w1_full, None);
    let u = affine(&z, &mix, Some(&vec1(m.b1())?));
    let v = gelu(&u)?;
    Ok(affine(&v, &w2_full, Some(&vec1(m.b2())?)))
}

#[test]
fn block_hadamard_equals_its_dense_form() -> Result<()> {
    for (d, h, nb) in [(8, 32, 4), (16, 24, 2), (8, 16, 8), (6, 12, 1)] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let m = block_hadamard_mlp(d, h, nb, 3, vb)?;
        let x = randn(&[3, 2, d], 2)?;
        let y = m.forward(&x)?;
        let reference = block_hadamard_ref(&m, &vec2(&x.reshape((6, d))?)?)?;
        let err = max_rel(&vec1(&y)?, &flat(&reference));
        assert!(err < 1e-12, "block hadamard {d}/{h}/{nb}: {err}");
    }
    Ok(())
}

#[test]
fn frozen_mlp_equals_its_dense_form() -> Result<()> {
    for trainable_ln in [false, true] {
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let m = frozen_random_mlp(12, 72, 21, trainable_ln, vb)?;
        if let Some((w, b)) = m.ln() {
            // Make the trainable LayerNorm non-trivial.
            vm.data().lock().unwrap()["ln.weight"].set(&randn(&[12], 5)?)?;
            vm.data().lock().unwrap()["ln.bias"].set(&randn(&[12], 6)?)?;
            assert_eq!(w.dims(), &[12]);
            assert_eq!(b.dims(), &[12]);
        }
        let x = randn(&[4, 12], 3)?;
        let y = m.forward(&x)?;
        let xm = vec2(&x)?;
        let ln = m.ln().map(|(w, b)| (vec1(w).unwrap(), vec1(b).unwrap()));
        let h = layer_norm(
            &xm,
            ln.as_ref().map(|l| l.0.as_slice()),
            ln.as_ref().map(|l| l.1.as_slice()),
            1e-5,
        );
        let h = gelu(&affine(&h, &vec2(m.w1())?, None))?;
        let h = affine(&h, &vec2(m.w2())?, None);
        let reference: Vec<f64> = flat(&xm).iter().zip(flat(&h)).map(|(a, b)| a + b).collect();
        let err = max_rel(&vec1(&y)?, &reference);
        assert!(err < 1e-12, "frozen mlp: {err}");
        // The scale of a trainable MLP's initialisation: W1 ~ N(0, 2/d), W2 ~ N(0, 2/hidden).
        let v1 = flat(&vec2(m.w1())?).iter().map(|v| v * v).sum::<f64>() / (12.0 * 72.0);
        let v2 = flat(&vec2(m.w2())?).iter().map(|v| v * v).sum::<f64>() / (12.0 * 72.0);
        assert!((v1 * 12.0 / 2.0 - 1.0).abs() < 0.15, "{v1}");
        assert!((v2 * 72.0 / 2.0 - 1.0).abs() < 0.15, "{v2}");
    }
    Ok(())
}

/// A projection's explicit (out, in) matrix and bias.
fn projection_ref(p: &Projection) -> Result<(Mat, Vec<f64>)> {
    Ok(match p {
        Projection::Dense(l) => (vec2(l.weight())?, vec1(l.bias().unwrap())?),
        Projection::FastFood(f) => (fastfood_matrix(f)?, vec1(f.bias().unwrap())?),
    })
}

/// The GPT block, written out with loops: pre-LN, causal rotary attention, MLP.
fn block_ref(block: &candle_structured::RotaryGptBlock, x: &Tensor) -> Result<Vec<f64>> {
    let cfg = block.config();
    let (bsz, t, d) = x.dims3()?;
    let (nh, hd) = (cfg.n_heads, cfg.head_dim());
    let half = hd / 2;
    let (wqkv, bqkv) = projection_ref(block.qkv_projection())?;
    let (wo, bo) = projection_ref(block.out_projection())?;
    let (l1w, l1b) = (vec1(block.ln_1().0)?, vec1(block.ln_1().1)?);
    let (l2w, l2b) = (vec1(block.ln_2().0)?, vec1(block.ln_2().1)?);
    let mut out = Vec::new();
    for b in 0..bsz {
        let xb = vec2(&x.get(b)?)?;
        let h = layer_norm(&xb, Some(&l1w), Some(&l1b), cfg.ln_eps);
        let qkv = affine(&h, &wqkv, Some(&bqkv));
        let rope = |v: &[f64], pos: usize| -> Vec<f64> {
            let mut r = v.to_vec();
            for i in 0..half {
                let ang = pos as f64 * cfg.rotary_base.powf(-2.0 * i as f64 / hd as f64);
                let (s, c) = ang.sin_cos();
                r[i] = v[i] * c - v[i + half] * s;
                r[i + half] = v[i + half] * c + v[i] * s;
            }
            r
        };
        let mut att = vec![vec![0.0; d]; t];
        for head in 0..nh {
            let q: Vec<Vec<f64>> = (0..t)
                .map(|p| rope(&qkv[p][head * hd..(head + 1) * hd], p))
                .collect();
            let k: Vec<Vec<f64>> = (0..t)
                .map(|p| rope(&qkv[p][d + head * hd..d + (head + 1) * hd], p))
                .collect();
            let v: Vec<&[f64]> = (0..t)
                .map(|p| &qkv[p][2 * d + head * hd..2 * d + (head + 1) * hd])
                .collect();
            for i in 0..t {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| {
                        q[i].iter().zip(&k[j]).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                    })
                    .collect();
                let mx = scores.iter().cloned().fold(f64::MIN, f64::max);
                let e: Vec<f64> = scores.iter().map(|s| (s - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..=i {
                    for c in 0..hd {
                        att[i][head * hd + c] += e[j] / z * v[j][c];
                    }
                }
            }
        }
        let a = affine(&att, &wo, Some(&bo));
        let x1: Mat = xb
            .iter()
            .zip(&a)
            .map(|(r, s)| r.iter().zip(s).map(|(u, v)| u + v).collect())
            .collect();
        let h2 = layer_norm(&x1, Some(&l2w), Some(&l2b), cfg.ln_eps);
        let m = match block.mlp() {
            BlockMlp::Linear { fc, proj } => {
                let (w1, b1) = projection_ref(fc)?;
                let (w2, b2) = projection_ref(proj)?;
                affine(&gelu(&affine(&h2, &w1, Some(&b1)))?, &w2, Some(&b2))
            }
            BlockMlp::BlockHadamard(bh) => block_hadamard_ref(bh, &h2)?,
        };
        for (r, s) in x1.iter().zip(&m) {
            out.extend(r.iter().zip(s).map(|(u, v)| u + v));
        }
    }
    Ok(out)
}

#[test]
fn gpt_block_equals_a_loop_implementation() -> Result<()> {
    for kind in [
        BlockKind::Dense,
        BlockKind::FastFood,
        BlockKind::BlockHadamard { n_blocks: 4 },
    ] {
        // d = 24 (not a power of two: FastFood pads to 32), 3 heads of 8.
        let vm = VarMap::new();
        let vb = VarBuilder::from_varmap(&vm, DType::F64, &Device::Cpu);
        let mut cfg = BlockConfig::new(24, 3, kind);
        cfg.rotary_base = 100.0; // make the rotation visible at short range
        let block = rotary_gpt_block(&cfg, vb.pp("h"))?;
        // Non-trivial LayerNorm parameters.
        for (name, seed) in [
            ("h.ln_1.weight", 1),
            ("h.ln_1.bias", 2),
            ("h.ln_2.weight", 3),
            ("h.ln_2.bias", 4),
        ] {
            vm.data().lock().unwrap()[name].set(&randn(&[24], seed)?)?;
        }
        let x = randn(&[2, 6, 24], 7)?;
        let y = block.forward_t(&x, false)?;
        let err = max_rel(&vec1(&y)?, &block_ref(&block, &x)?);
        assert!(err < 1e-10, "{kind:?}: {err}");
        // The attention is causal: changing the last position leaves the others untouched.
        let x2 = x.slice_assign(&[0..2, 5..6, 0..24], &randn(&[2, 1, 24], 8)?)?;
        let y2 = block.forward_t(&x2, false)?;
        let a = vec1(&y.narrow(1, 0, 5)?)?;
        let b = vec1(&y2.narrow(1, 0, 5)?)?;
        assert_eq!(a, b, "{kind:?}: not causal");
    }
    Ok(())
}
