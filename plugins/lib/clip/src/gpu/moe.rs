//! SMILE's mixture-of-experts linear (FusionBench's `SmileMoELinear`) in the encoder: a linear
//! layer whose state dict holds, instead of `P.weight`/`P.bias`, the pretrained linear
//! (`P.pretrained_model.*`), a gate (`P.gate.weights`, `[E·gate_k, in]`) and one low-rank
//! expert per fine-tuned model (`P.experts.I.u` `[out, k]`, `P.experts.I.svh` `[k, in]`,
//! `P.experts.I.bias`; or a full `P.experts.I.weight` when the upscaling kept whole task
//! matrices). The routing parameter the state dict lacks, `top_k`, comes from the model's
//! `config.json` under [`SMILE_CONFIG_KEY`] (written by the merging plugin's
//! `SmileUpscaling`).
//!
//! Forward, exactly as `SmileMoELinear.forward` (per token, every row of the flattened batch):
//! `y = pretrained(x) + Σ_{e ∈ top-k} wₑ · (u_e (svh_e x) + bias_e)`, where the router logits
//! are the norms `‖G_e x‖₂` of the token's projections on each expert's gate rows (all ones
//! for a single expert), `softmax` over the experts, the `top_k` largest kept and renormalized
//! to sum 1.
//!
//! The encoder runs the pretrained linear as it runs any linear (with its bias, and the
//! residual where there is one); the routed sum is computed here in host memory with the
//! native GEMMs and added to the backend's output ([`LayerMoe`]), before the activation for
//! `fc1`. On the native backend that is the whole of the work; on the WGSL backend each
//! mixture-of-experts linear reads its input and output back and uploads the sum (correct,
//! slower than on-device routing, which is not written yet).

use serde::Deserialize;

use crate::config::Activation;
use crate::error::{ClipError, Result};
use crate::gpu::backend::{Backend, Epilogue, LinearW};
use crate::gpu::native::Native;
use crate::weights::WeightStore;

/// The key of `config.json` holding the routing parameters of an upscaled model.
pub const SMILE_CONFIG_KEY: &str = "smile_upscaling";

/// The routing parameters of an upscaled model (`config.json`, [`SMILE_CONFIG_KEY`]).
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct SmileRouting {
    /// Experts per token.
    pub top_k: usize,
}

/// The name under which a state dict holding SMILE modules keeps the pretrained linear's
/// tensor `name` (`P.weight` → `P.pretrained_model.weight`), when it does; `name` otherwise.
pub fn stored_name(store: &WeightStore, name: &str) -> String {
    if let Some((module, leaf @ ("weight" | "bias"))) = name.rsplit_once('.') {
        let moe = format!("{module}.pretrained_model.{leaf}");
        if store.contains(&moe) {
            return moe;
        }
    }
    name.to_string()
}

/// The routing parameters of the store's model, read from its `config.json` when the store
/// holds SMILE modules; an error when it holds them without the parameters.
fn routing(store: &WeightStore, example: &str) -> Result<SmileRouting> {
    let missing = |why: String| {
        ClipError::input(
            "SmileMoELinear",
            format!(
                "{} holds SMILE mixture-of-experts linears (`{example}`) but {why}; the routing \
                 needs `top_k` there (the upscaling writes it)",
                store.checkpoint().display()
            ),
        )
    };
    let text = store
        .aux_file("config.json")
        .ok_or_else(|| missing("no config.json".into()))?;
    let config: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| missing(format!("its config.json is not JSON ({e})")))?;
    let section = config
        .get(SMILE_CONFIG_KEY)
        .ok_or_else(|| missing(format!("its config.json has no `{SMILE_CONFIG_KEY}`")))?;
    serde_json::from_value(section.clone()).map_err(|e| {
        missing(format!(
            "its config.json's `{SMILE_CONFIG_KEY}` is not usable ({e})"
        ))
    })
}

/// One expert: low-rank `u (svh x) + bias`, or a full linear.
enum Expert {
    LowRank {
        svh: LinearW<Native>,
        u: LinearW<Native>,
    },
    Full(LinearW<Native>),
}

impl Expert {
    fn apply(&self, x: &Vec<f32>, rows: usize, out: &mut Vec<f32>) -> Result<()> {
        match self {
            Expert::LowRank { svh, u } => {
                let mut h = vec![0.0; rows * svh.out_dim];
                Native.linear(x, svh, &mut h, rows, Epilogue::None)?;
                Native.linear(&h, u, out, rows, Epilogue::None)
            }
            Expert::Full(w) => Native.linear(x, w, out, rows, Epilogue::None),
        }
    }
}

