//! Parameter accounting: trainable, frozen and emulated counts, embedding and non-embedding (filled in by the layers work).
