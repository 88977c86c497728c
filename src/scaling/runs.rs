//! Learning curves: the data every fit starts from, and readers for training logs and CSV files.
//!
//! A [`Run`] is one training run: a name, a [`Family`] (baseline, doped, FastFood, block-diagonal…), its trainable
//! non-embedding parameter count `N`, its frozen parameter count, and a learning curve of [`RunPoint`]s (tokens seen,
//! compute `C` in FLOPs, loss).
//!
//! # Run folders (`runs/<name>/`)
//!
//! [`read_run_dir`] reads one folder written by the training loop, [`read_runs_dir`] every sub-folder of a root.
//! The reader is deliberately tolerant:
//!
//! * **Log**: the first of `log.jsonl`, `metrics.jsonl`, `train.jsonl`, or else any `*.jsonl` file, one JSON object per
//!   line. A step line of this crate's loop is read as its type, [`crate::train::log::StepLine`]; other lines
//!   (events, logs of other tools) by key. Keys read from each line (aliases in parentheses; unknown keys are ignored):
//!   `step`, `tokens` (or `tokens_seen`), `flops` (or `compute`, `C`), `pf_days`, `val_loss` (or `valid_loss`, `eval_loss`),
//!   `train_loss` (or `loss`), and optionally `n_trainable` / `n_frozen` (see below). Blank lines, lines that do not
//!   parse (e.g. the truncated last line of an interrupted run) and lines without a loss are skipped and counted in
//!   [`Run::skipped_lines`]. Duplicated steps (a resumed run re-logging the steps after its last checkpoint) keep their
//!   last occurrence. Points are sorted by tokens (or compute).
//! * **Loss**: the validation loss where the log has any (`val_loss` lines), else the training loss (then
//!   [`Run::loss_kind`] is [`LossKind::Train`]).
//! * **Sizes and family**: searched, at any depth, in `config.json`, `run.json`, `meta.json`, `header.json`, then in
//!   the log lines themselves: `n_trainable` [`trainable`, `trainable_params`, `n_params`, `params`,
//!   `non_embedding_params`], `n_frozen` [`frozen`, `frozen_params`], `family` [`kind`, `variant`]. Without a family
//!   key the family is guessed from the run's name ([`Family::from_name`]).
//! * **Compute**: when `N` and tokens are known, `C` is recomputed by [`Run::with_cost`] with the cost model of the
//!   study (so one set of runs gives the paper's figures at frozen cost 2/3 and 0); otherwise the logged `flops` (or
//!   `pf_days` × [`crate::flops::PF_DAY`]) are used as they are.
//!
//! # CSV
//!
//! [`read_csv`]: a header line (names case-insensitive), then one row per logged point; columns `run`, `compute`
//! (FLOPs), `loss`, and optional `params` (trainable N), `tokens`, `frozen`, `family`, in any order. Lines starting
//! with `#` are comments. Without a `compute` column the file is a **table of final losses**, one row per run:
//! `run, params, tokens, loss[, frozen, family]`; each row becomes a run of a single point, priced by
//! [`CostModel::default`] (the study re-prices it), and the report fits `L(N)` and Chinchilla's `L(N, D)` on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::cost::{CostModel, PF_DAY};
use crate::error::Error;
use crate::train::log::LogLine;

/// The kind of model a run trains, as the paper's figures group them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// Plain GPT baseline (dense trainable layers).
    Baseline,
    /// A baseline "doped" with frozen random layers.
    Doped,
    /// Structured FastFood layers (adaptive Hadamard products).
    FastFood,
    /// Block-diagonal layers with Hadamard mixing.
    BlockDiag,
    /// Anything else, by name.
    Other(String),
}

impl Family {
    /// Guess a family from a run or preset name: `doped`/`frozen` → [`Family::Doped`], `fastfood`/`ff-` →
    /// [`Family::FastFood`], `block`/`bd-` → [`Family::BlockDiag`], anything else → [`Family::Baseline`].
    pub fn from_name(name: &str) -> Family {
        let n = name.to_ascii_lowercase();
        if n.contains("doped") || n.contains("frozen") || n.contains("dope") {
            Family::Doped
        } else if n.contains("fastfood")
            || n.contains("fast_food")
            || n.starts_with("ff-")
            || n.contains("-ff")
        {
            Family::FastFood
        } else if n.contains("block") || n.starts_with("bd-") || n.contains("-bd") {
            Family::BlockDiag
        } else {
            Family::Baseline
        }
    }

