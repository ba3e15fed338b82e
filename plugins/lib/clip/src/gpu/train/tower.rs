//! The vision tower's forward pass with a tape of device activations, and its backward pass
//! to the gradient of every weight: the structure of [`crate::autograd`]'s
//! `VisionParams::forward` / `backward`, launched as WGSL kernels.
//!
//! Linear layers are products ([`nn::gemm`]) with the bias added as a rank-1 product
//! `1 bᵀ` (a column of ones times the bias row), so the forward needs no kernel of the
//! inference path. The same column of ones sums rows where a gradient is a column sum over a
//! strided view (the q/k/v biases inside the packed `qkv` gradient, the class and position
//! embeddings), and copies strided rows (the class tokens) as a product with `k = 1`.

use fusion_kernels::nn::{self, AttentionShape, Gemm, GemmKernel, LayerNormGrads, Operand};
use fusion_plugin_api::{Compute, DeviceTensor, GpuTensor};

use crate::arch::{EncoderDims, LayerParams, LinearParams, NormParams, VisionParams};
use crate::config::Activation;
use crate::error::{ClipError, Result};

/// A vision tower's weights (or their gradients) as f32 tensors on the device, in the layout
/// of the parameter table ([`crate::arch`]).
pub type DeviceParams<'c> = VisionParams<DeviceTensor<'c>>;

/// Uploads host weights (a tower, a task vector or a gradient) to the device.
pub fn upload_params<'c>(c: &'c dyn Compute, host: &VisionParams) -> Result<DeviceParams<'c>> {
    let values = host.params();
    let mut i = 0;
    VisionParams::build(&host.config, |name, shape| {
        let v = values[i];
        i += 1;
        let want: usize = shape.iter().product();
        if v.len() != want {
            return Err(ClipError::input(
                "upload_params",
                format!(
                    "`{name}` has {} values, shape {shape:?} needs {want}",
                    v.len()
                ),
            ));
        }
        Ok(nn::from_f32(c, shape, v)?)
    })
}

/// Reads device weights (or gradients) back to the host.
pub fn download_params(c: &dyn Compute, dev: &DeviceParams<'_>) -> Result<VisionParams> {
    let tensors = dev.params();
    let mut i = 0;
    VisionParams::build(&dev.config, |_, _| {
        let t = tensors[i];
        i += 1;
        Ok(nn::read_f32(c, t.id())?)
    })
}

/// A zeroed tensor shaped like every parameter (the gradient's storage).
pub(super) fn zeros_like<'c>(c: &'c dyn Compute, p: &DeviceParams<'_>) -> Result<DeviceParams<'c>> {
    VisionParams::build(&p.config, |_, shape| Ok(nn::zeros(c, shape)?))
}

/// The products and row helpers of one pass: the compute handle, the product kernel chosen
/// for it once, and a column of ones.
pub(super) struct Ops<'c> {
    pub(super) c: &'c dyn Compute,
    kernel: GemmKernel,
    ones: DeviceTensor<'c>,
    ones_len: usize,
}

impl<'c> Ops<'c> {
    /// Ops for passes of at most `rows` rows.
    pub(super) fn new(c: &'c dyn Compute, rows: usize) -> Result<Self> {
        let n = rows.max(1);
        Ok(Self {
            c,
            kernel: nn::gemm_kernel(c)?,
            ones: nn::from_f32(c, &[n], &vec![1.0; n])?,
            ones_len: n,
        })
    }

