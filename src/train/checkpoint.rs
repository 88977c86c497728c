//! Checkpoints: one safetensors file holding the weights, the optimizer moments and the run state (JSON in the
//! safetensors metadata), with a checksum, written atomically.

use crate::data::{fnv1a_extend, write_atomic, BatchSampler};
use crate::error::Error;
use crate::model::{GptConfig, TrainSpec};
use candle_core::{DType, Device, Result, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Version of the checkpoint layout.
pub const CHECKPOINT_FORMAT: u32 = 1;

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

/// Serialises `tensors` and `meta` into the bytes of a checkpoint file.
pub fn checkpoint_bytes(meta: &CheckpointMeta, tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().map(|(n, t)| (n, t)).collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut data = Vec::with_capacity(sorted.len());
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    for (name, t) in &sorted {
        let bytes = tensor_bytes(t)?;
        sum = fnv1a_extend(sum, name.as_bytes());
        sum = fnv1a_extend(sum, &bytes);
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
    info.insert(
        "candle_structured".to_string(),
        serde_json::to_string(meta).map_err(|e| Error::Checkpoint(e.to_string()))?,
    );
    info.insert("checksum".to_string(), format!("{sum:016x}"));
    safetensors::tensor::serialize(views, Some(info))
        .map_err(|e| Error::Checkpoint(format!("cannot serialise: {e}")).into())
}

/// The path where the previous good checkpoint is kept beside `path` (`checkpoint.prev.safetensors`).
pub fn previous_path(path: &Path) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}.prev.safetensors"))
}

/// Writes a checkpoint atomically: the new file is written beside `path` and flushed, the current checkpoint (if
/// any) is kept as [`previous_path`], then the new file is renamed over `path`. At every instant `path` is either
/// the old complete checkpoint or the new complete one.
pub fn save_checkpoint(
    path: &Path,
    meta: &CheckpointMeta,
    tensors: &[(String, Tensor)],
) -> Result<()> {
    let bytes = checkpoint_bytes(meta, tensors)?;
    if path.exists() {
        let prev = previous_path(path);
        let _ = std::fs::remove_file(&prev);
        std::fs::hard_link(path, &prev)
            .or_else(|_| std::fs::copy(path, &prev).map(|_| ()))
            .map_err(|e| Error::io(&prev, e))?;
    }
    write_atomic(path, &bytes)
}

/// Reads and verifies a checkpoint (structure, metadata, checksum). A truncated or corrupt file gives an
/// [`Error::Checkpoint`] that says so and points at the previous checkpoint when there is one.
pub fn load_checkpoint(path: &Path, device: &Device) -> Result<Checkpoint> {
    let prev = previous_path(path);
    let hint = if prev.exists() {
        format!("; the previous checkpoint is kept at {}", prev.display())
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
                "no checkpoint at {}",
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
    let meta: CheckpointMeta =
        serde_json::from_str(meta_json).map_err(|e| corrupt(format!("run state: {e}")))?;
    if meta.format != CHECKPOINT_FORMAT {
        return Err(Error::Checkpoint(format!(
            "{} has format {}, this build reads format {CHECKPOINT_FORMAT}",
            path.display(),
            meta.format
        ))
        .into());
    }
    let expected = info.get("checksum").cloned().unwrap_or_default();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let mut sum = 0xcbf2_9ce4_8422_2325u64;
    let mut tensors = HashMap::new();
    for name in names {
        let view = st.tensor(&name).map_err(|e| corrupt(e.to_string()))?;
        sum = fnv1a_extend(sum, name.as_bytes());
        sum = fnv1a_extend(sum, view.data());
        let t = Tensor::from_raw_buffer(
            view.data(),
            dtype_from_st(view.dtype())?,
            view.shape(),
            device,
        )?;
        tensors.insert(name, t);
    }
    if format!("{sum:016x}") != expected {
        return Err(corrupt(format!(
            "checksum {sum:016x} differs from the recorded {expected}"
        )));
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
