//! Checkpoints: one safetensors file holding the weights, the optimizer moments and the run state (JSON in the
//! safetensors metadata), with a checksum over everything resume reads, written atomically.
//!
//! Format 3 (this build) records the whole plan of the run: the model (seed and dropout included) and the recipe
//! (batch, sequence, learning rate, budget, optimizer), the micro-batch, the corpus options and the identity of the
//! data (hashes of the tokenizer and token files). Its checksum (`checksum_all`) covers the run state's JSON, every
//! tensor's name, dtype, shape and bytes. With Muon (`TrainSpec::optimizer`), `adam.m/<name>` of a hidden matrix
//! holds Muon's momentum and `adam.v/<name>` stays zero. Older files still load: format 2 (the same layout without
//! the optimizer, which was AdamW) and format 1 (a checksum over the tensors only; the fields it lacks read as
//! unknown, `None`). Format 3 is new so that a build that knows only AdamW refuses a Muon run instead of resuming it
//! with the wrong update.

use super::AdamW;
use crate::data::{fnv1a_extend, write_atomic, BatchSampler, CorpusOptions, DataIdentity};
use crate::error::Error;
use crate::model::{GptConfig, TrainSpec};
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout written by this build (it reads 1 to 3).
pub const CHECKPOINT_FORMAT: u32 = 3;

/// The safetensors metadata key of the checksum of formats 2 and 3 (run state and tensors).
const CHECKSUM_ALL: &str = "checksum_all";

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`CHECKPOINT_FORMAT`].
    pub format: u32,
    /// Optimizer steps done.
    pub step: u64,
    /// Training tokens seen.
    pub tokens: u64,
    /// Data position and RNG state of the batch sampler.
    pub sampler: BatchSampler,
    /// AdamW step count (for the bias corrections).
    pub adam_step: u64,
    /// The model configuration.
    pub config: GptConfig,
    /// The training recipe.
    pub train: TrainSpec,
    /// Preset name, when the run came from one.
    pub preset: Option<String>,
    /// Tokenizer file, relative to the checkpoint's folder.
    pub tokenizer: Option<String>,
    /// Wall-clock seconds of training so far (informative).
    pub elapsed_s: f64,
    /// Sequences per forward/backward pass (unknown in format 1).
    #[serde(default)]
    pub micro_batch: Option<usize>,
    /// The corpus options the run was prepared with (unknown in format 1).
    #[serde(default)]
    pub corpus: Option<CorpusOptions>,
    /// Hashes of the tokenizer and token files (unknown in format 1).
    #[serde(default)]
    pub data: Option<DataIdentity>,
}

/// What a checkpoint holds once read: its metadata and its tensors, by name (`model/<var>`, `adam.m/<var>`,
/// `adam.v/<var>`).
#[derive(Debug)]
pub struct Checkpoint {
    /// The run state.
    pub meta: CheckpointMeta,
    /// The tensors.
    pub tensors: HashMap<String, Tensor>,
}

fn dtype_to_st(dtype: DType) -> Result<safetensors::Dtype> {
    Ok(match dtype {
        DType::F32 => safetensors::Dtype::F32,
        DType::F64 => safetensors::Dtype::F64,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F16 => safetensors::Dtype::F16,
        DType::U32 => safetensors::Dtype::U32,
        DType::U8 => safetensors::Dtype::U8,
        DType::I64 => safetensors::Dtype::I64,
        other => {
            return Err(
                Error::Checkpoint(format!("cannot store tensors of dtype {other:?}")).into(),
            )
        }
    })
}

fn dtype_from_st(dtype: safetensors::Dtype) -> Result<DType> {
    Ok(match dtype {
        safetensors::Dtype::F32 => DType::F32,
        safetensors::Dtype::F64 => DType::F64,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::U32 => DType::U32,
        safetensors::Dtype::U8 => DType::U8,
        safetensors::Dtype::I64 => DType::I64,
        other => {
            return Err(Error::Checkpoint(format!("unsupported tensor dtype {other:?}")).into())
        }
    })
}

