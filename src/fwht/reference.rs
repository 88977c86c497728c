//! The dense, obviously-correct twin of the fast transform: an explicit Sylvester matrix and a matmul.

use super::check_len;
use candle_core::{DType, Device, Result, Tensor};

/// The n×n Sylvester Hadamard matrix `H_n` (natural order, entries ±1) as a tensor.
///
/// Entry `(i, j)` is `(-1)^popcount(i & j)`, which is the Sylvester recursion written out.
pub fn hadamard_matrix(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    check_len(n)?;
    let data: Vec<f64> = (0..n * n)
        .map(|k| {
            if ((k / n) & (k % n)).count_ones().is_multiple_of(2) {
                1.0
            } else {
                -1.0
            }
        })
        .collect();
    Tensor::from_vec(data, (n, n), device)?.to_dtype(dtype)
}

/// `scale · xs · H_n` by a dense matmul with [`hadamard_matrix`]: `2·n²` flops per row. Same contract as
/// [`super::hadamard_transform`]; meant for tests and benchmarks.
pub fn hadamard_transform_ref(xs: &Tensor, scale: f64) -> Result<Tensor> {
    let n = xs.dim(candle_core::D::Minus1)?;
    let h = hadamard_matrix(n, xs.dtype(), xs.device())?;
    let dims = xs.dims().to_vec();
    let rows = xs.elem_count() / n.max(1);
    let y = xs.contiguous()?.reshape((rows, n))?.matmul(&h)?;
    (y * scale)?.reshape(dims)
}
