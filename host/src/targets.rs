//! Which component a config subtree selects: `_target_`, or FusionBench v0.1's `name:` (methods)
//! and `type:` (pools) through an alias table.

use fusion_plugin_api::host::{Component, ComponentKind};
use serde_json::Value;

use crate::error::usage;
use crate::plugins::Registry;

/// FusionBench v0.1 `name:` / `type:` values and the component they mean, per kind
/// (`fusion_bench/compat/{method,modelpool,taskpool}/__init__.py`).
const ALIASES: &[(ComponentKind, &str, &str)] = &[
    (
        ComponentKind::ModelPool,
        "huggingface_clip_vision",
        "fusion_bench.modelpool.CLIPVisionModelPool",
    ),
    (
        ComponentKind::ModelPool,
        "AutoModelPool",
        "fusion_bench.modelpool.BaseModelPool",
    ),
    (
        ComponentKind::TaskPool,
        "dummy",
        "fusion_bench.taskpool.DummyTaskPool",
    ),
    (
        ComponentKind::TaskPool,
        "clip_vit_classification",
        "fusion_bench.taskpool.CLIPVisionModelTaskPool",
    ),
    (
        ComponentKind::Algorithm,
        "dummy",
        "fusion_bench.method.DummyAlgorithm",
    ),
    (
        ComponentKind::Algorithm,
        "simple_average",
        "fusion_bench.method.SimpleAverageAlgorithm",
    ),
    (
        ComponentKind::Algorithm,
        "weighted_average",
        "fusion_bench.method.WeightedAverageAlgorithm",
    ),
    (
        ComponentKind::Algorithm,
        "task_arithmetic",
        "fusion_bench.method.TaskArithmeticAlgorithm",
    ),
    (
        ComponentKind::Algorithm,
        "ties_merging",
        "fusion_bench.method.TiesMergingAlgorithm",
    ),
];

/// Every component name FusionBench itself has (its classes, v0.1 names and config targets), one
/// `<kind> <name>` per line: written from the fusion-bench wheel by
/// `tools/fusionbench/components.py`. A target in this list that no plugin provides is a
/// FusionBench component fusion-host does not implement, not a misspelling.
const FUSIONBENCH_COMPONENTS: &str = include_str!("fusionbench_components.txt");

fn fusionbench_components(kind: ComponentKind) -> impl Iterator<Item = &'static str> {
    FUSIONBENCH_COMPONENTS
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(' '))
        .filter(move |(k, _)| *k == kind.config_key())
        .map(|(_, n)| n)
}

/// True when `name` is one of FusionBench's components of `kind`.
pub fn is_fusionbench_component(kind: ComponentKind, name: &str) -> bool {
    fusionbench_components(kind).any(|n| n == name)
}

/// How a config subtree names its component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    /// The name to look up.
    pub target: String,
    /// How it was given, for messages (`_target_: x`, `name: x (v0.1)`).
    pub given_as: String,
}

/// Read the selector of the `kind` subtree.
pub fn selector(kind: ComponentKind, config: &Value) -> anyhow::Result<Selector> {
    let key = kind.config_key();
    let get = |k: &str| config.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(t) = get("_target_") {
        return Ok(Selector {
            given_as: format!("{key}._target_: {t}"),
            target: t,
        });
    }
    let compat_key = if kind == ComponentKind::Algorithm {
        "name"
    } else {
        "type"
    };
    if let Some(name) = get(compat_key) {
        let target = ALIASES
            .iter()
            .find(|(k, alias, _)| *k == kind && *alias == name)
            .map(|(_, _, t)| t.to_string())
            .unwrap_or_else(|| name.clone());
        tracing::warn!(
            "{key} has no `_target_`; resolving the FusionBench v0.1 `{compat_key}: {name}` (deprecated) as `{target}`"
        );
        return Ok(Selector {
            given_as: format!("{key}.{compat_key}: {name} (v0.1 style)"),
            target,
        });
    }
    Err(usage(format!(
        "the `{key}` config has no `_target_` (nor a v0.1 `{compat_key}:`), so no component can be chosen for it"
    )))
}

