//! Helpers shared by the training tests (`train_resume`, `reliability`, `scaling_pipeline`): a fresh temporary
//! folder, seeded pseudo-French text, and a tiny three-split corpus with a 300-token tokenizer.
#![allow(dead_code)]

use candle_structured::data::{Corpus, CorpusOptions};
use std::path::{Path, PathBuf};

/// An empty folder `cs-<prefix>-<name>-<pid>` under the system's temporary folder.
pub fn tmp_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cs-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// At least `bytes` of pseudo-French from a seeded generator: sentences of 6–21 words, one per line.
pub fn synthetic_text(seed: u64, bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "le",
        "paquet",
        "est",
        "installé",
        "dans",
        "le",
        "système",
        "avec",
        "la",
        "commande",
        "apt",
        "de",
        "Debian",
        "pour",
        "les",
        "utilisateurs",
        "fichier",
        "configuration",
        "serveur",
        "noyau",
        "une",
        "mise",
        "à",
        "jour",
        "sécurité",
        "réseau",
        "et",
        "des",
        "sources",
        "vers",
        "répertoire",
        "options",
    ];
    let mut s = seed;
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s
    };
    let mut out = String::new();
    while out.len() < bytes {
        let n = 6 + (next() >> 60) as usize;
        for k in 0..n {
            out.push_str(WORDS[(next() >> 33) as usize % WORDS.len()]);
            out.push(if k + 1 == n { '.' } else { ' ' });
        }
        out.push('\n');
    }
    out
}

/// The corpus of `dir`: train, valid and test files of `bytes` each (seeds 1, 2, 3) under `dir/src`, written on
/// first use, prepared with a 300-token tokenizer into `dir/cache`.
pub fn corpus(dir: &Path, bytes: usize) -> Corpus {
    let src = dir.join("src");
    if !src.exists() {
        std::fs::create_dir_all(&src).unwrap();
        for (i, f) in ["train.txt", "valid.txt", "test.txt"].iter().enumerate() {
            std::fs::write(src.join(f), synthetic_text(i as u64 + 1, bytes)).unwrap();
        }
    }
    let mut o = CorpusOptions::new(&src, 300);
    o.cache_root = dir.join("cache");
    Corpus::prepare(&o).unwrap()
}
