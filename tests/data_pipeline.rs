//! The corpus pipeline: splits, gz decompression, tokenizer, token files, sampler, and its clear errors.
#![cfg(feature = "train")]

use candle_core::Device;
use candle_structured::data::{
    eval_windows, load_tokenizer, prepare_text, BatchSampler, Corpus, CorpusOptions, TokenFile,
};
use std::io::Write;
use std::path::PathBuf;

fn tmp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cs-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn text(lines: usize) -> String {
    (0..lines)
        .map(|i| {
            format!(
                "Ligne numéro {i} : le paquet {} dépend de libc{}.\n",
                i * 7 % 13,
                i % 5
            )
        })
        .collect()
}

fn err_of(opts: &CorpusOptions) -> String {
    Corpus::prepare(opts).unwrap_err().to_string()
}

#[test]
fn single_file_gz_folder_and_tokens_roundtrip() {
    let dir = tmp_dir("ok");
    // A gzip file: decompressed, split 90/5/5 at line boundaries.
    let gz = dir.join("corpus.txt.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    let body = text(2000);
    enc.write_all(body.as_bytes()).unwrap();
    enc.finish().unwrap();
    let splits = prepare_text(&gz, &dir.join("cache"), false).unwrap();
    let (tr, va, te) = (
        std::fs::read_to_string(&splits.train).unwrap(),
        std::fs::read_to_string(&splits.valid).unwrap(),
        std::fs::read_to_string(&splits.test).unwrap(),
    );
    assert_eq!(format!("{tr}{va}{te}"), body);
    assert!(tr.ends_with('\n') && va.ends_with('\n'));
    assert!((va.len() as f64 / body.len() as f64 - 0.05).abs() < 0.01);

    let mut o = CorpusOptions::new(&gz, 400);
    o.cache_root = dir.join("cache");
    let c = Corpus::prepare(&o).unwrap();
    assert_eq!(c.vocab_size, 400);
    // Tokens decode back to the text.
    let tok = load_tokenizer(&c.tokenizer_path).unwrap();
    let ids: Vec<u32> = (0..c.valid.len()).map(|i| c.valid.get(i)).collect();
    assert_eq!(tok.decode(&ids, false).unwrap(), va);
    // Byte counts per token add up to the text's bytes.
    let bytes: u64 = ids.iter().map(|&t| c.token_bytes[t as usize] as u64).sum();
    assert_eq!(bytes as usize, va.len());
    // Cached: a second prepare reuses the files.
    let c2 = Corpus::prepare(&o).unwrap();
    assert_eq!(c2.train.len(), c.train.len());

    // Sampler: a pure function of (seed, counter).
    let mut s1 = BatchSampler::new(7);
    let (x1, y1) = s1.next_batch(&c.train, 3, 8, &Device::Cpu).unwrap();
    let (x2, _) = s1.next_batch(&c.train, 3, 8, &Device::Cpu).unwrap();
    let mut s2 = BatchSampler {
        drawn: 3,
        ..BatchSampler::new(7)
    };
    let (x2b, _) = s2.next_batch(&c.train, 3, 8, &Device::Cpu).unwrap();
    assert_eq!(x2.to_vec2::<u32>().unwrap(), x2b.to_vec2::<u32>().unwrap());
    let xv = x1.to_vec2::<u32>().unwrap();
    let yv = y1.to_vec2::<u32>().unwrap();
    assert_eq!(&xv[0][1..], &yv[0][..7]);
    // Evaluation windows: non-overlapping, inside the stream.
    let w = eval_windows(c.valid.len(), 8, 1000);
    assert!(w.windows(2).all(|p| p[1] >= p[0] + 8));
    assert!(w.iter().all(|&s| s + 9 <= c.valid.len()));
    let w = eval_windows(c.train.len(), 8, 5);
    assert_eq!(w.len(), 5);
    assert!(*w.last().unwrap() + 9 <= c.train.len());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_get_clear_errors() {
    let dir = tmp_dir("bad");
    let cache = dir.join("cache");
    let opts = |p: PathBuf| {
        let mut o = CorpusOptions::new(p, 300);
        o.cache_root = cache.clone();
        o
    };
    // Missing path.
    let err = err_of(&opts(dir.join("nope.txt")));
    assert!(err.contains("does not exist"), "{err}");
    // Empty file.
    std::fs::write(dir.join("empty.txt"), "").unwrap();
    let err = err_of(&opts(dir.join("empty.txt")));
    assert!(err.contains("empty"), "{err}");
    // Empty folder.
    std::fs::create_dir_all(dir.join("void")).unwrap();
    let err = err_of(&opts(dir.join("void")));
    assert!(err.contains("holds no files"), "{err}");
    // Not UTF-8 (Latin-1 "é").
    let mut latin = text(50).into_bytes();
    latin.extend_from_slice(b"caf\xe9\n");
    std::fs::write(dir.join("latin1.txt"), &latin).unwrap();
    let err = err_of(&opts(dir.join("latin1.txt")));
    assert!(
        err.contains("not UTF-8") && err.contains("latin1.txt"),
        "{err}"
    );
    // A missing tokenizer file, and a broken one.
    std::fs::write(dir.join("ok.txt"), text(300)).unwrap();
    let mut o = opts(dir.join("ok.txt"));
    o.tokenizer = Some(dir.join("missing-tokenizer.json"));
    let err = err_of(&o);
    assert!(err.contains("does not exist"), "{err}");
    std::fs::write(dir.join("bad-tokenizer.json"), "{not json").unwrap();
    o.tokenizer = Some(dir.join("bad-tokenizer.json"));
    let err = err_of(&o);
    assert!(err.contains("cannot read the tokenizer"), "{err}");
    // A vocabulary too small for a byte-level BPE.
    let mut o = opts(dir.join("ok.txt"));
    o.vocab_size = 100;
    assert!(err_of(&o).contains("at least 257"));
    // A truncated token file.
    let f = dir.join("odd.bin");
    std::fs::write(&f, [1u8, 2, 3]).unwrap();
    let err = TokenFile::open(&f, 300).unwrap_err().to_string();
    assert!(err.contains("not a whole number"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One pass of the epoch order visits every disjoint window exactly once, in an order that depends on the seed and
/// changes from pass to pass; checkpoints written before the order existed read as the random order.
#[test]
fn epoch_order_is_a_permutation_per_pass() {
    use candle_structured::data::WindowOrder;
    for (len, seq) in [
        (1_000_001usize, 256usize),
        (257, 256),
        (5_000, 7),
        (1 << 16, 64),
    ] {
        let n = (len - 1) / seq;
        let s = BatchSampler::new(3);
        for pass in 0..2u64 {
            let mut starts: Vec<usize> = (0..n as u64)
                .map(|i| s.offset(pass * n as u64 + i, len, seq))
                .collect();
            assert!(starts.iter().all(|&o| o % seq == 0 && o + seq < len));
            let first: Vec<usize> = starts.iter().take(8).copied().collect();
            starts.sort_unstable();
            starts.dedup();
            assert_eq!(starts.len(), n, "len {len} seq {seq} pass {pass}");
            if n > 100 {
                let other: Vec<usize> = (0..8)
                    .map(|i| BatchSampler::new(4).offset(i, len, seq))
                    .collect();
                assert_ne!(first, other, "the seed changes the order");
                let next: Vec<usize> = (0..8).map(|i| s.offset(n as u64 + i, len, seq)).collect();
                let this: Vec<usize> = (0..8).map(|i| s.offset(i, len, seq)).collect();
                assert_ne!(this, next, "each pass has its own order");
            }
        }
    }
    let old: BatchSampler = serde_json::from_str(r#"{"seed":5,"drawn":12}"#).unwrap();
    assert_eq!(old.order, WindowOrder::Random);
    assert_eq!(BatchSampler::new(5).order, WindowOrder::Epochs);
}
