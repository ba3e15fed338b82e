//! The op API both towers are written over, once: layer norm, nn.Linear with fused epilogues,
//! attention over a fused `[rows, 3D]` q/k/v projection, the patch and token embeddings and row
//! gathers. Two implementations:
//!
//! - [`Wgsl`]: the kernel library's dense operations ([`fusion_kernels::nn`]) through the
//!   host's [`Compute`] handle; tensors ([`DeviceTensor`]s) stay on the device. Every matrix
//!   product is [`ops::gemm_epilogue`] (the device's tuned kernel) with the bias, activation
//!   and residual fused into its stores: one launch per nn.Linear.
//! - [`Native`](crate::gpu::native::Native): host memory, the `gemm` crate on every core for
//!   the matrix products, rayon for the row ops. For adapters that *are* the CPU (lavapipe,
//!   llvmpipe, WARP): there WGSL compiled for a software rasterizer runs at a few percent of
//!   a CPU GEMM (BENCHMARKS.md, "CLIP vision tower throughput").
//!
//! [`BackendChoice`] picks one per compute handle: `FUSION_CLIP_BACKEND=wgsl|native|auto`, else
//! native on an adapter whose device type is [`DeviceType::Cpu`] (or, from a host that does not
//! report the type, whose name says it is a software rasterizer), WGSL anywhere else.
//!
//! The plain f32 CPU model of the `oracle` feature is the test oracle of both.

use fusion_kernels::nn::{
    self as ops, Gemm, GemmEpilogue, Matmul, Operand, PatchGeometry, RowLayout, SoftmaxMask,
};
use std::cell::Cell;

use fusion_plugin_api::{Compute, DType, DeviceTensor, DeviceType};

pub use crate::arch::AttentionShape;
use crate::arch::{LinearParams, NormParams};
use crate::config::Activation;
use crate::error::{ClipError, Result};
use crate::gpu::native::Native;
use crate::weights::WeightStore;

/// What runs after the product of a [`Backend::linear`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Epilogue {
    /// `out = x W^T + b`.
    None,
    /// `out = act(x W^T + b)`.
    Activation(Activation),
    /// `out += x W^T + b`: the residual connection, `out` holding the residual stream.
    Residual,
}

/// nn.Linear's weights on a backend.
pub struct LinearW<B: Backend> {
    /// `[out_dim, in_dim]`.
    pub weight: B::Buf,
    /// `[out_dim]`.
    pub bias: Option<B::Buf>,
    /// Input width.
    pub in_dim: usize,
    /// Output width.
    pub out_dim: usize,
}

/// nn.LayerNorm's weights on a backend.
pub struct NormW<B: Backend> {
    /// Scale, `[dim]`.
    pub weight: B::Buf,
    /// Shift, `[dim]`.
    pub bias: B::Buf,
    /// Normalized width.
    pub dim: usize,
    /// Epsilon.
    pub eps: f64,
}

/// The vision embeddings' weights on a backend.
pub struct PatchW<B: Backend> {
    /// The conv weight `[D, C, P, P]`, used as `[D, C * P * P]`.
    pub weight: B::Buf,
    /// The class token, `[D]`.
    pub class: B::Buf,
    /// Position embeddings, `[G * G + 1, D]`.
    pub position: B::Buf,
    /// `D`.
    pub dim: usize,
}

/// The dense ops a CLIP tower needs, on one kind of memory. See the module docs.
///
/// Every op checks that the tensors it is given hold what it will touch and fails with an
/// error naming the op and the shapes otherwise.
pub trait Backend: Sized {
    /// An f32 tensor.
    type Buf;
    /// A u32 key-padding mask `[batch, seq]` (zero at padding).
    type Mask;

