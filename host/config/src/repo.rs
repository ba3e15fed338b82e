//! The config repository: a search path of config roots, YAML loading with caching, and the
//! parsing of `defaults:` lists.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use serde_norway::{Mapping, Value};

use crate::defaults::{GroupValue, InputDefault, Kind};
use crate::value::flow;
use crate::ConfigError;

/// Name of the implicit empty primary config (used when no config name is given).
pub(crate) const EMPTY_PRIMARY: &str = "_dummy_empty_config_";

/// Hydra's own config (`HydraConf`), composed beside the primary config as Hydra's virtual root
/// does, so that `override help: ...` in a user's `hydra/default.yaml` and `hydra/job_logging=...`
/// on the command line find the groups they override.
pub(crate) const HYDRA_CONFIG: &str = "hydra/config";

/// `HydraConf.defaults` of hydra-core 1.3 (`hydra/conf/__init__.py`).
const HYDRA_CONFIG_DEFAULTS: &str = "[{output: default}, {launcher: basic}, {sweeper: basic}, \
    {help: default}, {hydra_help: default}, {hydra_logging: default}, {job_logging: default}, \
    {callbacks: null}, {env: default}]";

/// Hydra's built-in config groups and their options (hydra-core 1.3's `hydra/conf/hydra/` and the
/// basic launcher and sweeper). They configure Hydra itself (logging, help text, launchers), which
/// fusion-host does not use: choosing them is accepted and recorded, their content is not composed.
/// An option that a config root provides (e.g. FusionBench's `hydra/help/fusion_bench_help.yaml`)
/// is composed like any config.
const HYDRA_BUILTIN_GROUPS: &[(&str, &[&str])] = &[
    ("hydra/output", &["default"]),
    ("hydra/launcher", &["basic"]),
    ("hydra/sweeper", &["basic"]),
    ("hydra/help", &["default"]),
    ("hydra/hydra_help", &["default"]),
    (
        "hydra/hydra_logging",
        &["default", "disabled", "hydra_debug", "none"],
    ),
    (
        "hydra/job_logging",
        &["default", "disabled", "none", "stdout"],
    ),
    ("hydra/callbacks", &[]),
    ("hydra/env", &["default"]),
];

/// True for one of Hydra's own configs (content not composed; see [`HYDRA_BUILTIN_GROUPS`]).
fn is_hydra_builtin(config_path: &str) -> bool {
    let Some((group, option)) = config_path.rsplit_once('/') else {
        return false;
    };
    HYDRA_BUILTIN_GROUPS
        .iter()
        .any(|(g, opts)| *g == group && opts.contains(&option))
}

fn hydra_builtin_options(group: &str) -> &'static [&'static str] {
    HYDRA_BUILTIN_GROUPS
        .iter()
        .find(|(g, _)| *g == group)
        .map(|(_, o)| *o)
        .unwrap_or(&[])
}

/// One loaded config file.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// The file on disk (None for the implicit empty primary).
    pub file: Option<PathBuf>,
    /// The content without its top-level `defaults` key.
    pub config: Mapping,
    /// The parsed defaults list (None when the file has no `defaults` key).
    pub defaults: Option<Vec<InputDefault>>,
    /// The `# @package` header, when present.
    pub header_package: Option<String>,
    /// True for Hydra's own configs, whose content is not composed.
    pub builtin: bool,
}

/// The config search path. Roots later in the list take precedence: a config path is looked
/// up from the last root to the first, the first hit wins. Group options are the union of
/// the options found in every root.
pub(crate) struct Repo {
    roots: Vec<PathBuf>,
    cache: HashMap<String, Option<Rc<Loaded>>>,
}

impl Repo {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Repo {
            roots,
            cache: HashMap::new(),
        }
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    fn norm(path: &str) -> &str {
        path.trim_start_matches('/')
    }

    /// The file for a config path (`method/dummy` → `<root>/method/dummy.yaml`).
    pub fn find_file(&self, config_path: &str) -> Option<PathBuf> {
        let p = Self::norm(config_path);
        // Hydra's search path starts with its own configs: they shadow the user's.
        if p.is_empty() || p == HYDRA_CONFIG || is_hydra_builtin(p) {
            return None;
        }
        self.roots.iter().rev().find_map(|root| {
            let f = root.join(format!("{p}.yaml"));
            f.is_file().then_some(f)
        })
    }

    /// True when a config exists at the config path.
    pub fn config_exists(&self, config_path: &str) -> bool {
        let p = Self::norm(config_path);
        p == EMPTY_PRIMARY
            || p == HYDRA_CONFIG
            || is_hydra_builtin(p)
            || self.find_file(config_path).is_some()
    }

