//! Step 3, disjoint merge: each tensor of the merged model, `θ₀ + λ·τ` with `τ` the entries
//! that agree with the elected sign, combined by `merge_func`; asked for tensor by tensor by the
//! lazy merged model (`crate::lazy`).

#[allow(unused_imports)]
use super::*;

/// The merge of one tensor with precomputed thresholds and majority sign.
pub(super) struct TiesTensor {
    pub(super) inputs: Inputs,
    pub(super) thresholds: Vec<f32>,
    pub(super) majority: f32,
    pub(super) merge: TiesMerge,
    pub(super) lambda: f32,
    pub(super) delta: Delta,
    pub(super) removed: HashSet<String>,
    pub(super) cache: DeviceCache,
}

impl TiesTensor {
    pub(super) fn source(&self) -> Source<'_> {
        Source {
            inputs: &self.inputs,
            delta: self.delta,
            cache: &self.cache,
        }
    }
}

impl TensorMerge for TiesTensor {
    fn copies(&self, name: &str) -> bool {
        self.removed.contains(name)
    }

    fn merge<'c>(&self, c: &'c dyn Compute, name: &str, info: &TensorInfo) -> Result<Gpu<'c>> {
        let out = match self.cache.take(name, Slot::Merged) {
            Some(t) => Ok(Gpu::adopt(c, t)),
            None => self.merge_uncached(c, name, info),
        };
        // The merged tensor was the last use of this key's entries.
        self.cache.evict(c, name);
        out
    }
}

impl TiesTensor {
    /// The merge of `name` in fused launches ([`fusion_kernels::ties_elect_merge_delta`], or
    /// [`fusion_kernels::ties_merge_delta_scaled`] where the cache kept the elected sum) from
    /// every model's fine-tuned tensor,
    /// where the task vectors are plain, none is on the device, the device binds the launch and
    /// the key's tensors fit at once (see [`held_at_once`]); `None` where not.
    pub(super) fn merge_fused<'c>(
        &self,
        c: &'c dyn Compute,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Option<Gpu<'c>>> {
        let source = self.source();
        let Some(xs) = source.fused_inputs(c, name, info)? else {
            return Ok(None);
        };
        let ids: Vec<GpuTensor> = xs.iter().map(Gpu::id).collect();
        let mut base = None;
        let base = source.base_of(c, &mut base, name)?;
        let ctx = |e: Error| e.context(format!("tensor `{name}`"));
        // The majority is known here: the count of entries it decided is not needed.
        let counters = Gpu::zeros(c, DType::U32, &[2])?;
        let m = EarlyMerge {
            merge: self.merge,
            lambda: self.lambda,
        }
        .scaled(&self.thresholds, self.majority, info);
        let out = match self.cache.get(name, Slot::ElectedSum) {
            Some(s) => fusion_kernels::ties_merge_delta_scaled(
                c,
                s,
                &ids,
                base.id(),
                m,
                (counters.id(), 0),
            ),
            None => fusion_kernels::ties_elect_merge_delta(
                c,
                &ids,
                base.id(),
                m,
                None,
                (counters.id(), 0),
            ),
        }
        .map_err(ctx)?;
        Ok(Some(Gpu::adopt(c, out)))
    }

    pub(super) fn merge_uncached<'c>(
        &self,
        c: &'c dyn Compute,
        name: &str,
        info: &TensorInfo,
    ) -> Result<Gpu<'c>> {
        if let Some(out) = self.merge_fused(c, name, info)? {
            return Ok(out);
        }
        let source = self.source();
        let mut base = None;
        let merged = if let Some(tvs) = source.all_cached(c, name) {
            // Everything on the device: the library's multi-input merge, a few launches.
            let ids: Vec<GpuTensor> = tvs.iter().map(Gpu::id).collect();
            let merged = fusion_kernels::ties_merge(
                c,
                &ids,
                &self.thresholds,
                self.majority,
                self.merge,
                DType::F32,
            )?;
            Gpu::adopt(c, merged)
        } else {
            let s = source.elected_sum(c, &mut base, name, info, &self.thresholds)?;
            // Disjoint merge, one model at a time.
            let mut acc = TiesAccumulator::new(c, &info.shape, self.merge, self.majority)?;
            for (i, m) in self.inputs.models.iter().enumerate() {
                let threshold = self.thresholds[i];
                source
                    .merge_step(c, &mut base, &mut acc, &s, i, name, info, threshold)
                    .map_err(|e| e.context(format!("tensor `{name}` of `{}`", m.name)))?;
            }
            Gpu::adopt(c, acc.finish(s.id(), DType::F32)?)
        };
        let base = source.base_of(c, &mut base, name)?;
        let out = fusion_kernels::weighted_sum(
            c,
            &[(base.id(), 1.0), (merged.id(), self.lambda)],
            kernel_dtype(info.dtype),
        )?;
        Ok(Gpu::adopt(c, out))
    }
}