    /// A short name for logs and reports (`"wgsl"`, `"native"`).
    fn label(&self) -> &'static str;
    /// A zeroed tensor.
    fn zeros(&self, shape: &[usize]) -> Result<Self::Buf>;
    /// A tensor holding `data`; `name` (a checkpoint name) appears in errors.
    fn upload(&self, name: &str, shape: &[usize], data: &[f32]) -> Result<Self::Buf>;
    /// A key-padding mask holding `data`.
    fn upload_mask(&self, shape: &[usize], data: &[u32]) -> Result<Self::Mask>;
    /// The values of `x`, on the host.
    fn read(&self, x: &Self::Buf) -> Result<Vec<f32>>;
    /// How many items of `per_item` f32 activations one pass may hold.
    fn max_items(&self, op: &str, per_item: u64, what: &str) -> Result<usize>;

    /// `y = layer_norm(x) * weight + bias` over the rows `layout` describes.
    fn layer_norm(
        &self,
        x: &Self::Buf,
        n: &NormW<Self>,
        y: &mut Self::Buf,
        layout: RowLayout,
    ) -> Result<()>;
    /// nn.Linear on `rows` dense rows, then `epilogue`.
    fn linear(
        &self,
        x: &Self::Buf,
        l: &LinearW<Self>,
        out: &mut Self::Buf,
        rows: usize,
        epilogue: Epilogue,
    ) -> Result<()>;
    /// The scratch tensor [`Backend::attention`] needs for `a` (may be empty).
    fn attention_scratch(&self, a: &AttentionShape) -> Result<Self::Buf>;
    /// Multi-head attention: per sequence and head, `softmax(scale q k^T + mask) v`.
    fn attention(
        &self,
        qkv: &Self::Buf,
        scratch: &mut Self::Buf,
        context: &mut Self::Buf,
        a: &AttentionShape,
        key_padding: Option<&Self::Mask>,
    ) -> Result<()>;
    /// `pixels [B, C, S, S]` (host) to `out [B, G * G + 1, D]`: class token then patch
    /// embeddings, plus position embeddings.
    fn patch_embed(
        &self,
        pixels: &[f32],
        w: &PatchW<Self>,
        out: &mut Self::Buf,
        g: PatchGeometry,
    ) -> Result<()>;
    /// `out[r] = table[ids[r]] + position[r % seq]` for `rows` token ids (host).
    fn token_embed(
        &self,
        ids: &[u32],
        table: &Self::Buf,
        position: &Self::Buf,
        out: &mut Self::Buf,
        seq: usize,
    ) -> Result<()>;
    /// `out[i] = x[idx[i]]` for rows of width `dim`.
    fn gather_rows(
        &self,
        x: &Self::Buf,
        idx: &[u32],
        out: &mut Self::Buf,
        dim: usize,
    ) -> Result<()>;
}

/// Where a tower built straight on a backend (rather than uploaded from a CPU model) takes its
/// weights: each by checkpoint name with the shape its config implies. Towers ask in the order
/// the CPU loaders read, so a missing or mis-shaped tensor is the same error.
pub(crate) trait WeightSource<B: Backend> {
    /// The checkpoint the weights come from (for its buffers and its check that every tensor
    /// was used).
    fn store(&self) -> &WeightStore;
    /// Weight `name` of `shape`.
    fn get(&self, name: &str, shape: &[usize]) -> Result<B::Buf>;
    /// Equal-sized `parts` stacked along their first dimension into one tensor of `shape`;
    /// `name` names it in errors.
    fn stack(&self, name: &str, parts: Vec<B::Buf>, shape: &[usize]) -> Result<B::Buf>;
}

impl<B: Backend> LinearW<B> {
    /// nn.Linear `in_dim -> out_dim` from its parameters.
    pub fn new(p: LinearParams<B::Buf>, in_dim: usize, out_dim: usize) -> Self {
        Self {
            weight: p.weight,
            bias: Some(p.bias),
            in_dim,
            out_dim,
        }
    }
}

impl<B: Backend> NormW<B> {
    /// nn.LayerNorm over `dim` from its parameters.
    pub fn new(p: NormParams<B::Buf>, dim: usize, eps: f64) -> Self {
        Self {
            weight: p.weight,
            bias: p.bias,
            dim,
            eps,
        }
    }
}

