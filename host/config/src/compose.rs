//! Composition: defaults list → merged config → command-line value overrides.

use serde_norway::{Mapping, Value};

use crate::defaults::{closest, Builder, Overrides};
use crate::overrides::{parse_overrides, Override, OverrideKind};
use crate::repo::Repo;
use crate::value::{
    child, child_mut, flow, get_path, is_container, is_missing, merge_into, split_key, MAX_DEPTH,
};
use crate::{ComposeOptions, Composed, ConfigError, LoadedConfig};

pub(crate) fn compose(opts: &ComposeOptions) -> Result<Composed, ConfigError> {
    let mut repo = Repo::new(opts.search_path.clone());
    let parsed = parse_overrides(&opts.overrides)?;
    let mut group_ovs = Vec::new();
    let mut config_ovs = Vec::new();
    for o in parsed {
        let is_dict = matches!(o.value, Some(Value::Mapping(_)));
        if is_dict || !repo.group_exists(&o.key) {
            config_ovs.push(o);
        } else {
            group_ovs.push(o);
        }
    }
    let config_name = opts
        .config_name
        .as_deref()
        .map(|n| n.strip_suffix(".yaml").unwrap_or(n).to_string());
    let builder = Builder {
        repo: &mut repo,
        overrides: Overrides::new(&group_ovs)?,
        expanding: Vec::new(),
    };
    let (defaults, ovr) = builder.build(config_name.as_deref())?;

    let mut cfg = Value::Mapping(Mapping::new());
    let mut loaded_files = Vec::new();
    for d in &defaults {
        let Some(loaded) = repo.load(&d.config_path)? else {
            continue;
        };
        if loaded.builtin {
            continue;
        }
        let content = embed(&d.package, Value::Mapping(loaded.config.clone()))?;
        merge_into(&mut cfg, content);
        loaded_files.push(LoadedConfig {
            config_path: d.config_path.clone(),
            package: d.package.clone(),
            file: loaded.file.clone(),
            is_self: d.is_self,
            primary: d.primary,
            parent: d.parent.clone(),
            override_key: d.override_key.clone(),
        });
    }

    for o in &config_ovs {
        apply_config_override(&mut cfg, o, &repo)?;
    }

    let hydra = match &mut cfg {
        Value::Mapping(m) => m.shift_remove("hydra"),
        _ => None,
    };
    Ok(Composed {
        config: cfg,
        hydra,
        config_name: config_name.unwrap_or_default(),
        defaults: loaded_files,
        choices: ovr.known_choices().to_vec(),
        search_path: opts.search_path.clone(),
    })
}

/// Places `content` at a dotted package (`a.b` → `{a: {b: content}}`).
fn embed(package: &str, content: Value) -> Result<Value, ConfigError> {
    if package.is_empty() {
        return Ok(content);
    }
    if package.split('.').count() > MAX_DEPTH {
        return Err(ConfigError::TooDeep {
            what: format!("package '{}'", crate::overrides::abbreviate(package)),
            limit: MAX_DEPTH,
            at: None,
        });
    }
    let mut v = content;
    for part in package.rsplit('.') {
        let mut m = Mapping::new();
        m.insert(Value::String(part.to_string()), v);
        v = Value::Mapping(m);
    }
    Ok(v)
}

/// True when merging `src` into `dest` would add a key that `dest` does not have
/// (forbidden in struct mode).
fn adds_keys(dest: &Value, src: &Value) -> Option<String> {
    match (dest, src) {
        (Value::Mapping(d), Value::Mapping(s)) => {
            for (k, v) in s {
                let ks = crate::value::scalar_to_string(k);
                match crate::value::map_get(d, &ks) {
                    None => return Some(ks),
                    Some(dv) => {
                        if let Some(sub) = adds_keys(dv, v) {
                            return Some(format!("{ks}.{sub}"));
                        }
                    }
                }
            }
            None
        }
        _ => None,
    }
}

