//! Source text → three UTF-8 split files in a cache folder.

use super::{fnv1a_extend, write_atomic};
use crate::Error;
use candle_core::Result;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The three prepared splits of a source, plain UTF-8 files in `dir`.
#[derive(Debug, Clone)]
pub struct TextSplits {
    /// The cache folder of this source.
    pub dir: PathBuf,
    /// `dir/text/train.txt`.
    pub train: PathBuf,
    /// `dir/text/valid.txt`.
    pub valid: PathBuf,
    /// `dir/text/test.txt`.
    pub test: PathBuf,
}

/// Share of the text held out for validation and for test when a source has no explicit splits.
const HELD_OUT_FRACTION: f64 = 0.05;

/// Lists the files of a source (recursively for folders, hidden entries skipped), sorted by path.
fn list_files(source: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(source).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            candle_core::Error::from(Error::Data(format!(
                "the data path {} does not exist",
                source.display()
            )))
        } else {
            Error::io(source, e).into()
        }
    })?;
    if meta.is_file() {
        return Ok(vec![source.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![source.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry.file_type().map_err(|e| Error::io(&path, e))?;
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() && !is_readme(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(Error::Data(format!(
            "the data folder {} holds no files",
            source.display()
        ))
        .into());
    }
    Ok(out)
}

/// A folder's `README*`, `LICENSE*` and `COPYRIGHT*` files describe the corpus; they are not corpus text.
fn is_readme(path: &Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    ["readme", "license", "licence", "copying", "copyright"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// A fingerprint of a source: its canonical path and every file's relative path, size and modification time.
pub fn source_fingerprint(source: &Path) -> Result<u64> {
    let files = list_files(source)?;
    let canon = std::fs::canonicalize(source).map_err(|e| Error::io(source, e))?;
    let mut h = fnv1a_extend(0xcbf2_9ce4_8422_2325, canon.to_string_lossy().as_bytes());
    for f in &files {
        let meta = std::fs::metadata(f).map_err(|e| Error::io(f, e))?;
        h = fnv1a_extend(h, f.to_string_lossy().as_bytes());
        h = fnv1a_extend(h, &meta.len().to_le_bytes());
        if let Ok(t) = meta.modified() {
            if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
                h = fnv1a_extend(h, &d.as_nanos().to_le_bytes());
            }
        }
    }
    Ok(h)
}

/// Reads a file as UTF-8 text, decompressing `.gz` files. Errors name the file and the first invalid byte.
pub fn read_text(path: &Path) -> Result<String> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    let is_gz = path.extension().is_some_and(|e| e == "gz");
    if is_gz {
        flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file))
            .read_to_end(&mut bytes)
            .map_err(|e| {
                Error::Data(format!(
                    "{}: cannot decompress gzip data: {e}",
                    path.display()
                ))
            })?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::io(path, e))?;
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        Error::Data(format!(
            "{} is not UTF-8 text (invalid byte 0x{:02x} at offset {at}); convert it first, \
             e.g. `iconv -f latin1 -t utf-8`",
            path.display(),
            e.as_bytes()[at]
        ))
        .into()
    })
}

/// Which split a file stands for, from its name: `train*`, `valid*`/`val*`/`dev*`, `test*`.
fn split_of(path: &Path) -> Option<usize> {
    let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
    let stem = name.split('.').next().unwrap_or("");
    match stem {
        "train" | "training" => Some(0),
        "valid" | "validation" | "val" | "dev" => Some(1),
        "test" => Some(2),
        _ => None,
    }
}

/// Splits text at line boundaries into (train, valid, test): the last `2·HELD_OUT_FRACTION` of the text is
/// held out, valid before test, so that held-out text is contiguous (different documents, mostly).
fn split_text(text: &str) -> (String, String, String) {
    let n = text.len();
    let cut = |frac: f64| -> usize {
        let mut at = ((n as f64) * frac) as usize;
        while at < n && !text.is_char_boundary(at) {
            at += 1;
        }
        match text[at..].find('\n') {
            Some(k) => at + k + 1,
            None => n,
        }
    };
    let a = cut(1.0 - 2.0 * HELD_OUT_FRACTION);
    let b = cut(1.0 - HELD_OUT_FRACTION).max(a);
    (
        text[..a].to_string(),
        text[a..b].to_string(),
        text[b..].to_string(),
    )
}

/// Prepares the three splits of `source` under `cache_root/<name>-<fingerprint>/text/`, or reuses them.
///
/// * A folder with files named `train…`, `valid…` (or `val`, `validation`, `dev`) and `test…` (optionally
///   `.gz`) gives the splits directly (the embedded `data/fr-debian` has this form).
/// * Any other file or folder (all files, recursively, in path order, `README`/`LICENSE` files skipped) is
///   concatenated and split at line boundaries: the last 10% is held out, half validation, half test.
///
/// Errors: a missing path, an empty folder, a file that is not UTF-8, or no text at all.
pub fn prepare_text(source: &Path, cache_root: &Path, verbose: bool) -> Result<TextSplits> {
    let files = list_files(source)?;
    let fp = super::source_fingerprint(source)?;
    let name: String = source
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "corpus".into())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = cache_root.join(format!("{name}-{fp:016x}"));
    let text_dir = dir.join("text");
    let splits = TextSplits {
        train: text_dir.join("train.txt"),
        valid: text_dir.join("valid.txt"),
        test: text_dir.join("test.txt"),
        dir,
    };
    if splits.train.exists() && splits.valid.exists() && splits.test.exists() {
        return Ok(splits);
    }
    if verbose {
        eprintln!(
            "preparing the text of {} into {} ...",
            source.display(),
            text_dir.display()
        );
    }
    let mut by_split: [Vec<&PathBuf>; 3] = [vec![], vec![], vec![]];
    let explicit = files.len() >= 3
        && files.iter().all(|f| split_of(f).is_some())
        && (0..3).all(|s| files.iter().any(|f| split_of(f) == Some(s)));
    let texts: [String; 3] = if explicit {
        for f in &files {
            by_split[split_of(f).unwrap()].push(f);
        }
        let mut out: [String; 3] = Default::default();
        for (s, fs) in by_split.iter().enumerate() {
            for f in fs {
                out[s].push_str(&read_text(f)?);
                if !out[s].ends_with('\n') {
                    out[s].push('\n');
                }
            }
        }
        out
    } else {
        let mut all = String::new();
        for f in &files {
            all.push_str(&read_text(f)?);
            if !all.is_empty() && !all.ends_with('\n') {
                all.push('\n');
            }
        }
        let (a, b, c) = split_text(&all);
        [a, b, c]
    };
    let total: usize = texts.iter().map(|t| t.trim().len()).sum();
    if total == 0 {
        return Err(Error::Data(format!(
            "the data path {} holds no text (it is empty)",
            source.display()
        ))
        .into());
    }
    for (s, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            let which = ["training", "validation", "test"][s];
            return Err(Error::Data(format!(
                "the {which} split of {} is empty (the source holds {} bytes of text; give more text, or a \
                 folder with non-empty train/valid/test files)",
                source.display(),
                total
            ))
            .into());
        }
    }
    write_atomic(&splits.valid, texts[1].as_bytes())?;
    write_atomic(&splits.test, texts[2].as_bytes())?;
    // train last: its presence marks a complete preparation.
    write_atomic(&splits.train, texts[0].as_bytes())?;
    Ok(splits)
}