    pub(super) fn zeros(&self, shape: &[usize]) -> Result<DeviceTensor<'c>> {
        Ok(nn::zeros(self.c, shape)?)
    }

    pub(super) fn gemm(&self, a: GpuTensor, b: GpuTensor, out: GpuTensor, g: &Gemm) -> Result<()> {
        Ok(nn::gemm_with(self.kernel, self.c, a, b, out, g)?)
    }

    fn ones(&self, n: usize) -> Result<GpuTensor> {
        if n > self.ones_len {
            return Err(ClipError::input(
                "gpu::train",
                format!("{n} rows, the pass was set up for {}", self.ones_len),
            ));
        }
        Ok(self.ones.id())
    }

    /// `y[rows, out] = x[rows, in] Wᵀ (+ 1 bᵀ)`, `W: [out, in]`.
    pub(super) fn linear(
        &self,
        x: GpuTensor,
        w: GpuTensor,
        b: Option<GpuTensor>,
        y: GpuTensor,
        (rows, in_dim, out_dim): (usize, usize, usize),
    ) -> Result<()> {
        self.gemm(x, w, y, &Gemm::dense(rows, out_dim, in_dim, false, true))?;
        if let Some(b) = b {
            self.add_bias(b, y, rows, out_dim)?;
        }
        Ok(())
    }

    /// `y[rows, cols] += 1 bᵀ`: the bias broadcast over rows as a rank-1 product.
    fn add_bias(&self, b: GpuTensor, y: GpuTensor, rows: usize, cols: usize) -> Result<()> {
        let g = Gemm {
            accumulate: true,
            a: Operand::rows(1),
            ..Gemm::dense(rows, cols, 1, false, false)
        };
        self.gemm(self.ones(rows)?, b, y, &g)
    }

    /// The backward pass of [`Ops::linear`]: `dW = dyᵀ x` and `db = Σ_rows dy` into `grads`,
    /// and `dx = dy W` into a new tensor.
    pub(super) fn linear_backward(
        &self,
        x: GpuTensor,
        w: GpuTensor,
        dy: GpuTensor,
        grads: &LinearParams<DeviceTensor<'_>>,
        (rows, in_dim, out_dim): (usize, usize, usize),
    ) -> Result<DeviceTensor<'c>> {
        self.gemm(
            dy,
            x,
            grads.weight.id(),
            &Gemm::dense(out_dim, in_dim, rows, true, false),
        )?;
        nn::bias_grad(self.c, dy, grads.bias.id(), rows, out_dim, false)?;
        let dx = self.zeros(&[rows, in_dim])?;
        self.gemm(
            dy,
            w,
            dx.id(),
            &Gemm::dense(rows, in_dim, out_dim, false, false),
        )?;
        Ok(dx)
    }

    /// `out[1, cols] = Σ_{r < rows} src[offset + r·ld .. + cols]`: a column sum over a strided
    /// view, as the product `1ᵀ src`.
    fn sum_rows(
        &self,
        src: GpuTensor,
        src_view: Operand,
        out: GpuTensor,
        rows: usize,
        cols: usize,
    ) -> Result<()> {
        let g = Gemm {
            a: Operand::rows(rows),
            b: src_view,
            ..Gemm::dense(1, cols, rows, false, false)
        };
        self.gemm(self.ones(rows)?, src, out, &g)
    }

    /// Copies `count` rows of `cols` from `src` (row `r` at `src_view.offset + r·src_view.stride0`)
    /// to `dst` (row `r` at `dst_view.offset + r·dst_view.stride0`): a product with `k = 1`.
    fn copy_rows(
        &self,
        src: GpuTensor,
        src_view: Operand,
        dst: GpuTensor,
        dst_view: Operand,
        count: usize,
        cols: usize,
    ) -> Result<()> {
        let g = Gemm {
            batch0: count,
            a: Operand::rows(1),
            b: src_view,
            c: dst_view,
            ..Gemm::dense(1, cols, 1, false, false)
        };
        self.gemm(self.ones(1)?, src, dst, &g)
    }

    /// Dense layer norm.
    fn layer_norm(
        &self,
        x: GpuTensor,
        p: &NormParams<DeviceTensor<'_>>,
        y: GpuTensor,
        rows: usize,
        cols: usize,
        eps: f64,
    ) -> Result<()> {
        Ok(nn::layer_norm(
            self.c,
            x,
            p.weight.id(),
            p.bias.id(),
            y,
            nn::RowLayout::dense(rows, cols),
            eps,
        )?)
    }
}