    /// Parse an explicit family name (as written in a config or CSV): the names above plus `baseline`/`dense`;
    /// unknown names become [`Family::Other`].
    pub fn parse(s: &str) -> Family {
        let n = s.trim().to_ascii_lowercase();
        match n.as_str() {
            "baseline" | "dense" | "base" | "gpt" => Family::Baseline,
            _ => match Family::from_name(&n) {
                Family::Baseline => Family::Other(s.trim().to_string()),
                f => f,
            },
        }
    }

    /// A display name: `baseline`, `doped`, `fastfood`, `blockdiag`, or the custom name.
    pub fn name(&self) -> &str {
        match self {
            Family::Baseline => "baseline",
            Family::Doped => "doped",
            Family::FastFood => "fastfood",
            Family::BlockDiag => "blockdiag",
            Family::Other(s) => s,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which loss a run's curve holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LossKind {
    /// Validation loss (what the paper plots).
    Validation,
    /// Training loss (fallback when a log has no validation points).
    Train,
}

/// One point of a learning curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunPoint {
    /// Optimiser step, when logged.
    pub step: Option<u64>,
    /// Tokens seen so far (`B·S`), when known.
    pub tokens: Option<f64>,
    /// Training compute so far, in FLOPs.
    pub compute: f64,
    /// Loss (nats per token).
    pub loss: f64,
}

/// One training run: sizes, family and learning curve.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Run name (its folder name, or the CSV's `run` column).
    pub name: String,
    /// Model family.
    pub family: Family,
    /// Trainable non-embedding parameters `N`, when known.
    pub n_trainable: Option<f64>,
    /// Frozen parameters (0 for baselines and structured models).
    pub n_frozen: f64,
    /// The learning curve, sorted by compute.
    pub points: Vec<RunPoint>,
    /// Whether [`RunPoint::loss`] is validation or training loss.
    pub loss_kind: LossKind,
    /// Log lines that were skipped (blank, unparsable, without a loss).
    pub skipped_lines: usize,
}

impl Run {
    /// A run from `(compute, loss)` pairs (tests, synthetic data). Points are sorted by compute.
    pub fn from_points(
        name: impl Into<String>,
        family: Family,
        n_trainable: Option<f64>,
        points: impl IntoIterator<Item = (f64, f64)>,
    ) -> Run {
        let mut points: Vec<RunPoint> = points
            .into_iter()
            .map(|(compute, loss)| RunPoint {
                step: None,
                tokens: None,
                compute,
                loss,
            })
            .collect();
        points.sort_by(|a, b| a.compute.total_cmp(&b.compute));
        Run {
            name: name.into(),
            family,
            n_trainable,
            n_frozen: 0.0,
            points,
            loss_kind: LossKind::Validation,
            skipped_lines: 0,
        }
    }

    /// The same run with `C` recomputed from tokens by `cost` wherever tokens and `N` are known (points without
    /// tokens keep their logged compute).
    pub fn with_cost(&self, cost: &CostModel) -> Run {
        let mut run = self.clone();
        if let Some(n) = run.n_trainable {
            for p in run.points.iter_mut() {
                if let Some(t) = p.tokens {
                    p.compute = cost.flops(n, run.n_frozen, t);
                }
            }
            run.points.sort_by(|a, b| a.compute.total_cmp(&b.compute));
        }
        run
    }

    /// Points with finite, positive compute and loss (the ones usable in log-log fits).
    pub fn valid_points(&self) -> impl Iterator<Item = &RunPoint> {
        self.points.iter().filter(|p| {
            p.compute.is_finite() && p.compute > 0.0 && p.loss.is_finite() && p.loss > 0.0
        })
    }

    /// The last valid point (final compute and loss).
    pub fn last(&self) -> Option<&RunPoint> {
        self.valid_points().last()
    }

    /// The lowest loss reached, with its point.
    pub fn best(&self) -> Option<&RunPoint> {
        self.valid_points().min_by(|a, b| a.loss.total_cmp(&b.loss))
    }

    /// The loss at the end of the run: the mean of the last `k` valid points (k ≥ 1), which damps evaluation noise.
    pub fn final_loss(&self, k: usize) -> Option<f64> {
        let v: Vec<f64> = self.valid_points().map(|p| p.loss).collect();
        if v.is_empty() {
            return None;
        }
        let k = k.clamp(1, v.len());
        Some(v[v.len() - k..].iter().sum::<f64>() / k as f64)
    }

    /// Total tokens of the run (its last point's), when logged.
    pub fn final_tokens(&self) -> Option<f64> {
        self.valid_points().filter_map(|p| p.tokens).last()
    }
}

/// A label "name (N=1.2M)" for legends and tables.
pub fn run_label(run: &Run) -> String {
    match run.n_trainable {
        Some(n) => format!("{} (N={})", run.name, human(n)),
        None => run.name.clone(),
    }
}

