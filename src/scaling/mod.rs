//! Scaling laws: cost models, compute frontier, fits, figures (filled in by the scaling work).