/// What the forward pass of one encoder layer keeps for the backward pass (as
/// `autograd`'s layer tape; `act(f)` is recomputed).
struct LayerTape<'c> {
    /// The layer's input `[rows, D]`.
    x: DeviceTensor<'c>,
    h1: DeviceTensor<'c>,
    /// Packed `q | k | v`, `[rows, 3D]`.
    qkv: DeviceTensor<'c>,
    /// `[batch, heads, seq, seq]`.
    probs: DeviceTensor<'c>,
    ctx: DeviceTensor<'c>,
    x_mid: DeviceTensor<'c>,
    h2: DeviceTensor<'c>,
    /// `fc1`'s output before the activation, `[rows, I]`.
    f: DeviceTensor<'c>,
}

/// The activations [`forward`] keeps on the device for [`backward`].
pub(super) struct DeviceTape<'c> {
    batch: usize,
    patches: DeviceTensor<'c>,
    embeddings: DeviceTensor<'c>,
    layers: Vec<LayerTape<'c>>,
    class_tokens: DeviceTensor<'c>,
}

/// Sizes of one pass.
struct Sizes {
    /// Positions per image (patches + class token).
    seq: usize,
    rows: usize,
    d: usize,
    inter: usize,
    eps: f64,
    act: Activation,
    attention: AttentionShape,
    geometry: nn::PatchGeometry,
}

fn sizes(p: &DeviceParams<'_>, batch: usize) -> Sizes {
    let cfg = &p.config;
    let dims = EncoderDims::from(cfg);
    let seq = cfg.num_positions();
    let a = dims.attention(batch, seq, false);
    Sizes {
        seq,
        rows: batch * seq,
        d: dims.hidden_size,
        inter: dims.intermediate_size,
        eps: dims.layer_norm_eps,
        act: dims.activation,
        attention: AttentionShape {
            batch,
            seq,
            heads: a.heads,
            head_dim: a.head_dim,
            scale: a.scale,
        },
        geometry: nn::PatchGeometry {
            batch,
            channels: cfg.num_channels,
            image: cfg.image_size,
            patch: cfg.patch_size,
        },
    }
}

fn kernel_activation(act: Activation) -> nn::Activation {
    match act {
        Activation::QuickGelu => nn::Activation::QuickGelu,
        Activation::Gelu => nn::Activation::Gelu,
    }
}

/// The operands of one attention call over the packed `qkv` (z0 = sequence, z1 = head):
/// part `i` of `qkv` (0 = q, 1 = k, 2 = v), the probabilities and the context.
fn attention_views(s: &Sizes) -> (impl Fn(usize) -> Operand, Operand, Operand) {
    let AttentionShape {
        seq,
        heads,
        head_dim: hd,
        ..
    } = s.attention;
    let d = s.d;
    let part = move |i: usize| Operand::batched(i * d, 3 * d, seq * 3 * d, hd);
    let probs = Operand::batched(0, seq, heads * seq * seq, seq * seq);
    let ctx = Operand::batched(0, d, seq * d, hd);
    (part, probs, ctx)
}