/// 1234567 → "1.23M", 5300 → "5.3k".
pub(crate) fn human(x: f64) -> String {
    let (v, s) = if x.abs() >= 1e9 {
        (x / 1e9, "G")
    } else if x.abs() >= 1e6 {
        (x / 1e6, "M")
    } else if x.abs() >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    let t = format!("{v:.3}");
    let t = if t.contains('.') {
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        t
    };
    format!("{t}{s}")
}

// ---- JSON helpers ---------------------------------------------------------------------------------------------------

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// First value of any of `keys` at the top level of an object.
fn get_top(obj: &serde_json::Map<String, Value>, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| obj.get(*k).and_then(num))
}

/// First value of any of `keys` anywhere in a JSON tree accepted by `ok` (keys in order of preference, then
/// shallowest first).
fn find_deep<'a>(v: &'a Value, keys: &[&str], ok: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    for k in keys {
        let mut level = vec![v];
        while !level.is_empty() {
            let mut next = Vec::new();
            for x in level {
                match x {
                    Value::Object(m) => {
                        if let Some(found) = m.get(*k).filter(|f| ok(f)) {
                            return Some(found);
                        }
                        next.extend(m.values());
                    }
                    Value::Array(a) => next.extend(a.iter()),
                    _ => {}
                }
            }
            level = next;
        }
    }
    None
}

const N_TRAINABLE_KEYS: &[&str] = &[
    "n_trainable_non_embedding",
    "n_trainable",
    "trainable",
    "trainable_params",
    "non_embedding_params",
    "n_params",
    "params",
];
const N_FROZEN_KEYS: &[&str] = &["n_frozen", "frozen", "frozen_params"];
const FAMILY_KEYS: &[&str] = &["family", "kind", "variant"];

#[derive(Default)]
struct Meta {
    n_trainable: Option<f64>,
    n_frozen: Option<f64>,
    family: Option<Family>,
}

impl Meta {
    fn absorb(&mut self, v: &Value) {
        if self.n_trainable.is_none() {
            self.n_trainable = find_deep(v, N_TRAINABLE_KEYS, |x| num(x).is_some()).and_then(num);
        }
        if self.n_frozen.is_none() {
            self.n_frozen = find_deep(v, N_FROZEN_KEYS, |x| num(x).is_some()).and_then(num);
        }
        if self.family.is_none() {
            self.family = find_deep(v, FAMILY_KEYS, |x| x.is_string())
                .and_then(|f| f.as_str())
                .map(Family::parse);
        }
    }
}

