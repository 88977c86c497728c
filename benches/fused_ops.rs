//! Criterion benchmarks (to be filled in).
fn main() {}
