//! `fusion-host embed` (the executable `fusion-host-embed`): CLIP image and text embeddings from
//! a Hugging Face CLIP checkpoint, on the compute device, written as safetensors — for checking
//! fusion-host's CLIP against Python's. An external command, so that the host links no model code.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _};
use clap::Parser;
use fusion_clip::gpu::GpuClipModel;
use fusion_clip::{
    CheckpointConfig, ClipTokenizer, ImageProcessor, Padding, Tensor, TokenBatch, WeightStore,
};
use fusion_host_commands::{usage, DeviceArg, LogArgs};
use fusion_plugin_api::Compute;
use safetensors::{Dtype, View};

/// CLIP embeddings of images and/or texts from a Hugging Face CLIP checkpoint, on the compute
/// device: writes `image_embeds`, `text_embeds` (L2-normalized), `logits_per_image` when both
/// are given, and the `pixel_values` / `input_ids` / `attention_mask` used.
#[derive(Parser, Debug)]
#[command(name = "fusion-host embed", bin_name = "fusion-host embed", version)]
struct EmbedRequest {
    /// The CLIPModel checkpoint folder (config.json, model.safetensors, tokenizer.json,
    /// preprocessor_config.json).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// PNG or JPEG files.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    images: Vec<PathBuf>,
    /// Texts to encode.
    #[arg(long, value_name = "TEXT", num_args = 1..)]
    texts: Vec<String>,
    /// Ready inputs: `pixel_values` and/or `input_ids` (+ `attention_mask`), as from Python.
    #[arg(long, value_name = "FILE.safetensors")]
    inputs: Option<PathBuf>,
    /// Where to write the outputs.
    #[arg(long, value_name = "FILE.safetensors")]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArg,
    #[command(flatten)]
    log: LogArgs,
}

fn main() -> ExitCode {
    let req = EmbedRequest::parse();
    req.log.init();
    fusion_host_commands::main(|| run(&req))
}

