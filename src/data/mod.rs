//! Corpus loading, byte-level BPE tokenizer training and the memory-mapped token stream.
//!
//! The pipeline, each stage cached on disk and written atomically (temporary file, then rename):
//!
//! 1. [`prepare_text`]: a source (any UTF-8 text file, or a folder of them, given by path; `.gz`
//!    files are decompressed) becomes three plain UTF-8 files `train.txt`, `valid.txt`, `test.txt` in a cache
//!    folder whose name carries a fingerprint of the source (paths, sizes, modification times), so an edited source
//!    is prepared again.
//! 2. [`train_tokenizer`]: a byte-level BPE (GPT-2 style, huggingface `tokenizers`, pure Rust) trained on the
//!    training split only, saved as `tokenizer.json`; or a ready `tokenizer.json` given by the user.
//! 3. [`tokenize_to_file`]: each split encoded once into a flat little-endian `u16` file (`u32` when the vocabulary
//!    exceeds 65,536), read back through a memory map by [`TokenFile`].
//! 4. [`BatchSampler`]: disjoint training windows in a seeded permutation per pass over the split, so the whole
//!    sampler state is `(seed, windows drawn)`: resuming a run is exact. [`eval_windows`] gives the fixed
//!    validation / test subset.
//!
//! [`Corpus::prepare`] runs the whole pipeline.

mod compress;
mod corpus;
mod sampler;
mod tokenize;

pub use compress::gzip_bits_per_byte;
pub use corpus::{prepare_text, read_text, source_fingerprint, TextSplits};
pub use sampler::{eval_windows, windows_to_tensors, BatchSampler, WindowOrder};
pub use tokenize::{
    load_tokenizer, token_byte_lengths, tokenize_to_file, train_tokenizer, TokenFile, EOT_TOKEN,
};

use crate::Error;
use candle_core::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Options of [`Corpus::prepare`]. A checkpoint records them, so that a resumed run finds its data again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CorpusOptions {
    /// A UTF-8 text file, a folder of them, or a folder with `train`/`valid`/`test` files (`.txt` or `.txt.gz`).
    pub source: PathBuf,
    /// Where prepared text, tokenizers and token files are cached (one sub-folder per source).
    pub cache_root: PathBuf,
    /// Vocabulary size of the tokenizer to train (ignored when `tokenizer` is given).
    pub vocab_size: usize,
    /// A ready `tokenizer.json` to use instead of training one.
    pub tokenizer: Option<PathBuf>,
    /// The BPE merges are learned on at most this many bytes from the start of the training split (whole lines);
    /// `None` uses all of it. The whole split is tokenized either way.
    pub tokenizer_train_bytes: Option<usize>,
    /// Print what is being prepared (decompression, tokenizer training, tokenization) to stderr.
    #[serde(skip)]
    pub verbose: bool,
}

/// What a run was trained on, by content: FNV-1a hashes of the tokenizer file and of the three token files. Two
/// corpora with equal identities give the same token ids at the same positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataIdentity {
    /// Hash of `tokenizer.json`'s bytes.
    pub tokenizer: u64,
    /// Hash of the training token file.
    pub train: u64,
    /// Hash of the validation token file.
    pub valid: u64,
    /// Hash of the test token file.
    pub test: u64,
}

impl DataIdentity {
    /// The fields where `self` (a checkpoint's) and `other` (this run's) differ, named.
    pub fn differences(&self, other: &DataIdentity) -> Vec<String> {
        let mut out = Vec::new();
        for (name, a, b) in [
            ("tokenizer", self.tokenizer, other.tokenizer),
            ("train tokens", self.train, other.train),
            ("valid tokens", self.valid, other.valid),
            ("test tokens", self.test, other.test),
        ] {
            if a != b {
                out.push(format!("{name}: checkpoint {a:016x}, this run {b:016x}"));
            }
        }
        out
    }
}

impl CorpusOptions {
    /// Options for `source` with a tokenizer of `vocab_size` tokens, cache under `runs/cache`.
    pub fn new(source: impl Into<PathBuf>, vocab_size: usize) -> Self {
        Self {
            source: source.into(),
            cache_root: PathBuf::from("runs").join("cache"),
            vocab_size,
            tokenizer: None,
            tokenizer_train_bytes: None,
            verbose: false,
        }
    }
}

/// A tokenized corpus: three memory-mapped token streams and the tokenizer that made them.
#[derive(Debug)]
pub struct Corpus {
    /// Training split tokens.
    pub train: TokenFile,
    /// Validation split tokens.
    pub valid: TokenFile,
    /// Test split tokens.
    pub test: TokenFile,
    /// The `tokenizer.json` used.
    pub tokenizer_path: PathBuf,
    /// Size of the tokenizer's vocabulary, special tokens included.
    pub vocab_size: usize,
    /// Number of UTF-8 bytes each token id decodes to (0 for special tokens), for bits per byte.
    pub token_bytes: Vec<u32>,
    /// The cache folder of this source.
    pub cache_dir: PathBuf,
    /// The options it was prepared with.
    pub options: CorpusOptions,
    /// Hashes of the tokenizer and token files.
    pub identity: DataIdentity,
}