/// Parse JSONL text (one object per line) into a run. `name` names the run; `meta` is an optional config object.
///
/// See the [module documentation](self) for the keys read.
pub fn parse_jsonl(name: &str, text: &str, config: Option<&Value>) -> candle_core::Result<Run> {
    let mut meta = Meta::default();
    if let Some(c) = config {
        meta.absorb(c);
    }
    struct Raw {
        step: Option<u64>,
        tokens: Option<f64>,
        flops: Option<f64>,
        val: Option<f64>,
        train: Option<f64>,
    }
    let mut raws = Vec::new();
    let mut skipped = 0usize;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        // A step line of this crate's training loop, read by its type.
        if let Ok(LogLine::Step(s)) = serde_json::from_str::<LogLine>(line) {
            meta.n_trainable
                .get_or_insert(s.n_trainable_non_embedding as f64);
            meta.n_frozen.get_or_insert(s.n_frozen as f64);
            raws.push(Raw {
                step: Some(s.step),
                tokens: Some(s.tokens as f64),
                flops: Some(s.flops),
                val: s.val_loss,
                train: Some(s.train_loss),
            });
            continue;
        }
        // Anything else (events, other tools' logs): by key, with aliases.
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => {
                skipped += 1;
                continue;
            }
        };
        let Value::Object(obj) = &v else {
            skipped += 1;
            continue;
        };
        let val = get_top(
            obj,
            &["val_loss", "valid_loss", "eval_loss", "validation_loss"],
        );
        let train = get_top(obj, &["train_loss", "loss"]);
        if val.is_none() && train.is_none() {
            // A header / config line: take sizes from it.
            meta.absorb(&v);
            continue;
        }
        if meta.n_trainable.is_none() {
            meta.n_trainable = get_top(obj, N_TRAINABLE_KEYS);
        }
        if meta.n_frozen.is_none() {
            meta.n_frozen = get_top(obj, N_FROZEN_KEYS);
        }
        let flops = get_top(obj, &["flops", "compute", "C"])
            .or_else(|| get_top(obj, &["pf_days"]).map(|p| p * PF_DAY));
        raws.push(Raw {
            step: get_top(obj, &["step"]).map(|s| s as u64),
            tokens: get_top(obj, &["tokens", "tokens_seen"]),
            flops,
            val,
            train,
        });
    }
    // Resumed runs may log a step twice: keep the last occurrence.
    let mut by_step: BTreeMap<u64, usize> = BTreeMap::new();
    let mut keep = vec![true; raws.len()];
    for (i, r) in raws.iter().enumerate() {
        if let Some(s) = r.step {
            if let Some(prev) = by_step.insert(s, i) {
                keep[prev] = false;
            }
        }
    }
    let raws: Vec<Raw> = raws
        .into_iter()
        .zip(keep)
        .filter_map(|(r, k)| k.then_some(r))
        .collect();
    let has_val = raws.iter().any(|r| r.val.is_some());
    let loss_kind = if has_val {
        LossKind::Validation
    } else {
        LossKind::Train
    };
    let n_trainable = meta.n_trainable;
    let n_frozen = meta.n_frozen.unwrap_or(0.0);
    let cost = CostModel::default();
    let mut points = Vec::new();
    for r in &raws {
        let loss = if has_val { r.val } else { r.train };
        let Some(loss) = loss else { continue };
        let compute = match (r.tokens, n_trainable, r.flops) {
            (_, _, Some(f)) => f,
            (Some(t), Some(n), None) => cost.flops(n, n_frozen, t),
            _ => f64::NAN,
        };
        points.push(RunPoint {
            step: r.step,
            tokens: r.tokens,
            compute,
            loss,
        });
    }
    if points.is_empty() {
        return Err(Error::Data(format!("run {name}: no point with a loss in the log")).into());
    }
    points.sort_by(|a, b| match (a.tokens, b.tokens) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        _ => a.compute.total_cmp(&b.compute),
    });
    Ok(Run {
        name: name.to_string(),
        family: meta.family.unwrap_or_else(|| Family::from_name(name)),
        n_trainable,
        n_frozen,
        points,
        loss_kind,
        skipped_lines: skipped,
    })
}

fn read_text(path: &Path) -> candle_core::Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e).into())
}

/// Read one run folder (see the [module documentation](self)). The run is named after the folder.
pub fn read_run_dir(dir: impl AsRef<Path>) -> candle_core::Result<Run> {
    let dir = dir.as_ref();
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| dir.display().to_string());
    let log = ["log.jsonl", "metrics.jsonl", "train.jsonl"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .or_else(|| {
            let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            all.sort();
            all.into_iter().next()
        })
        .ok_or_else(|| {
            Error::Data(format!(
                "{}: no *.jsonl log in the run folder",
                dir.display()
            ))
        })?;
    let mut config: Option<Value> = None;
    for f in ["config.json", "run.json", "meta.json", "header.json"] {
        let p = dir.join(f);
        if p.is_file() {
            let text = read_text(&p)?;
            match serde_json::from_str::<Value>(&text) {
                Ok(v) => {
                    config = Some(v);
                    break;
                }
                Err(e) => return Err(Error::Data(format!("{}: {e}", p.display())).into()),
            }
        }
    }
    parse_jsonl(&name, &read_text(&log)?, config.as_ref())
}

/// Read every sub-folder of `root` holding a `*.jsonl` log, sorted by name. Folders without a log are skipped;
/// a folder whose log has no usable point is an error.
pub fn read_runs_dir(root: impl AsRef<Path>) -> candle_core::Result<Vec<Run>> {
    let root = root.as_ref();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .filter(|p| {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .any(|e| e.path().extension().is_some_and(|x| x == "jsonl"))
                })
                .unwrap_or(false)
        })
        .collect();
    dirs.sort();
    let runs = dirs
        .iter()
        .map(read_run_dir)
        .collect::<candle_core::Result<Vec<_>>>()?;
    if runs.is_empty() {
        return Err(Error::Data(format!(
            "{}: no run folder with a *.jsonl log",
            root.display()
        ))
        .into());
    }
    Ok(runs)
}