/// Find the component a selector names, or explain why there is none.
pub fn resolve<'r>(
    registry: &'r Registry,
    kind: ComponentKind,
    sel: &Selector,
) -> anyhow::Result<&'r Component> {
    if let Some(c) = registry.find(kind, &sel.target) {
        return Ok(c);
    }
    if let Some(other) = registry.find_any_kind(&sel.target) {
        return Err(usage(format!(
            "`{}` is a {} (plugin `{}`), but {} needs a {kind}",
            sel.target,
            other.kind,
            other.plugin,
            kind.config_key()
        )));
    }
    let mut msg = if is_fusionbench_component(kind, &sel.target) {
        let supported = registry.primary_names(kind);
        format!(
            "the FusionBench {} `{}` (from {}) is not supported by fusion-host: no loaded plugin \
             provides it. Supported {}s: {} (`fusion-host plugins` lists every name they answer to)",
            kind.config_key(),
            sel.target,
            sel.given_as,
            kind.config_key(),
            if supported.is_empty() {
                "none".to_string()
            } else {
                supported.join(", ")
            }
        )
    } else {
        unknown_target_message(registry, kind, sel)
    };
    if !registry.refused.is_empty() {
        let files: Vec<String> = registry.refused.iter().map(|e| e.to_string()).collect();
        msg.push_str(&format!(
            ". Some plugins were refused: {}",
            files.join("; ")
        ));
    }
    Err(usage(msg))
}

/// A target neither a plugin nor FusionBench knows: most likely misspelt.
fn unknown_target_message(registry: &Registry, kind: ComponentKind, sel: &Selector) -> String {
    let closest = registry.closest(kind, &sel.target, 5);
    let mut msg = format!(
        "unknown {kind} target `{}` (from {})",
        sel.target, sel.given_as
    );
    if closest.is_empty() {
        msg.push_str(&format!(
            "; no {kind} components are loaded at all (see `fusion-host plugins`)"
        ));
    } else {
        msg.push_str(&format!("; closest known targets: {}", closest.join(", ")));
    }
    // A FusionBench-looking name: when the nearest FusionBench name is not one fusion-host has,
    // the user may be after a component that is not supported; say so.
    let fb = crate::plugins::rank(&sel.target, fusionbench_components(kind), 3);
    if sel.target.starts_with("fusion_bench.") && fb.first().is_some_and(|f| !closest.contains(f)) {
        msg.push_str(&format!(
            "; FusionBench has no {} of that name either (closest FusionBench names, not \
             necessarily supported by fusion-host: {})",
            kind.config_key(),
            fb.join(", ")
        ));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fusionbench_component_list_holds_classes_v01_names_and_config_targets() {
        use ComponentKind::*;
        for (kind, name) in [
            (Algorithm, "fusion_bench.method.TaskArithmeticAlgorithm"),
            (
                Algorithm,
                "fusion_bench.method.CLIPLayerWiseAdaMergingAlgorithm",
            ),
            (Algorithm, "clip_layer_wise_adamerging"),
            (Algorithm, "fusion_bench.method.RegMeanAlgorithmForCLIP"),
            (ModelPool, "fusion_bench.modelpool.CausalLMPool"),
            (ModelPool, "huggingface_clip_vision"),
            (TaskPool, "fusion_bench.taskpool.LMEvalHarnessTaskPool"),
        ] {
            assert!(is_fusionbench_component(kind, name), "{kind} {name}");
        }
        assert!(!is_fusionbench_component(
            Algorithm,
            "fusion_bench.method.TaskArithmeticAlgorith"
        ));
        // Kinds are kept apart.
        assert!(!is_fusionbench_component(
            Algorithm,
            "fusion_bench.modelpool.CausalLMPool"
        ));
    }
}