    /// True when some root has a folder for this group (or it is one of Hydra's own groups).
    pub fn group_exists(&self, group: &str) -> bool {
        let g = Self::norm(group);
        !g.is_empty()
            && (g == "hydra"
                || HYDRA_BUILTIN_GROUPS.iter().any(|(h, _)| *h == g)
                || self.roots.iter().any(|r| r.join(g).is_dir()))
    }

    /// The options (config names, without `.yaml`) of a group, sorted.
    pub fn group_options(&self, group: &str) -> Vec<String> {
        self.options(group, 0)
    }

    /// The options of a group including those of its nested groups, as option names relative
    /// to the group (`CLIPVisionModelPool/clip-vit-base-patch32_TA8`), sorted.
    pub fn group_options_recursive(&self, group: &str) -> Vec<String> {
        self.options(group, 8)
    }

    /// Hydra's own options of `group` and the `.yaml` files of its folder in every root,
    /// those of subfolders too down to `depth` levels, named relative to the group.
    fn options(&self, group: &str, depth: usize) -> Vec<String> {
        fn walk(dir: &Path, prefix: &str, out: &mut BTreeSet<String>, depth: usize) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if p.is_dir() && depth > 0 {
                    walk(&p, &format!("{prefix}{name}/"), out, depth - 1);
                } else if p.is_file() && p.extension().is_some_and(|x| x == "yaml") {
                    if let Some(stem) = p.file_stem() {
                        out.insert(format!("{prefix}{}", stem.to_string_lossy()));
                    }
                }
            }
        }
        let g = Self::norm(group);
        let mut out: BTreeSet<String> = hydra_builtin_options(g)
            .iter()
            .map(|o| o.to_string())
            .collect();
        for root in &self.roots {
            walk(&root.join(g), "", &mut out, depth);
        }
        out.into_iter().collect()
    }

    /// The config groups (folders) directly under a group path ("" for the top level).
    pub fn subgroups(&self, group: &str) -> Vec<String> {
        let g = Self::norm(group);
        let mut out = BTreeSet::new();
        for root in &self.roots {
            let Ok(rd) = std::fs::read_dir(root.join(g)) else {
                continue;
            };
            for e in rd.flatten() {
                if e.path().is_dir() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    out.insert(if g.is_empty() {
                        name
                    } else {
                        format!("{g}/{name}")
                    });
                }
            }
        }
        out.into_iter().collect()
    }

    /// Loads a config by path; `Ok(None)` when no root has it.
    pub fn load(&mut self, config_path: &str) -> Result<Option<Rc<Loaded>>, ConfigError> {
        let key = Self::norm(config_path).to_string();
        if let Some(hit) = self.cache.get(&key) {
            return Ok(hit.clone());
        }
        let loaded = if key == EMPTY_PRIMARY {
            Some(Rc::new(Loaded {
                file: None,
                config: Mapping::new(),
                defaults: None,
                header_package: None,
                builtin: false,
            }))
        } else if key == HYDRA_CONFIG {
            let items: Vec<Value> =
                serde_norway::from_str(HYDRA_CONFIG_DEFAULTS).expect("valid built-in defaults");
            Some(Rc::new(Loaded {
                file: None,
                config: Mapping::new(),
                defaults: Some(parse_defaults(Path::new(HYDRA_CONFIG), &items)?),
                header_package: Some("hydra".into()),
                builtin: true,
            }))
        } else if is_hydra_builtin(&key) {
            Some(Rc::new(Loaded {
                file: None,
                config: Mapping::new(),
                defaults: None,
                header_package: None,
                builtin: true,
            }))
        } else {
            match self.find_file(&key) {
                Some(f) => Some(Rc::new(load_file(&f)?)),
                None => None,
            }
        };
        self.cache.insert(key, loaded.clone());
        Ok(loaded)
    }
}

/// Reads the `# @package` header: comment lines (and blank lines) at the top of the file.
fn header_package(text: &str) -> Option<String> {
    for line in text.lines() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        let Some(c) = l.strip_prefix('#') else { break };
        let c = c.trim();
        if let Some(rest) = c.strip_prefix("@package") {
            if rest.is_empty() || rest.starts_with(char::is_whitespace) {
                return Some(rest.trim().to_string());
            }
        }
    }
    None
}