impl Corpus {
    /// Runs (or reuses from the cache) the whole pipeline described in the [module docs](self).
    ///
    /// Errors: a missing or empty source, non-UTF-8 text, an unreadable tokenizer, or a split too short to hold
    /// a single token.
    pub fn prepare(opts: &CorpusOptions) -> Result<Corpus> {
        if opts.tokenizer.is_none() && opts.vocab_size < 257 {
            return Err(Error::Config(format!(
                "a byte-level BPE needs a vocabulary of at least 257 tokens (256 bytes + end of text), got {}",
                opts.vocab_size
            ))
            .into());
        }
        let splits = prepare_text(&opts.source, &opts.cache_root, opts.verbose)?;
        let cache_dir = splits.dir.clone();
        let tokenizer_path = match &opts.tokenizer {
            Some(path) => {
                // Validate it now, with a clear error.
                load_tokenizer(path)?;
                path.clone()
            }
            None => {
                let suffix = match opts.tokenizer_train_bytes {
                    Some(b) => format!("-{b}b"),
                    None => String::new(),
                };
                let path = cache_dir.join(format!("tokenizer-v{}{suffix}.json", opts.vocab_size));
                if !path.exists() {
                    if opts.verbose {
                        eprintln!(
                            "training a byte-level BPE tokenizer ({} tokens) on {} ...",
                            opts.vocab_size,
                            splits.train.display()
                        );
                    }
                    let t0 = std::time::Instant::now();
                    train_tokenizer(
                        &splits.train,
                        opts.vocab_size,
                        opts.tokenizer_train_bytes,
                        &path,
                    )?;
                    if opts.verbose {
                        eprintln!(
                            "  done in {:.1} s -> {}",
                            t0.elapsed().as_secs_f64(),
                            path.display()
                        );
                    }
                }
                path
            }
        };
        let tokenizer = load_tokenizer(&tokenizer_path)?;
        let vocab_size = tokenizer.get_vocab_size(true);
        let token_bytes = token_byte_lengths(&tokenizer);
        let tok_bytes =
            std::fs::read(&tokenizer_path).map_err(|e| Error::io(&tokenizer_path, e))?;
        let tok_hash = fnv1a(&tok_bytes);
        let tok_dir = cache_dir.join(format!("tokens-{tok_hash:016x}"));
        let mut files = Vec::new();
        let mut hashes = Vec::new();
        for (name, text) in [
            ("train", &splits.train),
            ("valid", &splits.valid),
            ("test", &splits.test),
        ] {
            let path = tok_dir.join(format!("{name}.bin"));
            let (file, hash) = open_or_tokenize(&tokenizer, text, &path, vocab_size, opts.verbose)?;
            if file.is_empty() {
                return Err(Error::Data(format!(
                    "the {name} split of {} holds no tokens",
                    opts.source.display()
                ))
                .into());
            }
            files.push(file);
            hashes.push(hash);
        }
        let identity = DataIdentity {
            tokenizer: tok_hash,
            train: hashes[0],
            valid: hashes[1],
            test: hashes[2],
        };
        let test = files.pop().unwrap();
        let valid = files.pop().unwrap();
        let train = files.pop().unwrap();
        Ok(Corpus {
            train,
            valid,
            test,
            tokenizer_path,
            vocab_size,
            token_bytes,
            cache_dir,
            options: opts.clone(),
            identity,
        })
    }
}

/// The token file `path` of `text`, checked against its sidecar `<path>.json` (length in bytes and FNV-1a hash,
/// written with it): a file without sidecar, or whose length or hash differs from it (truncated, edited), is
/// tokenized again. Returns the file and its hash.
fn open_or_tokenize(
    tokenizer: &tokenizers::Tokenizer,
    text: &Path,
    path: &Path,
    vocab_size: usize,
    verbose: bool,
) -> Result<(TokenFile, u64)> {
    #[derive(Serialize, Deserialize, PartialEq)]
    struct Sidecar {
        bytes: u64,
        fnv1a: u64,
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    let sidecar_path = path.with_file_name(name);
    let recorded: Option<Sidecar> = std::fs::read(&sidecar_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    if let (Some(rec), Ok(bytes)) = (&recorded, std::fs::read(path)) {
        let actual = Sidecar {
            bytes: bytes.len() as u64,
            fnv1a: fnv1a(&bytes),
        };
        if actual == *rec {
            return Ok((TokenFile::open(path, vocab_size)?, rec.fnv1a));
        }
        eprintln!(
            "{} is {} bytes with hash {:016x}, but was written as {} bytes with hash {:016x} (truncated or \
             edited): tokenizing again",
            path.display(),
            actual.bytes,
            actual.fnv1a,
            rec.bytes,
            rec.fnv1a
        );
    } else if verbose {
        eprintln!("tokenizing {} ...", text.display());
    }
    tokenize_to_file(tokenizer, text, path)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let rec = Sidecar {
        bytes: bytes.len() as u64,
        fnv1a: fnv1a(&bytes),
    };
    let json = serde_json::to_vec(&rec).map_err(|e| Error::Data(e.to_string()))?;
    write_atomic(&sidecar_path, &json)?;
    Ok((TokenFile::open(path, vocab_size)?, rec.fnv1a))
}

pub(crate) use crate::rng::{fnv1a, fnv1a_extend};

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed to disk, then renamed over `path`.
/// A crash or error leaves either the old file or the new one, never a partial file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
    }
    let tmp = tmp_path(path);
    let result = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e).into());
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_parent(path)
}

/// Flushes the folder holding `path` to disk, so that a rename into it survives a power cut (a no-op where a folder
/// cannot be opened as a file).
pub fn sync_parent(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(dir, e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// `path` with `.tmp-<pid>` appended to its file name.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}