/// Raw little-endian bytes of a tensor (copied to the host).
fn tensor_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let t = t.to_device(&Device::Cpu)?.flatten_all()?;
    Ok(match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F64 => t
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::BF16 => t
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::F16 => t
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::U32 => t
            .to_vec1::<u32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::U8 => t.to_vec1::<u8>()?,
        DType::I64 => t
            .to_vec1::<i64>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        other => {
            return Err(
                Error::Checkpoint(format!("cannot store tensors of dtype {other:?}")).into(),
            )
        }
    })
}

/// The checksum of formats 2 and 3: FNV-1a over the run state's JSON, then each tensor's name, dtype, shape and bytes in
/// name order.
struct Checksum(u64);

impl Checksum {
    fn new(meta_json: &str) -> Self {
        let sum = fnv1a_extend(0xcbf2_9ce4_8422_2325, b"candle-structured checkpoint 2");
        Checksum(fnv1a_extend(sum, meta_json.as_bytes()))
    }

    fn tensor(&mut self, name: &str, dtype: safetensors::Dtype, shape: &[usize], bytes: &[u8]) {
        self.0 = fnv1a_extend(self.0, name.as_bytes());
        self.0 = fnv1a_extend(self.0, format!("{dtype:?}{shape:?}").as_bytes());
        self.0 = fnv1a_extend(self.0, bytes);
    }

    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Serialises `tensors` and `meta` into the bytes of a checkpoint file.
pub fn checkpoint_bytes(meta: &CheckpointMeta, tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let meta_json = serde_json::to_string(meta).map_err(|e| Error::Checkpoint(e.to_string()))?;
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().map(|(n, t)| (n, t)).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut data = Vec::with_capacity(sorted.len());
    let mut sum = Checksum::new(&meta_json);
    for (name, t) in &sorted {
        let bytes = tensor_bytes(t)?;
        sum.tensor(name, dtype_to_st(t.dtype())?, t.dims(), &bytes);
        data.push((
            name.to_string(),
            dtype_to_st(t.dtype())?,
            t.dims().to_vec(),
            bytes,
        ));
    }
    let views = data
        .iter()
        .map(|(n, dt, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Checkpoint(format!("tensor {n}: {e}")).into())
        })
        .collect::<Result<Vec<_>>>()?;
    let mut info = HashMap::new();
    info.insert("candle_structured".to_string(), meta_json);
    info.insert(CHECKSUM_ALL.to_string(), sum.hex());
    safetensors::tensor::serialize(views, Some(info))
        .map_err(|e| Error::Checkpoint(format!("cannot serialise: {e}")).into())
}

/// The path where the previous good checkpoint is kept beside `path` (`checkpoint.prev.safetensors`).
pub fn previous_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}.prev.safetensors"))
}

/// Writes a checkpoint atomically: the new file is written beside `path` and flushed; the current checkpoint (if
/// any) is copied to [`previous_path`] (a copy, never a second name of the same file, so that one corruption cannot
/// reach both) and flushed; then the new file is renamed over `path` and the folder flushed. At every instant
/// `path` is either the old complete checkpoint or the new complete one.
pub fn save_checkpoint(
    path: &Path,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    let bytes = checkpoint_bytes(meta, tensors)?;
    if path.exists() {
        let prev = previous_path(path);
        let old = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        write_atomic(&prev, &old)?;
    }
    write_atomic(path, &bytes)
}

