//! Criterion benchmarks of the Walsh-Hadamard transform (filled in by the FWHT work).
fn main() {}