/// One `SmileMoELinear`'s gate and experts (the pretrained linear runs in the encoder).
pub struct MoeLinear {
    name: String,
    in_dim: usize,
    out_dim: usize,
    /// `[E·gate_k, in]`, no bias.
    gate: LinearW<Native>,
    gate_k: usize,
    experts: Vec<Expert>,
    top_k: usize,
}

impl MoeLinear {
    /// Linear `prefix` (`in_dim → out_dim`) of `store` when it is a SMILE module, `None` when
    /// it is a plain linear. Every tensor is checked against the shapes the others imply.
    pub fn load(
        store: &WeightStore,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Option<Self>> {
        let gate_name = format!("{prefix}.gate.weights");
        let Some(gate_shape) = store.shape(&gate_name).map(<[usize]>::to_vec) else {
            return Ok(None);
        };
        let top_k = routing(store, &gate_name)?.top_k;
        let bad =
            |message: String| ClipError::input("SmileMoELinear", format!("`{prefix}`: {message}"));
        let expert = |i: usize, leaf: &str| format!("{prefix}.experts.{i}.{leaf}");
        let num_experts = (0..)
            .take_while(|&i| {
                store.contains(&expert(i, "u")) || store.contains(&expert(i, "weight"))
            })
            .count();
        if num_experts == 0 {
            return Err(bad(format!(
                "`{gate_name}` without experts (`{prefix}.experts.0.u`)"
            )));
        }
        if gate_shape.len() != 2
            || gate_shape[1] != in_dim
            || gate_shape[0] == 0
            || gate_shape[0] % num_experts != 0
        {
            return Err(bad(format!(
                "`{gate_name}` has shape {gate_shape:?}; expected [{num_experts} experts × gate_k, {in_dim}]"
            )));
        }
        if top_k == 0 || top_k > num_experts {
            return Err(bad(format!(
                "`top_k` {top_k} in config.json, for {num_experts} experts"
            )));
        }
        let gate_k = gate_shape[0] / num_experts;
        let gate = LinearW {
            weight: store.get(&gate_name, &gate_shape)?.into_data(),
            bias: None,
            in_dim,
            out_dim: gate_shape[0],
        };
        let experts = (0..num_experts)
            .map(|i| {
                let bias_name = expert(i, "bias");
                let bias = if store.contains(&bias_name) {
                    Some(store.get(&bias_name, &[out_dim])?.into_data())
                } else {
                    None
                };
                let u_name = expert(i, "u");
                if let Some(u_shape) = store.shape(&u_name).map(<[usize]>::to_vec) {
                    let k = match u_shape.as_slice() {
                        &[o, k] if o == out_dim => k,
                        _ => {
                            return Err(bad(format!(
                                "`{u_name}` has shape {u_shape:?}; expected [{out_dim}, k]"
                            )))
                        }
                    };
                    Ok(Expert::LowRank {
                        svh: LinearW {
                            weight: store.get(&expert(i, "svh"), &[k, in_dim])?.into_data(),
                            bias: None,
                            in_dim,
                            out_dim: k,
                        },
                        u: LinearW {
                            weight: store.get(&u_name, &[out_dim, k])?.into_data(),
                            bias,
                            in_dim: k,
                            out_dim,
                        },
                    })
                } else {
                    Ok(Expert::Full(LinearW {
                        weight: store
                            .get(&expert(i, "weight"), &[out_dim, in_dim])?
                            .into_data(),
                        bias,
                        in_dim,
                        out_dim,
                    }))
                }
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(Self {
            name: prefix.to_string(),
            in_dim,
            out_dim,
            gate,
            gate_k,
            experts,
            top_k,
        }))
    }

    /// Number of experts.
    pub fn num_experts(&self) -> usize {
        self.experts.len()
    }

    /// Each row's selected experts and their weights, `top_k` per row, as
    /// `SmileMoELinear.forward` picks them: softmax of the gate norms, top-k, renormalized.
    pub fn route(&self, x: &[f32], rows: usize) -> Result<Vec<Vec<(usize, f32)>>> {
        let e = self.experts.len();
        if e == 1 {
            return Ok(vec![vec![(0, 1.0)]; rows]);
        }
        let mut logits = vec![0.0; rows * self.gate.out_dim];
        Native.linear(
            &x[..rows * self.in_dim].to_vec(),
            &self.gate,
            &mut logits,
            rows,
            Epilogue::None,
        )?;
        Ok(logits
            .chunks(self.gate.out_dim)
            .map(|row| {
                let norms: Vec<f32> = row
                    .chunks(self.gate_k)
                    .map(|g| g.iter().map(|v| v * v).sum::<f32>().sqrt())
                    .collect();
                route_row(&norms, self.top_k)
            })
            .collect())
    }

    /// `out[r, offset..offset + out_dim] += Σ wₑ expertₑ(x[r])` over the routed experts, for
    /// `rows` rows of `x` (`[rows, in_dim]`) and of `out` (row stride `stride`).
    pub fn add_routed(
        &self,
        x: &[f32],
        rows: usize,
        out: &mut [f32],
        stride: usize,
        offset: usize,
    ) -> Result<()> {
        let (k, n) = (self.in_dim, self.out_dim);
        if x.len() < rows * k || (rows > 0 && out.len() < (rows - 1) * stride + offset + n) {
            return Err(ClipError::input(
                "SmileMoELinear",
                format!(
                    "`{}`: {rows} rows need {} input and {} output values, got {} and {}",
                    self.name,
                    rows * k,
                    rows.saturating_sub(1) * stride + offset + n,
                    x.len(),
                    out.len()
                ),
            ));
        }
        let routes = self.route(x, rows)?;
        for (e, expert) in self.experts.iter().enumerate() {
            let picked: Vec<(usize, f32)> = routes
                .iter()
                .enumerate()
                .filter_map(|(r, sel)| sel.iter().find(|(i, _)| *i == e).map(|&(_, w)| (r, w)))
                .collect();
            if picked.is_empty() {
                continue;
            }
            let mut gathered = Vec::with_capacity(picked.len() * k);
            for &(r, _) in &picked {
                gathered.extend_from_slice(&x[r * k..(r + 1) * k]);
            }
            let mut y = vec![0.0; picked.len() * n];
            expert.apply(&gathered, picked.len(), &mut y)?;
            for (&(r, w), yr) in picked.iter().zip(y.chunks(n)) {
                let o = &mut out[r * stride + offset..r * stride + offset + n];
                o.iter_mut().zip(yr).for_each(|(o, y)| *o += w * y);
            }
        }
        Ok(())
    }
}

/// Softmax over `logits`, the `top_k` largest (the first of equal ones), renormalized.
pub fn route_row(logits: &[f32], top_k: usize) -> Vec<(usize, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    // Stable: equal probabilities keep index order.
    order.sort_by(|&a, &b| exp[b].total_cmp(&exp[a]));
    let picked: Vec<(usize, f32)> = order[..top_k.min(order.len())]
        .iter()
        .map(|&i| (i, exp[i] / sum))
        .collect();
    let total: f32 = picked.iter().map(|p| p.1).sum();
    picked.into_iter().map(|(i, p)| (i, p / total)).collect()
}

/// The SMILE modules of one encoder layer (all `None` for a plain layer), and what the encoder
/// calls after each of its linears.
#[derive(Default)]
pub struct LayerMoe {
    q: Option<MoeLinear>,
    k: Option<MoeLinear>,
    v: Option<MoeLinear>,
    out_proj: Option<MoeLinear>,
    fc1: Option<MoeLinear>,
    fc2: Option<MoeLinear>,
}

impl LayerMoe {
    /// The SMILE modules of layer `prefix` (e.g. `vision_model.encoder.layers.0`).
    pub fn load(store: &WeightStore, prefix: &str, d: usize, inter: usize) -> Result<Self> {
        let attn = |p: &str| MoeLinear::load(store, &format!("{prefix}.self_attn.{p}"), d, d);
        Ok(Self {
            k: attn("k_proj")?,
            v: attn("v_proj")?,
            q: attn("q_proj")?,
            out_proj: attn("out_proj")?,
            fc1: MoeLinear::load(store, &format!("{prefix}.mlp.fc1"), d, inter)?,
            fc2: MoeLinear::load(store, &format!("{prefix}.mlp.fc2"), inter, d)?,
        })
    }

    /// Whether the layer has any SMILE module.
    pub fn is_empty(&self) -> bool {
        [
            &self.q,
            &self.k,
            &self.v,
            &self.out_proj,
            &self.fc1,
            &self.fc2,
        ]
        .iter()
        .all(|m| m.is_none())
    }

    /// After the fused q/k/v product (`qkv: [rows, 3D]`, q then k then v): the routed sums of
    /// the projections that are SMILE modules.
    pub fn after_qkv<B: Backend>(
        &self,
        b: &B,
        x: &B::Buf,
        qkv: &mut B::Buf,
        rows: usize,
    ) -> Result<()> {
        let parts = [&self.q, &self.k, &self.v];
        if parts.iter().all(|m| m.is_none()) {
            return Ok(());
        }
        let x = b.read(x)?;
        update(b, qkv, |out| {
            for (i, m) in parts.iter().enumerate() {
                if let Some(m) = m {
                    m.add_routed(&x, rows, out, 3 * m.out_dim, i * m.out_dim)?;
                }
            }
            Ok(())
        })
    }

    /// After `out_proj` (added into the residual stream `out`).
    pub fn after_out_proj<B: Backend>(
        &self,
        b: &B,
        x: &B::Buf,
        out: &mut B::Buf,
        rows: usize,
    ) -> Result<()> {
        dense(b, self.out_proj.as_ref(), x, out, rows, None)
    }

    /// The epilogue `fc1` runs with: the activation waits for the routed sum when `fc1` is a
    /// SMILE module ([`LayerMoe::after_fc1`] applies it).
    pub fn fc1_epilogue(&self, act: Activation) -> Epilogue {
        match self.fc1 {
            Some(_) => Epilogue::None,
            None => Epilogue::Activation(act),
        }
    }

    /// After `fc1`: the routed sum, then the activation.
    pub fn after_fc1<B: Backend>(
        &self,
        b: &B,
        x: &B::Buf,
        out: &mut B::Buf,
        rows: usize,
        act: Activation,
    ) -> Result<()> {
        dense(b, self.fc1.as_ref(), x, out, rows, Some(act))
    }

    /// After `fc2` (added into the residual stream `out`).
    pub fn after_fc2<B: Backend>(
        &self,
        b: &B,
        x: &B::Buf,
        out: &mut B::Buf,
        rows: usize,
    ) -> Result<()> {
        dense(b, self.fc2.as_ref(), x, out, rows, None)
    }
}

/// `out += routed(x)` (then `act`) for a SMILE module over dense rows; nothing for `None`.
fn dense<B: Backend>(
    b: &B,
    m: Option<&MoeLinear>,
    x: &B::Buf,
    out: &mut B::Buf,
    rows: usize,
    act: Option<Activation>,
) -> Result<()> {
    let Some(m) = m else { return Ok(()) };
    let x = b.read(x)?;
    update(b, out, |o| {
        m.add_routed(&x, rows, o, m.out_dim, 0)?;
        if let Some(act) = act {
            o[..rows * m.out_dim]
                .iter_mut()
                .for_each(|v| *v = act.apply(*v));
        }
        Ok(())
    })
}

/// Applies `f` to the values of `buf` in host memory (a read-back and an upload on a device).
fn update<B: Backend>(
    b: &B,
    buf: &mut B::Buf,
    f: impl FnOnce(&mut [f32]) -> Result<()>,
) -> Result<()> {
    let mut host = b.read(buf)?;
    f(&mut host)?;
    *buf = b.upload("SmileMoELinear output", &[host.len()], &host)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_takes_the_softmax_top_k_renormalized() {
        // One expert selected: weight exactly 1.
        assert_eq!(route_row(&[0.1, 2.0, 0.5], 1), vec![(1, 1.0)]);
        // Two of three: softmax probabilities of the two largest, summing to 1.
        let r = route_row(&[1.0, 3.0, 2.0], 2);
        let (e1, e2, e3) = (1f32.exp(), 3f32.exp(), 2f32.exp());
        let s = e1 + e2 + e3;
        let (p3, p2) = (e2 / s, e3 / s);
        assert_eq!(r[0].0, 1);
        assert_eq!(r[1].0, 2);
        assert!((r[0].1 - p3 / (p3 + p2)).abs() < 1e-6);
        assert!((r[1].1 - p2 / (p3 + p2)).abs() < 1e-6);
        // Ties go to the first index.
        assert_eq!(route_row(&[1.0, 1.0], 1)[0].0, 0);
    }
}