/// Parse CSV text with columns `run, compute, loss[, params, tokens, frozen, family]`, or, without a `compute`
/// column, a table `run, params, tokens, loss[, frozen, family]` of one row per run (see the
/// [module documentation](self)). Returns one run per distinct `run` value, in order of first appearance.
pub fn parse_csv(text: &str) -> candle_core::Result<Vec<Run>> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let (_, header) = lines
        .next()
        .ok_or_else(|| Error::Data("csv: empty file".into()))?;
    let cols: Vec<String> = header
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .collect();
    let idx = |names: &[&str]| cols.iter().position(|c| names.contains(&c.as_str()));
    let i_run = idx(&["run", "name"]).ok_or_else(|| Error::Data("csv: no `run` column".into()))?;
    let i_c = idx(&["compute", "flops", "c"]);
    let i_l =
        idx(&["loss", "val_loss"]).ok_or_else(|| Error::Data("csv: no `loss` column".into()))?;
    let i_n = idx(&["params", "n_trainable", "n"]);
    let i_t = idx(&["tokens", "d"]);
    if i_c.is_none() && (i_n.is_none() || i_t.is_none()) {
        return Err(Error::Data(
            "csv: no `compute` column, and no `params` and `tokens` columns to price the rows"
                .into(),
        )
        .into());
    }
    let i_f = idx(&["frozen", "n_frozen"]);
    let i_fam = idx(&["family"]);
    let mut order: Vec<String> = Vec::new();
    let mut runs: BTreeMap<String, Run> = BTreeMap::new();
    for (lineno, line) in lines {
        let f: Vec<&str> = line.split(',').map(|s| s.trim()).collect();
        let field = |i: usize| -> candle_core::Result<&str> {
            f.get(i).copied().ok_or_else(|| {
                Error::Data(format!(
                    "csv line {}: {} fields, expected {}",
                    lineno + 1,
                    f.len(),
                    cols.len()
                ))
                .into()
            })
        };
        let parse = |i: usize, what: &str| -> candle_core::Result<f64> {
            let s = field(i)?;
            s.parse::<f64>().map_err(|_| {
                Error::Data(format!(
                    "csv line {}: {what} `{s}` is not a number",
                    lineno + 1
                ))
                .into()
            })
        };
        let name = field(i_run)?.to_string();
        let loss = parse(i_l, "loss")?;
        let params = match i_n {
            Some(i) if !field(i)?.is_empty() => Some(parse(i, "params")?),
            _ => None,
        };
        let tokens = match i_t {
            Some(i) if !field(i)?.is_empty() => Some(parse(i, "tokens")?),
            _ => None,
        };
        let frozen = match i_f {
            Some(i) if !field(i)?.is_empty() => Some(parse(i, "frozen")?),
            _ => None,
        };
        let family = match i_fam {
            Some(i) if !field(i)?.is_empty() => Some(Family::parse(field(i)?)),
            _ => None,
        };
        // A table row (no compute column) is priced at frozen cost 2/3; the study re-prices it per cost model.
        let compute = match (i_c, params, tokens) {
            (Some(i), _, _) => parse(i, "compute")?,
            (None, Some(n), Some(t)) => CostModel::default().flops(n, frozen.unwrap_or(0.0), t),
            (None, _, _) => {
                return Err(Error::Data(format!(
                    "csv line {}: no compute, and params or tokens missing",
                    lineno + 1
                ))
                .into())
            }
        };
        let run = runs.entry(name.clone()).or_insert_with(|| {
            order.push(name.clone());
            Run {
                name: name.clone(),
                family: family.clone().unwrap_or_else(|| Family::from_name(&name)),
                n_trainable: params,
                n_frozen: frozen.unwrap_or(0.0),
                points: Vec::new(),
                loss_kind: LossKind::Validation,
                skipped_lines: 0,
            }
        });
        run.points.push(RunPoint {
            step: None,
            tokens,
            compute,
            loss,
        });
    }
    if order.is_empty() {
        return Err(Error::Data("csv: no data rows".into()).into());
    }
    Ok(order
        .into_iter()
        .map(|n| {
            let mut r = runs.remove(&n).expect("run present");
            r.points.sort_by(|a, b| a.compute.total_cmp(&b.compute));
            r
        })
        .collect())
}

/// Read a CSV file (see [`parse_csv`]).
pub fn read_csv(path: impl AsRef<Path>) -> candle_core::Result<Vec<Run>> {
    let path = path.as_ref();
    parse_csv(&read_text(path)?)
}

/// Write runs as CSV (`run,compute,loss,params,tokens,frozen,family`), readable by [`parse_csv`].
pub fn to_csv(runs: &[Run]) -> String {
    let mut s = String::from("run,compute,loss,params,tokens,frozen,family\n");
    for r in runs {
        for p in &r.points {
            s.push_str(&format!(
                "{},{:e},{},{},{},{},{}\n",
                r.name,
                p.compute,
                p.loss,
                r.n_trainable.map(|n| format!("{n}")).unwrap_or_default(),
                p.tokens.map(|t| format!("{t}")).unwrap_or_default(),
                r.n_frozen,
                r.family
            ));
        }
    }
    s
}
