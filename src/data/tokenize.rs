//! Byte-level BPE training, tokenization into flat token files, and the memory-mapped reader.

use super::write_atomic;
use crate::Error;
use candle_core::Result;
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

/// The end-of-text special token (id 0 of every tokenizer trained here), as in GPT-2.
pub const EOT_TOKEN: &str = "<|endoftext|>";

fn tok_err(what: &str, path: &Path, e: impl std::fmt::Display) -> candle_core::Error {
    Error::Data(format!("{what} {}: {e}", path.display())).into()
}

/// Trains a GPT-2 style byte-level BPE with `vocab_size` tokens (256 byte tokens, `<|endoftext|>`, and merges) on
/// the UTF-8 file `text`, and saves it to `out` (atomically).
///
/// `max_bytes`: learn the merges on the first `max_bytes` bytes only (whole lines), which makes training faster on
/// large corpora at a small cost in compression.
pub fn train_tokenizer(
    text: &Path,
    vocab_size: usize,
    max_bytes: Option<usize>,
    out: &Path,
) -> Result<Tokenizer> {
    let content = std::fs::read_to_string(text).map_err(|e| Error::io(text, e))?;
    let mut end = max_bytes.unwrap_or(usize::MAX).min(content.len());
    if end < content.len() {
        end = content[end..]
            .find('\n')
            .map(|k| end + k + 1)
            .unwrap_or(content.len());
    }
    let content = &content[..end];
    let trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(vec![AddedToken::from(EOT_TOKEN, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut trainer: TrainerWrapper = trainer.into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    let byte_level = ByteLevel::new(false, true, true);
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer.with_post_processor(Some(byte_level));
    // Lines as training sequences (the byte-level pre-tokenizer splits on whitespace anyway).
    tokenizer
        .train(&mut trainer, content.split_inclusive('\n'))
        .map_err(|e| tok_err("cannot train a tokenizer on", text, e))?;
    let json = tokenizer
        .to_string(false)
        .map_err(|e| tok_err("cannot serialise the tokenizer for", out, e))?;
    write_atomic(out, json.as_bytes())?;
    Ok(tokenizer)
}

/// Loads a `tokenizer.json`, with an error that names the file.
pub fn load_tokenizer(path: &Path) -> Result<Tokenizer> {
    if !path.exists() {
        return Err(Error::Data(format!(
            "the tokenizer file {} does not exist",
            path.display()
        ))
        .into());
    }
    Tokenizer::from_file(path).map_err(|e| tok_err("cannot read the tokenizer", path, e))
}

/// For every token id, the number of UTF-8 bytes it stands for (0 for added special tokens). With a byte-level
/// tokenizer each character of a token's string stands for exactly one byte.
pub fn token_byte_lengths(tokenizer: &Tokenizer) -> Vec<u32> {
    let n = tokenizer.get_vocab_size(true);
    let specials: std::collections::HashSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();
    (0..n as u32)
        .map(|id| {
            if specials.contains(&id) {
                0
            } else {
                tokenizer
                    .id_to_token(id)
                    .map(|t| t.chars().count() as u32)
                    .unwrap_or(0)
            }
        })
        .collect()
}

/// Tokenizes the UTF-8 file `text` into the flat token file `out` (little-endian `u16`, or `u32` when the
/// vocabulary exceeds 65,536), atomically. The text is encoded in chunks of whole lines, in parallel.
pub fn tokenize_to_file(tokenizer: &Tokenizer, text: &Path, out: &Path) -> Result<usize> {
    let content = std::fs::read_to_string(text).map_err(|e| Error::io(text, e))?;
    const CHUNK: usize = 1 << 16;
    let mut chunks = Vec::new();
    let mut start = 0;
    while start < content.len() {
        let mut end = (start + CHUNK).min(content.len());
        while !content.is_char_boundary(end) {
            end += 1;
        }
        if end < content.len() {
            end = content[end..]
                .find('\n')
                .map(|k| end + k + 1)
                .unwrap_or(content.len());
        }
        chunks.push(&content[start..end]);
        start = end;
    }
    let encodings = tokenizer
        .encode_batch(chunks, false)
        .map_err(|e| tok_err("cannot tokenize", text, e))?;
    let wide = tokenizer.get_vocab_size(true) > 1 << 16;
    let mut bytes = Vec::new();
    let mut count = 0;
    for enc in &encodings {
        for &id in enc.get_ids() {
            if wide {
                bytes.extend_from_slice(&id.to_le_bytes());
            } else {
                bytes.extend_from_slice(&(id as u16).to_le_bytes());
            }
            count += 1;
        }
    }
    write_atomic(out, &bytes)?;
    Ok(count)
}

/// A flat token file read through a memory map: `u16` little-endian when the vocabulary fits in 65,536 ids,
/// `u32` otherwise.
#[derive(Debug)]
pub struct TokenFile {
    map: memmap2::Mmap,
    width: usize,
    len: usize,
    path: PathBuf,
}

impl TokenFile {
    /// Opens `path`, written for a vocabulary of `vocab_size` ids. Errors if the length is not a whole number of
    /// tokens or an id is out of range (checked on a sample of the file).
    pub fn open(path: &Path, vocab_size: usize) -> Result<TokenFile> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let width = if vocab_size > 1 << 16 { 4 } else { 2 };
        let bytes = file.metadata().map_err(|e| Error::io(path, e))?.len() as usize;
        if !bytes.is_multiple_of(width) {
            return Err(Error::Data(format!(
                "{} is {bytes} bytes, not a whole number of {width}-byte tokens (truncated?); delete it to \
                 tokenize again",
                path.display()
            ))
            .into());
        }
        // SAFETY: the file is opened read-only and only ever replaced by rename (never modified in place), so the
        // mapping stays valid for the lifetime of this value.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let out = TokenFile {
            map,
            width,
            len: bytes / width,
            path: path.to_path_buf(),
        };
        let step = (out.len / 4096).max(1);
        let mut i = 0;
        while i < out.len {
            let id = out.get(i);
            if id as usize >= vocab_size {
                return Err(Error::Data(format!(
                    "{} holds token id {id} at position {i}, outside the vocabulary of {vocab_size}: it was made \
                     by another tokenizer",
                    path.display()
                ))
                .into());
            }
            i += step;
        }
        Ok(out)
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file holds no token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token at position `i` (panics past the end, like slice indexing).
    #[inline]
    pub fn get(&self, i: usize) -> u32 {
        let b = &self.map[i * self.width..(i + 1) * self.width];
        if self.width == 2 {
            u16::from_le_bytes([b[0], b[1]]) as u32
        } else {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
    }

    /// Appends tokens `start..start + len` to `out`.
    pub fn extend_window(&self, start: usize, len: usize, out: &mut Vec<u32>) {
        out.extend((start..start + len).map(|i| self.get(i)));
    }
}
