//! The Walsh-Hadamard transform on a small batch, checked against the dense product.
use candle_core::{Device, Tensor};

fn main() -> candle_core::Result<()> {
    let x = Tensor::randn(0f32, 1., (4, 1024), &Device::Cpu)?;
    let y = candle_structured::hadamard_transform(&x, 1.0 / 32.0)?;
    let r = candle_structured::hadamard_transform_ref(&x, 1.0 / 32.0)?;
    let err = (y - r)?.abs()?.max_all()?.to_scalar::<f32>()?;
    println!("max |fast - dense| = {err:e}");
    Ok(())
}