/// Reads and verifies a checkpoint (structure, checksum, run state). A truncated or corrupt file gives an
/// [`Error::Checkpoint`] that says so and names the previous checkpoint when there is one.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint> {
    let prev = previous_path(path);
    let hint = if prev.exists() {
        format!(
            "; the previous checkpoint is kept at {} (to resume from it, copy it over {})",
            prev.display(),
            path.display()
        )
    } else {
        String::new()
    };
    let corrupt = |what: String| -> candle_core::Error {
        Error::Checkpoint(format!(
            "{} is truncated or corrupt ({what}){hint}",
            path.display()
        ))
        .into()
    };
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            candle_core::Error::from(Error::Checkpoint(format!(
                "no checkpoint at {}{hint}",
                path.display()
            )))
        } else {
            Error::io(path, e).into()
        }
    })?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let info = header
        .metadata()
        .as_ref()
        .ok_or_else(|| corrupt("no metadata: not a candle-structured checkpoint".into()))?;
    let meta_json = info.get("candle_structured").ok_or_else(|| {
        corrupt("no run state in the metadata: not a candle-structured checkpoint".into())
    })?;
    // Format 2 (a `checksum_all` key) covers the run state; format 1 (`checksum`) the tensors only.
    let (expected, full) = match (info.get(CHECKSUM_ALL), info.get("checksum")) {
        (Some(c), _) => (c.clone(), true),
        (None, Some(c)) => (c.clone(), false),
        (None, None) => return Err(corrupt("no checksum in the metadata".into())),
    };
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut full_sum = Checksum::new(meta_json);
    let mut tensor_sum = 0xcbf2_9ce4_8422_2325u64;
    let mut views = Vec::with_capacity(names.len());
    for name in names {
        let view = st.tensor(&name).map_err(|e| corrupt(e.to_string()))?;
        full_sum.tensor(&name, view.dtype(), view.shape(), view.data());
        tensor_sum = fnv1a_extend(tensor_sum, name.as_bytes());
        tensor_sum = fnv1a_extend(tensor_sum, view.data());
        views.push((name, view));
    }
    let actual = if full {
        full_sum.hex()
    } else {
        format!("{tensor_sum:016x}")
    };
    if actual != expected {
        return Err(corrupt(format!(
            "checksum {actual} differs from the recorded {expected}"
        )));
    }
    let meta: CheckpointMeta =
        serde_json::from_str(meta_json).map_err(|e| corrupt(format!("run state: {e}")))?;
    if full && meta.format > CHECKPOINT_FORMAT {
        return Err(Error::Checkpoint(format!(
            "{} was written by a newer candle-structured (checkpoint format {}); this build reads formats 1 to \
             {CHECKPOINT_FORMAT}",
            path.display(),
            meta.format
        ))
        .into());
    }
    // A format-2+ checksum covers formats 2 and up (newer ones refused above), the format-1 checksum format 1.
    if full != (meta.format >= 2) {
        let checksum = if full { "format-2+" } else { "format-1" };
        return Err(corrupt(format!(
            "run state of format {} under a {checksum} checksum; this build reads formats 1 to \
             {CHECKPOINT_FORMAT}",
            meta.format
        )));
    }
    let mut tensors = HashMap::new();
    for (name, view) in views {
        let t = Tensor::from_raw_buffer(
            view.data(),
            dtype_from_st(view.dtype())?,
            view.shape(),
            device,
        )?;
        tensors.insert(name, t);
    }
    Ok(Checkpoint { meta, tensors })
}

/// Names the fields where two configurations differ (for "checkpoint from another config" errors).
pub fn config_differences(a: &GptConfig, b: &GptConfig) -> String {
    let (Ok(serde_json::Value::Object(ja)), Ok(serde_json::Value::Object(jb))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return "?".into();
    };
    let mut out = Vec::new();
    for (k, va) in &ja {
        let vb = jb.get(k).cloned().unwrap_or(serde_json::Value::Null);
        if *va != vb {
            let show = |v: &serde_json::Value| {
                let s = v.to_string();
                if s.len() > 60 {
                    format!("{}…", s.chars().take(60).collect::<String>())
                } else {
                    s
                }
            };
            out.push(format!(
                "{k}: checkpoint {} vs this run {}",
                show(va),
                show(&vb)
            ));
        }
    }
    out.join("; ")
}

