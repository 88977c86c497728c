//! Seeded initialisation shared by the layers, drawn from [`crate::rng::SeededRng`] (value-stable: a seed names
//! the same numbers on every machine and every future build).
//!
//! `get_or_init` is how a layer registers a trainable tensor whose initial value it computes itself (candle's
//! [`candle_nn::Init`] cannot express `B ∈ {±1}` or `S = χ_n / ‖G‖`). A tensor the backend holds (safetensors, a
//! `HashMap`, an existing `VarMap` entry, [`VarBuilder::zeros`]) is returned as it is, whatever its values (an
//! all-NaN tensor from a diverged run stays NaN). A tensor the backend does not hold is requested with a zero hint,
//! which a fresh [`candle_nn::VarMap`] creates, and the new variable is then filled in place with the seeded
//! values; backends that hold data refuse a missing tensor, as they do for `candle_nn::linear`.

pub(crate) use crate::rng::SeededRng;
use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::{Init, VarBuilder};

/// Kaiming-normal weights as `candle_nn::linear` draws them: N(0, 2 / fan_in).
pub(crate) fn kaiming_normal(rng: &mut SeededRng, len: usize, fan_in: usize) -> Vec<f64> {
    let std = (2.0 / fan_in as f64).sqrt();
    (0..len).map(|_| std * rng.normal()).collect()
}

/// Biases as `candle_nn::linear` draws them: U(-1/√fan_in, 1/√fan_in).
pub(crate) fn linear_bias(rng: &mut SeededRng, len: usize, fan_in: usize) -> Vec<f64> {
    let bound = 1.0 / (fan_in as f64).sqrt();
    (0..len).map(|_| rng.uniform_in(-bound, bound)).collect()
}

/// A tensor of `values` (f64, row-major) with `shape`, converted to `dtype` on `device`.
pub(crate) fn tensor_from(
    values: Vec<f64>,
    shape: impl Into<Shape>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)
}

/// Fetches `name` from `vb` with `shape`; when the backend does not hold it (a fresh `VarMap`), creates it and
/// fills it in place with `init()` (f64 values, row-major) instead of candle's initialisers. See the module
/// documentation.
pub(crate) fn get_or_init(
    vb: &VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
    init: impl FnOnce() -> Vec<f64>,
) -> Result<Tensor> {
    let shape: Shape = shape.into();
    if vb.contains_tensor(name) {
        return vb.get(shape, name);
    }
    let t = vb.get_with_hints(shape.clone(), name, Init::Const(0.0))?;
    if t.elem_count() > 0 && t.rank() > 0 {
        let src = tensor_from(init(), shape, t.dtype(), t.device())?;
        t.slice_set(&src, 0, 0)?;
    }
    Ok(t)
}

/// [`get_or_init`] under `name`, reading a checkpoint that stores the tensor under its former name `old` instead.
pub(crate) fn get_or_init_renamed(
    vb: &VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
    old: &str,
    init: impl FnOnce() -> Vec<f64>,
) -> Result<Tensor> {
    if !vb.contains_tensor(name) && vb.contains_tensor(old) {
        return vb.get(shape, old);
    }
    get_or_init(vb, shape, name, init)
}