/// The pooled output (`post_layernorm` of the class tokens, `[batch, D]`, on the device) of
/// `pixels: [batch, C, S, S]`, and the tape for [`backward`].
pub(super) fn forward<'c>(
    ops: &Ops<'c>,
    p: &DeviceParams<'_>,
    pixels: &[f32],
    batch: usize,
) -> Result<(DeviceTensor<'c>, DeviceTape<'c>)> {
    let c = ops.c;
    let s = sizes(p, batch);
    let (d, rows, seq) = (s.d, s.rows, s.seq);
    let g = s.geometry;
    let pixels = nn::from_f32(c, &[batch, g.channels, g.image, g.image], pixels)?;
    let (grid2, plen) = (g.grid() * g.grid(), g.patch_len());
    let patches = ops.zeros(&[g.patches(), plen])?;
    nn::im2col(c, pixels.id(), patches.id(), g)?;
    drop(pixels);
    // Patch embeddings into rows 1.. of every image, then the class token and positions.
    let embeddings = ops.zeros(&[batch, seq, d])?;
    let pe = Gemm {
        batch0: batch,
        a: Operand::batched(0, plen, grid2 * plen, 0),
        c: Operand::batched(d, d, seq * d, 0),
        ..Gemm::dense(grid2, d, plen, false, true)
    };
    ops.gemm(patches.id(), p.patch_embedding.id(), embeddings.id(), &pe)?;
    nn::class_position(
        c,
        embeddings.id(),
        p.class_embedding.id(),
        p.position_embedding.id(),
        batch,
        seq,
        d,
    )?;
    let mut x = ops.zeros(&[rows, d])?;
    ops.layer_norm(embeddings.id(), &p.pre_layrnorm, x.id(), rows, d, s.eps)?;

    let (part, probs_op, ctx_op) = attention_views(&s);
    let AttentionShape {
        heads,
        head_dim: hd,
        scale,
        ..
    } = s.attention;
    let mut layers = Vec::with_capacity(p.layers.len());
    for l in &p.layers {
        let h1 = ops.zeros(&[rows, d])?;
        ops.layer_norm(x.id(), &l.layer_norm1, h1.id(), rows, d, s.eps)?;
        // q, k, v written side by side into the packed layout attention reads.
        let qkv = ops.zeros(&[rows, 3 * d])?;
        for (i, proj) in [&l.q_proj, &l.k_proj, &l.v_proj].into_iter().enumerate() {
            let view = Operand::batched(i * d, 3 * d, 0, 0);
            let g = Gemm {
                c: view,
                ..Gemm::dense(rows, d, d, false, true)
            };
            ops.gemm(h1.id(), proj.weight.id(), qkv.id(), &g)?;
            let bias = Gemm {
                accumulate: true,
                a: Operand::rows(1),
                c: view,
                ..Gemm::dense(rows, d, 1, false, false)
            };
            ops.gemm(ops.ones(rows)?, proj.bias.id(), qkv.id(), &bias)?;
        }
        // probs = softmax(scale q kᵀ), ctx = probs v, per sequence and head.
        let probs = ops.zeros(&[batch, heads, seq, seq])?;
        let scores = Gemm {
            batch0: batch,
            batch1: heads,
            alpha: scale,
            a: part(0),
            b: part(1),
            c: probs_op,
            ..Gemm::dense(seq, seq, hd, false, true)
        };
        ops.gemm(qkv.id(), qkv.id(), probs.id(), &scores)?;
        nn::softmax_rows(
            c,
            probs.id(),
            batch * heads * seq,
            seq,
            seq,
            heads,
            nn::SoftmaxMask::default(),
        )?;
        let ctx = ops.zeros(&[rows, d])?;
        let pv = Gemm {
            batch0: batch,
            batch1: heads,
            a: probs_op,
            b: part(2),
            c: ctx_op,
            ..Gemm::dense(seq, hd, seq, false, false)
        };
        ops.gemm(probs.id(), qkv.id(), ctx.id(), &pv)?;
        // x_mid = x + out_proj(ctx); x_out = x_mid + fc2(act(fc1(ln2(x_mid)))).
        let x_mid = ops.zeros(&[rows, d])?;
        ops.linear(
            ctx.id(),
            l.out_proj.weight.id(),
            Some(l.out_proj.bias.id()),
            x_mid.id(),
            (rows, d, d),
        )?;
        nn::add_inplace(c, x_mid.id(), x.id(), rows * d)?;
        let h2 = ops.zeros(&[rows, d])?;
        ops.layer_norm(x_mid.id(), &l.layer_norm2, h2.id(), rows, d, s.eps)?;
        let f = ops.zeros(&[rows, s.inter])?;
        ops.linear(
            h2.id(),
            l.fc1.weight.id(),
            Some(l.fc1.bias.id()),
            f.id(),
            (rows, d, s.inter),
        )?;
        let a = activated(ops, &f, rows * s.inter, s.act)?;
        let x_out = ops.zeros(&[rows, d])?;
        ops.linear(
            a.id(),
            l.fc2.weight.id(),
            Some(l.fc2.bias.id()),
            x_out.id(),
            (rows, s.inter, d),
        )?;
        drop(a);
        nn::add_inplace(c, x_out.id(), x_mid.id(), rows * d)?;
        layers.push(LayerTape {
            x: std::mem::replace(&mut x, x_out),
            h1,
            qkv,
            probs,
            ctx,
            x_mid,
            h2,
            f,
        });
    }
    // The class token of every image, then post_layernorm.
    let class_tokens = ops.zeros(&[batch, d])?;
    ops.copy_rows(
        x.id(),
        Operand::batched(0, d, seq * d, 0),
        class_tokens.id(),
        Operand::batched(0, d, d, 0),
        batch,
        d,
    )?;
    let pooled = ops.zeros(&[batch, d])?;
    ops.layer_norm(
        class_tokens.id(),
        &p.post_layernorm,
        pooled.id(),
        batch,
        d,
        s.eps,
    )?;
    Ok((
        pooled,
        DeviceTape {
            batch,
            patches,
            embeddings,
            layers,
            class_tokens,
        },
    ))
}