/// A [`WeightStore`] for the [`Native`] backend: every tensor read to host memory as f32.
pub(crate) struct OnHost<'s>(pub(crate) &'s WeightStore);

impl WeightSource<Native> for OnHost<'_> {
    fn store(&self) -> &WeightStore {
        self.0
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.0.get(name, shape)?.into_data())
    }

    fn stack(&self, name: &str, parts: Vec<Vec<f32>>, shape: &[usize]) -> Result<Vec<f32>> {
        Native.upload(name, shape, &parts.concat())
    }
}

/// Which implementation of the op API a model uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendChoice {
    /// `FUSION_CLIP_BACKEND` when set, else by the adapter's device type (module docs).
    #[default]
    Auto,
    /// The WGSL kernels, whatever the adapter.
    Wgsl,
    /// Native CPU code, whatever the adapter.
    Native,
}

/// A resolved [`BackendChoice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// [`Wgsl`].
    Wgsl,
    /// [`Native`](crate::gpu::native::Native).
    Native,
}

impl BackendChoice {
    /// Parses `auto`, `wgsl` (or `gpu`), `native` (or `cpu`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Self::Auto),
            "wgsl" | "gpu" => Ok(Self::Wgsl),
            "native" | "cpu" => Ok(Self::Native),
            other => Err(ClipError::input(
                "FUSION_CLIP_BACKEND",
                format!("`{other}` is not one of auto, wgsl, native"),
            )),
        }
    }

    /// The implementation for models on `c`.
    pub fn resolve(self, c: &dyn Compute) -> Result<BackendKind> {
        let choice = match self {
            Self::Auto => match std::env::var("FUSION_CLIP_BACKEND") {
                Ok(v) => Self::parse(&v)?,
                Err(_) => Self::Auto,
            },
            other => other,
        };
        Ok(match choice {
            Self::Wgsl => BackendKind::Wgsl,
            Self::Native => BackendKind::Native,
            Self::Auto => {
                // A device that could not be created is an error naming why, not a silent
                // fall-back to the CPU path (the run asked for that device).
                c.checked_limits()
                    .map_err(crate::ClipError::compute("choosing the CLIP backend"))?;
                let cpu = match c.device_type() {
                    DeviceType::Cpu => true,
                    DeviceType::Unknown => fusion_kernels::is_software_adapter(&c.device_name()),
                    _ => false,
                };
                if cpu {
                    BackendKind::Native
                } else {
                    BackendKind::Wgsl
                }
            }
        })
    }
}

/// A tower written over the op API, loadable on any backend: the family of `On<B>` types.
pub(crate) trait Tower {
    /// The tower on backend `B`.
    type On<B: Backend>;
    /// Its configuration.
    type Config;
    /// Loads the tower's weights from `src`, strictly (missing, mis-shaped: an error naming
    /// the tensor; the caller checks that none is left unused).
    fn load<B: Backend>(src: &impl WeightSource<B>, cfg: &Self::Config) -> Result<Self::On<B>>;
}

/// A tower on the backend a [`BackendChoice`] resolved to.
pub(crate) enum Engine<'c, T: Tower> {
    /// On the WGSL kernels.
    Wgsl(Wgsl<'c>, T::On<Wgsl<'c>>),
    /// In host memory.
    Native(Native, T::On<Native>),
}

impl<'c, T: Tower> Engine<'c, T> {
    /// Loads the tower from `store` on the backend `choice` names for `c`; also returns how
    /// many weights were taken where the store's model holds them on the device (WGSL only).
    pub(crate) fn load(
        c: &'c dyn Compute,
        store: &WeightStore,
        cfg: &T::Config,
        choice: BackendChoice,
    ) -> Result<(Self, usize)> {
        Ok(match choice.resolve(c)? {
            BackendKind::Wgsl => {
                let b = Wgsl { c };
                let src = StoreOnDevice::new(b, store);
                let tower = T::load(&src, cfg)?;
                (Engine::Wgsl(b, tower), src.on_device())
            }
            BackendKind::Native => (Engine::Native(Native, T::load(&OnHost(store), cfg)?), 0),
        })
    }
}

