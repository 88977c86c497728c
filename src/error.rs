//! The crate's error type. Every fallible public function returns `candle_core::Result`; our own failures are
//! variants of [`Error`], converted into `candle_core::Error` (its `Wrapped` variant, whose message is ours) so that
//! `?` works across both.

use candle_core::DType;

/// Everything candle-structured itself can refuse, with messages that name the offending sizes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- Walsh-Hadamard transform -------------------------------------------------------------------------------
    /// The transformed dimension must be a power of two.
    #[error(
        "hadamard_transform: the last dimension is {size}, which is not a power of two \
         (the nearest powers of two are {below} and {above}; zero-pad the input to {above})"
    )]
    NotPowerOfTwo {
        size: usize,
        below: usize,
        above: usize,
    },
    /// A rank-0 tensor has no last dimension to transform.
    #[error("hadamard_transform: the input is a scalar (rank 0); it needs at least one dimension")]
    ScalarInput,
    /// Integer tensors cannot be transformed.
    #[error("hadamard_transform: unsupported dtype {0:?} (expected f32, f64, f16 or bf16)")]
    UnsupportedDType(DType),
    /// n above 2^[`crate::fwht::MAX_LOG2`].
    #[error("hadamard_transform: the last dimension is {size} = 2^{log2}, above the maximum 2^{max_log2}")]
    TooLarge {
        size: usize,
        log2: u32,
        max_log2: u32,
    },
    /// Slice API: the buffer is not a whole number of rows.
    #[error("fwht: a buffer of {len} elements is not a whole number of rows of length {n}")]
    RaggedRows { len: usize, n: usize },

    // ---- layers, models, configuration ----------------------------------------------------------------------------
    /// A layer or model was configured with inconsistent sizes.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An input whose dtype the layer's parameters do not take (`candle_nn::Linear` refuses these too). f32
    /// parameters also take bf16 and f16 inputs (mixed precision: they are cast to the input's dtype).
    #[error(
        "{layer}: the input is {input:?}, the parameters {param:?} (convert the input, or build the layer in \
         {input:?}; f32 parameters also take bf16 and f16 inputs)"
    )]
    DTypeMismatch {
        layer: &'static str,
        input: DType,
        param: DType,
    },

    // ---- data, checkpoints, training -------------------------------------------------------------------------------
    /// Reading or preparing a corpus failed.
    #[error("data: {0}")]
    Data(String),
    /// A checkpoint is missing, truncated, corrupt or from another configuration.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// File-system errors, with the path involved.
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- scaling-law fits ----------------------------------------------------------------------------------------
    /// A fit could not be done (too few points, non-positive values, optimiser failure).
    #[error("fit: {0}")]
    Fit(String),

    // ---- scaling figures (scaling work) ------------------------------------------------------------------------------
    /// Drawing a figure failed (plotters backend error, nothing to draw).
    #[error("plot: {0}")]
    Plot(String),
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<Error> for candle_core::Error {
    fn from(err: Error) -> Self {
        candle_core::Error::wrap(err)
    }
}