/// `act(f)` into a new tensor.
fn activated<'c>(
    ops: &Ops<'c>,
    f: &DeviceTensor<'_>,
    n: usize,
    act: Activation,
) -> Result<DeviceTensor<'c>> {
    let a = ops.zeros(&[n])?;
    nn::copy_into(ops.c, f.id(), a.id(), 0, n)?;
    nn::activation(ops.c, a.id(), n, kernel_activation(act))?;
    Ok(a)
}

fn norm_grads(g: &NormParams<DeviceTensor<'_>>, dx: GpuTensor, accumulate: bool) -> LayerNormGrads {
    LayerNormGrads {
        dx,
        dw: g.weight.id(),
        db: g.bias.id(),
        accumulate,
    }
}

/// Writes the gradient of every weight into `grads` (zeroed tensors shaped as `p`) from
/// `d_pooled = ∂L/∂pooled` (`[batch, D]` on the device) and the forward's tape.
pub(super) fn backward(
    ops: &Ops<'_>,
    p: &DeviceParams<'_>,
    tape: &DeviceTape<'_>,
    d_pooled: GpuTensor,
    grads: &mut DeviceParams<'_>,
) -> Result<()> {
    let c = ops.c;
    let batch = tape.batch;
    let s = sizes(p, batch);
    let (d, rows, seq, eps) = (s.d, s.rows, s.seq, s.eps);
    if tape.layers.len() != p.layers.len() {
        return Err(ClipError::input(
            "gpu::train::backward",
            format!(
                "the tape holds {} layers, the tower has {}",
                tape.layers.len(),
                p.layers.len()
            ),
        ));
    }
    // post_layernorm, then ∂L/∂class token scattered into row 0 of each image.
    let d_cls = ops.zeros(&[batch, d])?;
    nn::layer_norm_backward(
        c,
        tape.class_tokens.id(),
        p.post_layernorm.weight.id(),
        d_pooled,
        norm_grads(&grads.post_layernorm, d_cls.id(), false),
        batch,
        d,
        eps,
    )?;
    let dx = ops.zeros(&[rows, d])?;
    ops.copy_rows(
        d_cls.id(),
        Operand::batched(0, d, d, 0),
        dx.id(),
        Operand::batched(0, d, seq * d, 0),
        batch,
        d,
    )?;
    drop(d_cls);

    for ((l, t), g) in p
        .layers
        .iter()
        .zip(&tape.layers)
        .zip(grads.layers.iter_mut())
        .rev()
    {
        layer_backward(ops, &s, l, t, g, dx.id())?;
    }
    // pre_layrnorm, then the embeddings.
    let d_emb = ops.zeros(&[rows, d])?;
    nn::layer_norm_backward(
        c,
        tape.embeddings.id(),
        p.pre_layrnorm.weight.id(),
        dx.id(),
        norm_grads(&grads.pre_layrnorm, d_emb.id(), false),
        rows,
        d,
        eps,
    )?;
    // Positions: the sum over images; the class embedding: its row 0.
    ops.sum_rows(
        d_emb.id(),
        Operand::rows(seq * d),
        grads.position_embedding.id(),
        batch,
        seq * d,
    )?;
    nn::copy_into(
        c,
        grads.position_embedding.id(),
        grads.class_embedding.id(),
        0,
        d,
    )?;
    // Patch weights: Σ_images ∂L/∂patch_rowsᵀ patches.
    let g = s.geometry;
    let (grid2, plen) = (g.grid() * g.grid(), g.patch_len());
    for b in 0..batch {
        let pg = Gemm {
            accumulate: b > 0,
            a: Operand::batched(b * seq * d + d, d, 0, 0),
            b: Operand::batched(b * grid2 * plen, plen, 0, 0),
            ..Gemm::dense(d, plen, grid2, true, false)
        };
        ops.gemm(
            d_emb.id(),
            tape.patches.id(),
            grads.patch_embedding.id(),
            &pg,
        )?;
    }
    Ok(())
}