/// Runs `$body` with `$b` the backend and `$t` the tower of an [`Engine`], whichever holds it.
macro_rules! on_engine {
    ($engine:expr, |$b:ident, $t:ident| $body:expr) => {
        match $engine {
            $crate::gpu::backend::Engine::Wgsl($b, $t) => $body,
            $crate::gpu::backend::Engine::Native($b, $t) => $body,
        }
    };
}
pub(crate) use on_engine;

// ---------------------------------------------------------------------------------------------
// WGSL

/// The weights of a [`WeightStore`] for the [`Wgsl`] backend, each taken where it lives: on the
/// device when the store's model hands it out there ([`fusion_plugin_api::Model::device_tensor`],
/// a merge computed on the device; f16 and bf16 are converted to f32 there), else read to host
/// memory as f32 and uploaded.
pub(crate) struct StoreOnDevice<'s, 'c> {
    b: Wgsl<'c>,
    store: &'s WeightStore,
    on_device: Cell<usize>,
}

impl<'s, 'c> StoreOnDevice<'s, 'c> {
    pub(crate) fn new(b: Wgsl<'c>, store: &'s WeightStore) -> Self {
        Self {
            b,
            store,
            on_device: Cell::new(0),
        }
    }

    /// How many weights were taken on the device so far.
    pub(crate) fn on_device(&self) -> usize {
        self.on_device.get()
    }

    /// Weight `name` as the model's device tensor, when it has one.
    fn take_on_device(&self, name: &str, shape: &[usize]) -> Result<Option<DeviceTensor<'c>>> {
        let Some(model) = self.store.model_tensor(name, shape)? else {
            return Ok(None);
        };
        let c = self.b.c;
        ops::check_binding(c, &format!("uploading weight `{name}`"), shape, 4)?;
        let state_dict = |cause| ClipError::StateDict {
            name: name.to_string(),
            model: self.store.checkpoint().to_path_buf(),
            cause,
        };
        let Some(raw) = model.device_tensor(name).map_err(state_dict)? else {
            return Ok(None);
        };
        let t = DeviceTensor::adopt(c, raw);
        let (dtype, got) = c.describe(raw).map_err(state_dict)?;
        if got.iter().product::<usize>() != shape.iter().product::<usize>() {
            return Err(state_dict(fusion_plugin_api::Error::model(format!(
                "the tensor handed out on the device has shape {got:?}, its info says {shape:?}"
            ))));
        }
        let t = match dtype {
            DType::F32 => t,
            DType::F16 | DType::BF16 => {
                let f32 = fusion_kernels::convert(c, t.id(), DType::F32).map_err(
                    ClipError::compute(format!("converting `{name}` from {dtype} to f32")),
                )?;
                DeviceTensor::adopt(c, f32)
            }
            other => {
                return Err(state_dict(fusion_plugin_api::Error::model(format!(
                    "the tensor handed out on the device is {other}, not f32, f16 or bf16"
                ))))
            }
        };
        self.store.mark_used(name);
        Ok(Some(t))
    }
}

impl<'c> WeightSource<Wgsl<'c>> for StoreOnDevice<'_, 'c> {
    fn store(&self) -> &WeightStore {
        self.store
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<DeviceTensor<'c>> {
        if let Some(t) = self.take_on_device(name, shape)? {
            self.on_device.set(self.on_device.get() + 1);
            return Ok(t);
        }
        let t = self.store.get(name, shape)?;
        self.b.upload(name, shape, t.data())
    }