/// Parses a YAML file into a config mapping, reporting syntax errors with file and line.
pub(crate) fn parse_yaml_file(path: &Path, text: &str) -> Result<Value, ConfigError> {
    serde_norway::from_str::<Value>(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        ConfigError::YamlSyntax {
            path: path.to_path_buf(),
            line,
            column,
            message: e.to_string(),
        }
    })
}

fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let value = parse_yaml_file(path, &text)?;
    let mut config = match value {
        Value::Null => Mapping::new(),
        Value::Mapping(m) => m,
        other => {
            return Err(ConfigError::NotAMapping {
                path: path.to_path_buf(),
                found: kind_name(&other).into(),
            })
        }
    };
    let defaults = match config.shift_remove("defaults") {
        None => None,
        Some(Value::Sequence(items)) => Some(parse_defaults(path, &items)?),
        Some(Value::Null) => Some(Vec::new()),
        Some(other) => {
            return Err(ConfigError::InvalidDefaults {
                path: path.to_path_buf(),
                entry: flow(&other),
                message: "the defaults list must be a list".into(),
            })
        }
    };
    Ok(Loaded {
        file: Some(path.to_path_buf()),
        config,
        defaults,
        header_package: header_package(&text),
        builtin: false,
    })
}

fn kind_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Splits `group@package` (Hydra's `_split_group`).
fn split_group(s: &str) -> (String, Option<String>) {
    match s.find('@') {
        Some(i) => (s[..i].to_string(), Some(s[i + 1..].to_string())),
        None => (s.to_string(), None),
    }
}

/// Parses the items of a `defaults:` list.
pub(crate) fn parse_defaults(
    path: &Path,
    items: &[Value],
) -> Result<Vec<InputDefault>, ConfigError> {
    let bad = |item: &Value, message: &str| ConfigError::InvalidDefaults {
        path: path.to_path_buf(),
        entry: flow(item),
        message: message.to_string(),
    };
    let mut out = Vec::new();
    for item in items {
        match item {
            Value::String(s) => {
                let (p, package) = split_group(s.trim());
                if p.is_empty() {
                    return Err(bad(item, "empty config path"));
                }
                if p == "_self_" && package.is_some() {
                    return Err(bad(item, "_self_@PACKAGE is not supported"));
                }
                out.push(InputDefault::new(Kind::Config { path: p }, package));
            }
            Value::Mapping(m) => {
                if m.len() != 1 {
                    return Err(bad(
                        item,
                        if m.is_empty() {
                            "missing group name"
                        } else {
                            "too many keys in default item"
                        },
                    ));
                }
                let (k, v) = m.iter().next().expect("one entry");
                let Value::String(k) = k else {
                    return Err(bad(item, "the group name must be a string"));
                };
                let mut words: Vec<&str> = k.split_whitespace().collect();
                let Some(last) = words.pop() else {
                    return Err(bad(item, "missing group name"));
                };
                let mut optional = false;
                let mut is_override = false;
                for w in words {
                    match w {
                        "optional" => optional = true,
                        "override" => is_override = true,
                        other => {
                            return Err(bad(
                                item,
                                &format!(
                                    "unknown keyword '{other}' (expected 'optional' or 'override')"
                                ),
                            ))
                        }
                    }
                }
                let (group, package) = split_group(last);
                if group.is_empty() {
                    return Err(bad(item, "missing group name"));
                }
                let value = match v {
                    Value::Null => GroupValue::None,
                    Value::String(s) => GroupValue::Name(s.clone()),
                    Value::Sequence(list) => {
                        let mut opts = Vec::new();
                        for x in list {
                            match x {
                                Value::String(s) => opts.push(s.clone()),
                                _ => {
                                    return Err(bad(
                                        item,
                                        "nested list items must be strings (option names)",
                                    ))
                                }
                            }
                        }
                        GroupValue::Options(opts)
                    }
                    _ => return Err(bad(
                        item,
                        "unsupported item value: expected an option name, a list of names or null",
                    )),
                };
                let mut d = InputDefault::new(
                    Kind::Group {
                        group,
                        value,
                        is_override,
                        external_append: false,
                    },
                    package,
                );
                d.optional = optional;
                out.push(d);
            }
            _ => return Err(bad(item, "expected a string or a one-key mapping")),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header() {
        assert_eq!(
            header_package("# @package _global_\na: 1\n").as_deref(),
            Some("_global_")
        );
        assert_eq!(
            header_package("# hello\n\n# @package foo.bar\na: 1").as_deref(),
            Some("foo.bar")
        );
        assert_eq!(header_package("a: 1\n# @package x\n"), None);
    }
}