/// `OmegaConf.update(cfg, key, value, merge=True, force_add=...)` in struct mode.
fn update(
    cfg: &mut Value,
    o: &Override,
    path: &[String],
    value: Value,
    force_add: bool,
) -> Result<(), ConfigError> {
    let missing = || ConfigError::OverrideKeyMissing {
        text: o.text.clone(),
        key: o.key.clone(),
    };
    let apply_err = |message: String| ConfigError::OverrideApply {
        text: o.text.clone(),
        message,
    };
    let (last, parents) = path.split_last().ok_or_else(missing)?;
    let mut root = cfg;
    for (i, k) in parents.iter().enumerate() {
        let here = parents[..=i].join(".");
        let exists_as_container = child(root, k).is_some_and(is_container);
        if !exists_as_container {
            if !force_add {
                return Err(missing());
            }
            match root {
                Value::Mapping(m) => {
                    let key = match crate::value::map_get(m, k) {
                        Some(_) if m.contains_key(k.as_str()) => Value::String(k.clone()),
                        Some(_) => crate::value::alt_key(k).unwrap_or(Value::String(k.clone())),
                        None => Value::String(k.clone()),
                    };
                    m.insert(key, Value::Mapping(Mapping::new()));
                }
                Value::Sequence(s) => {
                    let idx: usize = k
                        .parse()
                        .map_err(|_| apply_err(format!("'{here}': '{k}' is not a list index")))?;
                    let slot = s.get_mut(idx).ok_or_else(|| {
                        apply_err(format!("'{here}': list index {idx} is out of range"))
                    })?;
                    *slot = Value::Mapping(Mapping::new());
                }
                _ => return Err(apply_err(format!("'{here}' is not a container"))),
            }
        }
        root = child_mut(root, k).expect("container just ensured");
    }
    if is_container(&value) {
        if let Some(node) = child_mut(root, last) {
            if is_container(node) {
                if !force_add {
                    if let Some(k) = adds_keys(node, &value) {
                        return Err(ConfigError::OverrideKeyMissing {
                            text: o.text.clone(),
                            key: format!("{}.{k}", o.key),
                        });
                    }
                }
                merge_into(node, value);
                return Ok(());
            }
        }
    }
    match root {
        Value::Mapping(m) => {
            if let Some(slot) = crate::value::map_get_mut(m, last) {
                *slot = value;
            } else if force_add {
                m.insert(Value::String(last.clone()), value);
            } else {
                return Err(missing());
            }
        }
        Value::Sequence(s) => {
            let idx: usize = last
                .parse()
                .map_err(|_| apply_err(format!("'{last}' is not a list index in '{}'", o.key)))?;
            let len = s.len();
            let slot = s.get_mut(idx).ok_or_else(|| {
                apply_err(format!(
                    "list index {idx} is out of range in '{}' (length {len})",
                    o.key
                ))
            })?;
            *slot = value;
        }
        _ => return Err(apply_err(format!("'{}' is not inside a container", o.key))),
    }
    Ok(())
}

fn apply_config_override(cfg: &mut Value, o: &Override, repo: &Repo) -> Result<(), ConfigError> {
    if o.package.is_some() {
        let groups = repo.subgroups(
            o.key
                .rsplit_once('/')
                .map(|(parent, _)| parent)
                .unwrap_or(""),
        );
        let suggestion = closest(&o.key, &groups)
            .map(|s| format!(" Did you mean '{s}'?"))
            .unwrap_or_default();
        return Err(ConfigError::OverrideApply {
            text: o.text.clone(),
            message: format!(
                "it looks like a config group override, but config group '{}' does not exist.{suggestion}",
                o.key
            ),
        });
    }
    let path = split_key(&o.key);
    // Hydra's own `hydra` node has a schema we do not carry; overrides under it may add keys.
    let under_hydra = path.first().is_some_and(|p| p == "hydra");
    match o.kind {
        OverrideKind::Delete => {
            let current = get_path(cfg, &path);
            let exists = matches!(current, Some(v) if !v.is_null() && !is_missing(v));
            if !exists {
                return Err(ConfigError::DeleteKeyMissing {
                    text: o.text.clone(),
                    key: o.key.clone(),
                });
            }
            if let Some(expected) = &o.value {
                let actual = current.expect("exists");
                if !values_equal(actual, expected) {
                    return Err(ConfigError::DeleteValueMismatch {
                        text: o.text.clone(),
                        key: o.key.clone(),
                        actual: flow(actual),
                        expected: flow(expected),
                    });
                }
            }
            let (last, parents) = path.split_last().expect("non-empty key");
            let parent = crate::value::get_path_mut(cfg, parents).expect("parent exists");
            match parent {
                Value::Mapping(m) => {
                    let removed = m.shift_remove(last.as_str());
                    if removed.is_none() {
                        if let Some(ak) = crate::value::alt_key(last) {
                            m.shift_remove(&ak);
                        }
                    }
                }
                Value::Sequence(s) => {
                    let idx: usize = last.parse().expect("index resolved by get_path");
                    s.remove(idx);
                }
                _ => {}
            }
            Ok(())
        }
        OverrideKind::Add => {
            let value = o.value.clone().unwrap_or(Value::Null);
            let current = get_path(cfg, &path);
            let absent =
                matches!(current, None | Some(Value::Null)) || current.is_some_and(is_missing);
            if absent || is_container(&value) {
                update(cfg, o, &path, value, true)
            } else {
                Err(ConfigError::AppendKeyExists {
                    text: o.text.clone(),
                    key: o.key.clone(),
                })
            }
        }
        OverrideKind::ForceAdd => {
            update(cfg, o, &path, o.value.clone().unwrap_or(Value::Null), true)
        }
        OverrideKind::Change => update(
            cfg,
            o,
            &path,
            o.value.clone().unwrap_or(Value::Null),
            under_hydra,
        ),
    }
}

/// Equality as Python compares an override value with a config value (1 == 1.0).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}