/// A tensor to write.
struct Out {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Out {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn f32_out(t: &Tensor) -> Out {
    Out {
        dtype: Dtype::F32,
        shape: t.shape().to_vec(),
        bytes: t.data().iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn i64_out(values: &[u32], shape: Vec<usize>) -> Out {
    Out {
        dtype: Dtype::I64,
        shape,
        bytes: values
            .iter()
            .flat_map(|v| i64::from(*v).to_le_bytes())
            .collect(),
    }
}

/// Read `pixel_values` and/or `input_ids` + `attention_mask` from a safetensors file.
fn read_inputs(path: &Path) -> anyhow::Result<(Option<Tensor>, Option<TokenBatch>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .with_context(|| format!("{} is not a valid safetensors file", path.display()))?;
    let pixels = match st.tensor("pixel_values") {
        Ok(v) => {
            if v.dtype() != Dtype::F32 || v.shape().len() != 4 {
                bail!(
                    "{}: pixel_values must be F32 [batch, 3, H, W], got {:?} {:?}",
                    path.display(),
                    v.dtype(),
                    v.shape()
                );
            }
            let data = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some(Tensor::new(v.shape().to_vec(), data)?)
        }
        Err(_) => None,
    };
    let ints = |name: &str| -> anyhow::Result<Option<(Vec<u32>, Vec<usize>)>> {
        let Ok(v) = st.tensor(name) else {
            return Ok(None);
        };
        let values: Vec<u32> = match v.dtype() {
            Dtype::I64 => v
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as u32)
                .collect(),
            Dtype::I32 => v
                .data()
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as u32)
                .collect(),
            other => bail!(
                "{}: {name} must be I64 or I32, got {other:?}",
                path.display()
            ),
        };
        if v.shape().len() != 2 {
            bail!(
                "{}: {name} must be [batch, seq], got {:?}",
                path.display(),
                v.shape()
            );
        }
        Ok(Some((values, v.shape().to_vec())))
    };
    let tokens = match (ints("input_ids")?, ints("attention_mask")?) {
        (Some((ids, shape)), mask) => {
            let mask = match mask {
                Some((m, s)) if s == shape => m,
                Some((_, s)) => bail!(
                    "{}: attention_mask {s:?} does not match input_ids {shape:?}",
                    path.display()
                ),
                None => vec![1; ids.len()],
            };
            Some(TokenBatch::new(ids, mask, shape[0], shape[1])?)
        }
        (None, Some(_)) => bail!("{}: attention_mask without input_ids", path.display()),
        (None, None) => None,
    };
    Ok((pixels, tokens))
}

/// Run `fusion-host embed`.
fn run(req: &EmbedRequest) -> anyhow::Result<()> {
    req.device.choice()?;
    let dir = &req.model;
    let config = match CheckpointConfig::from_file(dir.join("config.json"))? {
        CheckpointConfig::Clip(c) => c,
        CheckpointConfig::Vision(_) => {
            return Err(usage(format!(
                "{}: embed needs a full CLIPModel checkpoint (text and vision towers)",
                dir.display()
            )))
        }
    };
    let (mut pixels, mut tokens) = match &req.inputs {
        Some(p) => read_inputs(p)?,
        None => (None, None),
    };
    if !req.images.is_empty() {
        if pixels.is_some() {
            return Err(usage(
                "give images either with --images or as pixel_values in --inputs, not both",
            ));
        }
        let processor = ImageProcessor::from_dir(dir)?;
        let mut data = Vec::new();
        let mut shape = Vec::new();
        for path in &req.images {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let x = processor
                .preprocess_bytes(&bytes)
                .with_context(|| format!("preprocessing {}", path.display()))?;
            shape = x.shape().to_vec();
            data.extend_from_slice(x.data());
        }
        let mut full = vec![req.images.len()];
        full.extend(shape);
        pixels = Some(Tensor::new(full, data)?);
    }
    if !req.texts.is_empty() {
        if tokens.is_some() {
            return Err(usage(
                "give texts either with --texts or as input_ids in --inputs, not both",
            ));
        }
        let tokenizer = ClipTokenizer::from_dir(dir)?;
        let refs: Vec<&str> = req.texts.iter().map(String::as_str).collect();
        tokens = Some(tokenizer.encode_batch(&refs, Padding::MaxLength, 77)?);
    }
    if pixels.is_none() && tokens.is_none() {
        return Err(usage(
            "nothing to embed: give --images, --texts or --inputs",
        ));
    }

    let store = WeightStore::open_dir(dir)?;
    let runtime = req.device.start()?;
    let compute: &dyn Compute = &runtime;
    let model = GpuClipModel::load(compute, &store, &config)?;
    let mut out: HashMap<String, Out> = HashMap::new();
    let image_embeds = pixels
        .as_ref()
        .map(|p| model.encode_images(p))
        .transpose()?;
    let text_embeds = tokens.as_ref().map(|t| model.encode_texts(t)).transpose()?;
    if let (Some(i), Some(t)) = (&image_embeds, &text_embeds) {
        out.insert("logits_per_image".into(), f32_out(&model.logits(i, t)?));
    }
    if let Some(i) = &image_embeds {
        out.insert("image_embeds".into(), f32_out(i));
    }
    if let Some(t) = &text_embeds {
        out.insert("text_embeds".into(), f32_out(t));
    }
    if let Some(p) = &pixels {
        out.insert("pixel_values".into(), f32_out(p));
    }
    if let Some(t) = &tokens {
        out.insert(
            "input_ids".into(),
            i64_out(&t.input_ids, vec![t.batch_size, t.seq_len]),
        );
        out.insert(
            "attention_mask".into(),
            i64_out(&t.attention_mask, vec![t.batch_size, t.seq_len]),
        );
    }
    if let Some(parent) = req.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let name = req
        .out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = req
        .out
        .with_file_name(format!(".{name}.partial-{}", std::process::id()));
    safetensors::serialize_to_file(out.iter().map(|(k, v)| (k.clone(), v)), None, &tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &req.out)
        .with_context(|| format!("renaming into {}", req.out.display()))?;
    tracing::info!(out = %req.out.display(), tensors = out.len(), device = %compute.device_name(), "embeddings written");
    Ok(())
}