    fn stack(
        &self,
        name: &str,
        parts: Vec<DeviceTensor<'c>>,
        shape: &[usize],
    ) -> Result<DeviceTensor<'c>> {
        let c = self.b.c;
        ops::check_binding(c, &format!("stacking weight `{name}`"), shape, 4)?;
        let out = ops::zeros(c, shape)?;
        let each = shape.iter().product::<usize>() / parts.len().max(1);
        for (i, part) in parts.iter().enumerate() {
            ops::copy_into(c, part.id(), out.id(), i * each, each)?;
        }
        Ok(out)
    }
}

/// The WGSL kernels through a compute handle.
#[derive(Clone, Copy)]
pub struct Wgsl<'c> {
    /// The handle the tensors live on.
    pub c: &'c dyn Compute,
}

impl<'c> Backend for Wgsl<'c> {
    type Buf = DeviceTensor<'c>;
    type Mask = DeviceTensor<'c>;

    fn label(&self) -> &'static str {
        "wgsl"
    }

    fn zeros(&self, shape: &[usize]) -> Result<Self::Buf> {
        Ok(ops::zeros(self.c, shape)?)
    }

    fn upload(&self, name: &str, shape: &[usize], data: &[f32]) -> Result<Self::Buf> {
        ops::check_binding(self.c, &format!("uploading weight `{name}`"), shape, 4)?;
        Ok(ops::from_f32(self.c, shape, data)?)
    }

    fn upload_mask(&self, shape: &[usize], data: &[u32]) -> Result<Self::Mask> {
        Ok(ops::from_u32(self.c, shape, data)?)
    }

    fn read(&self, x: &Self::Buf) -> Result<Vec<f32>> {
        Ok(ops::read_f32(self.c, x.id())?)
    }

    fn max_items(&self, op: &str, per_item: u64, what: &str) -> Result<usize> {
        let limits = self.c.checked_limits().map_err(ClipError::compute(op))?;
        let by_binding = limits.max_storage_binding_size / (4 * per_item.max(1));
        let by_index = u64::from(u32::MAX) / per_item.max(1);
        let n = by_binding.min(by_index);
        if n == 0 {
            return Err(ClipError::DeviceLimit {
                op: op.to_string(),
                message: format!(
                    "one {what} needs activations of {} bytes, more than the device's max storage binding size of {} bytes",
                    4 * per_item,
                    limits.max_storage_binding_size
                ),
            });
        }
        Ok(n as usize)
    }

    fn layer_norm(
        &self,
        x: &Self::Buf,
        n: &NormW<Self>,
        y: &mut Self::Buf,
        layout: RowLayout,
    ) -> Result<()> {
        Ok(ops::layer_norm(
            self.c,
            x.id(),
            n.weight.id(),
            n.bias.id(),
            y.id(),
            layout,
            n.eps,
        )?)
    }

    fn linear(
        &self,
        x: &Self::Buf,
        l: &LinearW<Self>,
        out: &mut Self::Buf,
        rows: usize,
        epilogue: Epilogue,
    ) -> Result<()> {
        let bias = l.bias.as_ref().map(DeviceTensor::id);
        let epi = match epilogue {
            Epilogue::None => GemmEpilogue::linear(bias, None),
            Epilogue::Activation(act) => GemmEpilogue::linear(bias, Some(act.into())),
            // `out` holds the residual stream: the product is added to it in place.
            Epilogue::Residual => GemmEpilogue {
                residual: Some(out.id()),
                ..GemmEpilogue::linear(bias, None)
            },
        };
        let g = Matmul::linear(rows, l.in_dim, l.out_dim).gemm();
        ops::gemm_epilogue(self.c, x.id(), l.weight.id(), out.id(), &g, &epi)?;
        Ok(())
    }

    fn attention_scratch(&self, a: &AttentionShape) -> Result<Self::Buf> {
        Ok(ops::zeros(self.c, &[a.batch, a.heads, a.seq, a.seq])?)
    }

    fn attention(
        &self,
        qkv: &Self::Buf,
        scratch: &mut Self::Buf,
        context: &mut Self::Buf,
        a: &AttentionShape,
        key_padding: Option<&Self::Mask>,
    ) -> Result<()> {
        let AttentionShape {
            batch,
            seq,
            heads: h,
            head_dim: hd,
            scale,
            causal,
        } = *a;
        let d = a.hidden();
        // Batch z0 = sequence, z1 = head: Q_z = qkv[z0 * seq.., z1 * hd..], K_z the same at
        // column D, V_z at 2D; scores_z = scratch[z0, z1]; context_z = context[z0 * seq.., z1 * hd..].
        let qk = Gemm {
            batch0: batch,
            batch1: h,
            alpha: scale,
            a: Operand::batched(0, 3 * d, seq * 3 * d, hd),
            b: Operand::batched(d, 3 * d, seq * 3 * d, hd),
            c: Operand::batched(0, seq, h * seq * seq, seq * seq),
            ..Gemm::dense(seq, seq, hd, false, true)
        };
        let pv = Gemm {
            batch0: batch,
            batch1: h,
            a: Operand::batched(0, seq, h * seq * seq, seq * seq),
            b: Operand::batched(2 * d, 3 * d, seq * 3 * d, hd),
            c: Operand::batched(0, d, seq * d, hd),
            ..Gemm::dense(seq, hd, seq, false, false)
        };
        let mask = SoftmaxMask {
            causal,
            key_mask: key_padding.map(DeviceTensor::id),
        };
        let c = self.c;
        ops::gemm(c, qkv.id(), qkv.id(), scratch.id(), &qk)?;
        ops::softmax_rows(c, scratch.id(), batch * h * seq, seq, seq, h, mask)?;
        ops::gemm(c, scratch.id(), qkv.id(), context.id(), &pv)?;
        Ok(())
    }

    fn patch_embed(
        &self,
        pixels: &[f32],
        w: &PatchW<Self>,
        out: &mut Self::Buf,
        g: PatchGeometry,
    ) -> Result<()> {
        let c = self.c;
        let (d, grid2) = (w.dim, g.grid() * g.grid());
        let seq = grid2 + 1;
        let pixels = ops::from_f32(c, &[g.batch, g.channels, g.image, g.image], pixels)?;
        let patches = ops::zeros(c, &[g.patches(), g.patch_len()])?;
        ops::im2col(c, pixels.id(), patches.id(), g)?;
        drop(pixels);
        // The patch embeddings go straight into rows 1.. of each image's block; class_position
        // then fills row 0 and adds the position embeddings.
        let conv = Gemm {
            batch0: g.batch,
            a: Operand::batched(0, g.patch_len(), grid2 * g.patch_len(), 0),
            c: Operand::batched(d, d, seq * d, 0),
            ..Gemm::dense(grid2, d, g.patch_len(), false, true)
        };
        ops::gemm(c, patches.id(), w.weight.id(), out.id(), &conv)?;
        drop(patches);
        ops::class_position(c, out.id(), w.class.id(), w.position.id(), g.batch, seq, d)?;
        Ok(())
    }

    fn token_embed(
        &self,
        ids: &[u32],
        table: &Self::Buf,
        position: &Self::Buf,
        out: &mut Self::Buf,
        seq: usize,
    ) -> Result<()> {
        let ids_t = ops::from_u32(self.c, &[ids.len()], ids)?;
        ops::token_position_embed(
            self.c,
            table.id(),
            ids_t.id(),
            position.id(),
            out.id(),
            ids.len(),
            seq,
        )?;
        Ok(())
    }

    fn gather_rows(
        &self,
        x: &Self::Buf,
        idx: &[u32],
        out: &mut Self::Buf,
        _dim: usize,
    ) -> Result<()> {
        let idx_t = ops::from_u32(self.c, &[idx.len()], idx)?;
        ops::gather_rows(self.c, x.id(), idx_t.id(), out.id(), idx.len())?;
        Ok(())
    }
}