/// One encoder layer backward: `dx` holds `∂L/∂x_out` on entry and `∂L/∂x` on return.
fn layer_backward(
    ops: &Ops<'_>,
    s: &Sizes,
    l: &LayerParams<DeviceTensor<'_>>,
    t: &LayerTape<'_>,
    g: &mut LayerParams<DeviceTensor<'_>>,
    dx: GpuTensor,
) -> Result<()> {
    let c = ops.c;
    let (d, rows, inter, eps) = (s.d, s.rows, s.inter, s.eps);
    let n_inter = rows * inter;
    // x_out = x_mid + fc2(act(fc1(ln2(x_mid)))).
    let a = activated(ops, &t.f, n_inter, s.act)?;
    let df = ops.linear_backward(a.id(), l.fc2.weight.id(), dx, &g.fc2, (rows, inter, d))?;
    drop(a);
    nn::activation_backward(c, t.f.id(), df.id(), n_inter, kernel_activation(s.act))?;
    let dh2 = ops.linear_backward(
        t.h2.id(),
        l.fc1.weight.id(),
        df.id(),
        &g.fc1,
        (rows, d, inter),
    )?;
    drop(df);
    // dx becomes ∂L/∂x_mid: the residual plus ln2's backward, accumulated in place.
    nn::layer_norm_backward(
        c,
        t.x_mid.id(),
        l.layer_norm2.weight.id(),
        dh2.id(),
        norm_grads(&g.layer_norm2, dx, true),
        rows,
        d,
        eps,
    )?;
    drop(dh2);
    // x_mid = x + out_proj(attention(qkv(ln1(x)))).
    let dctx = ops.linear_backward(
        t.ctx.id(),
        l.out_proj.weight.id(),
        dx,
        &g.out_proj,
        (rows, d, d),
    )?;
    let dqkv = ops.zeros(&[rows, 3 * d])?;
    nn::attention_backward_with(
        ops.kernel,
        c,
        t.qkv.id(),
        t.probs.id(),
        dctx.id(),
        dqkv.id(),
        s.attention,
    )?;
    drop(dctx);
    let dh1 = ops.zeros(&[rows, d])?;
    let projections = [
        (&l.q_proj, &g.q_proj),
        (&l.k_proj, &g.k_proj),
        (&l.v_proj, &g.v_proj),
    ];
    for (i, (w, gw)) in projections.into_iter().enumerate() {
        let view = Operand::batched(i * d, 3 * d, 0, 0);
        // dW_i = dqkv[:, i]ᵀ h1, db_i = Σ_rows dqkv[:, i], dh1 += dqkv[:, i] W_i.
        let dw = Gemm {
            a: view,
            ..Gemm::dense(d, d, rows, true, false)
        };
        ops.gemm(dqkv.id(), t.h1.id(), gw.weight.id(), &dw)?;
        ops.sum_rows(dqkv.id(), view, gw.bias.id(), rows, d)?;
        let dxi = Gemm {
            accumulate: i > 0,
            a: view,
            ..Gemm::dense(rows, d, d, false, false)
        };
        ops.gemm(dqkv.id(), w.weight.id(), dh1.id(), &dxi)?;
    }
    drop(dqkv);
    // dx becomes ∂L/∂x: the residual plus ln1's backward.
    nn::layer_norm_backward(
        c,
        t.x.id(),
        l.layer_norm1.weight.id(),
        dh1.id(),
        norm_grads(&g.layer_norm1, dx, true),
        rows,
        d,
        eps,
    )?;
    Ok(())
}