/// The tensors of a training checkpoint: for every trainable variable, its value (`model/<name>`) and its AdamW
/// moments (`adam.m/<name>`, `adam.v/<name>`).
pub fn training_tensors(opt: &AdamW) -> Vec<(String, Tensor)> {
    let (moments, _) = opt.state();
    let mut tensors = Vec::with_capacity(3 * moments.len());
    for ((name, var), (_, m, v)) in opt.params().iter().zip(moments) {
        tensors.push((format!("model/{name}"), var.as_tensor().clone()));
        tensors.push((format!("adam.m/{name}"), m));
        tensors.push((format!("adam.v/{name}"), v));
    }
    tensors
}

/// Restores what [`training_tensors`] saved: the live weights into `varmap` (not the weight average that
/// [`restore_weights`] prefers) and the moments and step count into `opt`.
pub fn restore_training_state(
    ckpt: &Checkpoint,
    cfg: &GptConfig,
    varmap: &VarMap,
    opt: &mut AdamW,
    path: &Path,
) -> Result<()> {
    restore(ckpt, cfg, varmap, path, false)?;
    let t = &ckpt.tensors;
    opt.load_state(
        |name| {
            Some((
                t.get(&format!("adam.m/{name}"))?.clone(),
                t.get(&format!("adam.v/{name}"))?.clone(),
            ))
        },
        ckpt.meta.adam_step,
    )
}

/// The named variables of a `VarMap`, sorted by name.
pub fn named_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().unwrap_or_else(|e| e.into_inner());
    let mut vars: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Loads the weights of a checkpoint into `varmap`'s variables: the run's weight average when it kept one
/// (`ema/<name>`, what it measured at its end; see [`super::WeightAverage`]), else its weights. Errors (and changes
/// nothing) when the checkpoint was written for another configuration or misses a variable.
pub fn restore_weights(
    ckpt: &Checkpoint,
    cfg: &GptConfig,
    varmap: &VarMap,
    path: &Path,
) -> Result<()> {
    restore(ckpt, cfg, varmap, path, true)
}

/// [`restore_weights`], from the weight average when `average` and the checkpoint has one.
fn restore(
    ckpt: &Checkpoint,
    cfg: &GptConfig,
    varmap: &VarMap,
    path: &Path,
    average: bool,
) -> Result<()> {
    if ckpt.meta.config != *cfg {
        return Err(Error::Checkpoint(format!(
            "{} was written for another model configuration ({})",
            path.display(),
            config_differences(&ckpt.meta.config, cfg)
        ))
        .into());
    }
    let vars = named_vars(varmap);
    let mut values = Vec::with_capacity(vars.len());
    for (name, var) in &vars {
        // Checkpoints from before FastFood's renamed diagonals and stored permutations still load.
        let former = || crate::layers::former_name(name).map(|old| format!("model/{old}"));
        let averaged = average
            .then(|| ckpt.tensors.get(&format!("ema/{name}")))
            .flatten();
        let t = averaged.or_else(|| ckpt.tensors.get(&format!("model/{name}")));
        let Some(t) = t.or_else(|| former().and_then(|k| ckpt.tensors.get(&k))) else {
            if crate::layers::is_permutation_table(name) {
                continue;
            }
            return Err(
                Error::Checkpoint(format!("{} has no weights for {name}", path.display())).into(),
            );
        };
        if t.dims() != var.dims() {
            return Err(Error::Checkpoint(format!(
                "{}: {name} has shape {:?}, the model {:?}",
                path.display(),
                t.dims(),
                var.dims()
            ))
            .into());
        }
        values.push((var, t.to_device(var.device())?.to_dtype(var.dtype())?));
    }
    for (var, t) in values {
        var.set(&t)?;
    }
    Ok(())
}
