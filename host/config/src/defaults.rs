//! The defaults tree, a port of Hydra 1.3's `hydra/_internal/defaults_list.py` and
//! `hydra/core/default_element.py` (version_base >= 1.2 semantics).

use std::collections::{BTreeSet, HashMap};

use crate::overrides::{Override, OverrideKind};
use crate::repo::{Repo, EMPTY_PRIMARY, HYDRA_CONFIG};
use crate::ConfigError;

/// The option(s) chosen for a group default.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum GroupValue {
    /// `group: null`: nothing is loaded.
    None,
    /// `group: option`.
    Name(String),
    /// `group: [a, b]`: every option is loaded at the same package.
    Options(Vec<String>),
}

/// The two kinds of defaults-list entries.
#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A plain config include (`- db/mysql`, `- _self_`).
    Config { path: String },
    /// A group default (`- method: dummy`).
    Group {
        group: String,
        value: GroupValue,
        is_override: bool,
        external_append: bool,
    },
}

/// One entry of a defaults list, with the context Hydra attaches while building the tree.
#[derive(Debug, Clone)]
pub(crate) struct InputDefault {
    pub kind: Kind,
    pub package: Option<String>,
    pub optional: bool,
    pub primary: bool,
    pub deleted: bool,
    parent_base_dir: Option<String>,
    parent_package: Option<String>,
    package_header: Option<String>,
}

impl InputDefault {
    pub fn new(kind: Kind, package: Option<String>) -> Self {
        let package = match package {
            Some(p) if p == "_here_" => Some(String::new()),
            p => p,
        };
        InputDefault {
            kind,
            package,
            optional: false,
            primary: false,
            deleted: false,
            parent_base_dir: None,
            parent_package: None,
            package_header: None,
        }
    }

    pub fn is_self(&self) -> bool {
        match &self.kind {
            Kind::Config { path } => path == "_self_",
            Kind::Group { value, .. } => matches!(value, GroupValue::Name(n) if n == "_self_"),
        }
    }

    pub fn is_override(&self) -> bool {
        matches!(
            self.kind,
            Kind::Group {
                is_override: true,
                ..
            }
        )
    }

    fn is_external_append(&self) -> bool {
        matches!(
            self.kind,
            Kind::Group {
                external_append: true,
                ..
            }
        )
    }

    fn base_dir(&self) -> &str {
        self.parent_base_dir.as_deref().unwrap_or("")
    }

    pub fn group_path(&self) -> String {
        match &self.kind {
            Kind::Config { path } => {
                let (p, absolute) = match path.strip_prefix('/') {
                    Some(p) => (p, true),
                    None => (path.as_str(), false),
                };
                let group = match p.rfind('/') {
                    Some(i) => &p[..i],
                    None => "",
                };
                if absolute || self.base_dir().is_empty() {
                    group.to_string()
                } else if group.is_empty() {
                    self.base_dir().to_string()
                } else {
                    format!("{}/{group}", self.base_dir())
                }
            }
            Kind::Group { group, .. } => match group.strip_prefix('/') {
                Some(g) => g.to_string(),
                None if self.base_dir().is_empty() => group.clone(),
                None => format!("{}/{group}", self.base_dir()),
            },
        }
    }

    pub fn name(&self) -> Option<String> {
        match &self.kind {
            Kind::Config { path } => Some(match path.rfind('/') {
                Some(i) => path[i + 1..].to_string(),
                None => path.clone(),
            }),
            Kind::Group { value, .. } => match value {
                GroupValue::Name(n) => Some(n.clone()),
                _ => None,
            },
        }
    }

    pub fn config_path(&self) -> String {
        match &self.kind {
            Kind::Config { path } => match path.strip_prefix('/') {
                Some(p) => p.to_string(),
                None if self.base_dir().is_empty() => path.clone(),
                None => format!("{}/{path}", self.base_dir()),
            },
            Kind::Group { .. } => {
                format!("{}/{}", self.group_path(), self.name().unwrap_or_default())
            }
        }
    }

    fn default_package(&self) -> String {
        self.group_path().replace('/', ".")
    }

    fn relative_group_path(&self) -> String {
        match &self.kind {
            Kind::Config { path } => {
                let p = path.trim_start_matches('/');
                match p.rfind('/') {
                    Some(i) => p[..i].to_string(),
                    None => String::new(),
                }
            }
            Kind::Group { group, .. } => group.trim_start_matches('/').to_string(),
        }
    }

    fn get_package(&self, default_to_header: bool) -> Option<String> {
        if self.package.is_none() && default_to_header {
            self.package_header.clone()
        } else {
            self.package.clone()
        }
    }

    fn final_package_impl(&self, default_to_header: bool) -> String {
        let parent = self.parent_package.as_deref().unwrap_or("");
        let package = self
            .get_package(default_to_header)
            .unwrap_or_else(|| self.relative_group_path().replace('/', "."));
        let ret = if parent.is_empty() {
            package
        } else if package.is_empty() {
            parent.to_string()
        } else {
            format!("{parent}.{package}")
        };
        match ret.rfind("_global_") {
            None => ret,
            Some(i) => ret
                .get(i + "_global_".len() + 1..)
                .unwrap_or("")
                .to_string(),
        }
    }

    pub fn final_package(&self) -> String {
        self.final_package_impl(true)
    }

    pub fn override_key(&self) -> String {
        let default_pkg = self.default_package();
        let mut final_pkg = self.final_package_impl(false);
        let key = self.group_path();
        if default_pkg != final_pkg {
            if final_pkg.is_empty() {
                final_pkg = "_global_".into();
            }
            format!("{key}@{final_pkg}")
        } else {
            key
        }
    }

    fn update_parent(&mut self, base_dir: &str, package: &str) {
        self.parent_base_dir = Some(base_dir.to_string());
        self.parent_package = Some(package.to_string());
        if let Some(p) = &self.package {
            if p.contains("_group_") {
                let resolved = p.replace("_group_", &self.default_package());
                self.package = Some(format!("_global_.{resolved}"));
            }
        }
    }

    fn set_package_header(&mut self, header: Option<&str>) {
        let Some(h) = header else { return };
        let h = if h != "_global_" && !h.starts_with("_global_.") {
            if h.is_empty() {
                "_global_".to_string()
            } else {
                format!("_global_.{h}")
            }
        } else {
            h.to_string()
        };
        self.package_header = Some(h);
    }

    fn is_missing(&self) -> bool {
        self.name().as_deref() == Some("???")
    }

    fn is_interpolation(&self) -> bool {
        match &self.kind {
            Kind::Config { path } => path.contains("${"),
            Kind::Group { value, .. } => matches!(value, GroupValue::Name(n) if n.contains("${")),
        }
    }
}

/// A node of the defaults tree.
#[derive(Debug)]
pub(crate) struct Tree {
    pub node: InputDefault,
    pub children: Option<Vec<Child>>,
}

/// A child in the defaults tree: a leaf default or a subtree.
#[derive(Debug)]
pub(crate) enum Child {
    Leaf(InputDefault),
    Sub(Tree),
}

/// One element of the final defaults list: a config to load and where to put it.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultDefault {
    /// The config path, e.g. `method/dummy`.
    pub config_path: String,
    /// The package (dotted key) the config's content is merged at; empty for the root.
    pub package: String,
    /// The config that listed it (None for the primary).
    pub parent: Option<String>,
    /// True for a `_self_` entry (the content of a config that has its own defaults list).
    pub is_self: bool,
    /// True for the primary config.
    pub primary: bool,
    /// The override key of a group default, e.g. `modelpool` or `dataset/test@test_datasets`.
    pub override_key: Option<String>,
}

struct OverrideChoice {
    key: String,
    value: GroupValue,
    external_text: Option<String>,
    containing_config: Option<String>,
    used: bool,
}

struct Deletion {
    key: String,
    name: Option<String>,
    text: String,
    used: bool,
}

/// Hydra's `Overrides` helper: group choices from the command line and `override` directives.
pub(crate) struct Overrides {
    choices: Vec<OverrideChoice>,
    appends: Vec<InputDefault>,
    deletions: Vec<Deletion>,
    known_choices: Vec<(String, Option<String>)>,
    known_choices_per_group: HashMap<String, BTreeSet<String>>,
}

fn group_value_of(o: &Override) -> Result<GroupValue, ConfigError> {
    use serde_norway::Value;
    match &o.value {
        Some(Value::String(s)) => Ok(GroupValue::Name(s.clone())),
        Some(Value::Sequence(items)) => {
            let mut out = Vec::new();
            for i in items {
                match i {
                    Value::String(s) => out.push(s.clone()),
                    _ => {
                        return Err(ConfigError::OverrideSyntax {
                            text: o.text.clone(),
                            message: "a list of config group options must contain names only"
                                .into(),
                        })
                    }
                }
            }
            Ok(GroupValue::Options(out))
        }
        Some(other) => Err(ConfigError::OverrideSyntax {
            text: o.text.clone(),
            message: format!(
                "config group override must be an option name or a list of names, got {}",
                crate::value::flow(other)
            ),
        }),
        None => Err(ConfigError::OverrideSyntax {
            text: o.text.clone(),
            message: "missing value".into(),
        }),
    }
}

impl Overrides {
    /// Builds the helper from the group overrides (already classified by the caller).
    pub fn new(group_overrides: &[Override]) -> Result<Self, ConfigError> {
        let mut s = Overrides {
            choices: Vec::new(),
            appends: Vec::new(),
            deletions: Vec::new(),
            known_choices: Vec::new(),
            known_choices_per_group: HashMap::new(),
        };
        for o in group_overrides {
            match o.kind {
                OverrideKind::ForceAdd => {
                    return Err(ConfigError::UnsupportedOverride {
                        text: o.text.clone(),
                        message: "force-add (++) of config groups is not supported (as in Hydra)"
                            .into(),
                    })
                }
                OverrideKind::Delete => {
                    let name = match &o.value {
                        None => None,
                        Some(serde_norway::Value::String(s)) => Some(s.clone()),
                        Some(other) => {
                            return Err(ConfigError::OverrideSyntax {
                                text: o.text.clone(),
                                message: format!(
                                    "config group deletion value must be an option name, got {}",
                                    crate::value::flow(other)
                                ),
                            })
                        }
                    };
                    s.deletions.push(Deletion {
                        key: o.key_with_package(),
                        name,
                        text: o.text.clone(),
                        used: false,
                    });
                }
                OverrideKind::Add => {
                    let value = group_value_of(o)?;
                    let mut d = InputDefault::new(
                        Kind::Group {
                            group: o.key.clone(),
                            value,
                            is_override: false,
                            external_append: true,
                        },
                        o.package.clone(),
                    );
                    d.optional = false;
                    s.appends.push(d);
                }
                OverrideKind::Change => {
                    let value = group_value_of(o)?;
                    let key = o.key_with_package();
                    s.choices.retain(|c| c.key != key);
                    s.choices.push(OverrideChoice {
                        key,
                        value,
                        external_text: Some(o.text.clone()),
                        containing_config: None,
                        used: false,
                    });
                }
            }
        }
        Ok(s)
    }

    fn add_override(&mut self, parent_config_path: &str, d: &InputDefault) {
        let key = d.override_key();
        if self.choices.iter().any(|c| c.key == key) {
            return;
        }
        let Kind::Group { value, .. } = &d.kind else {
            return;
        };
        self.choices.push(OverrideChoice {
            key,
            value: value.clone(),
            external_text: None,
            containing_config: Some(parent_config_path.to_string()),
            used: false,
        });
    }

    fn override_default_option(&mut self, d: &mut InputDefault) {
        if !matches!(d.kind, Kind::Group { .. }) {
            return;
        }
        let key = d.override_key();
        if let Some(c) = self.choices.iter_mut().find(|c| c.key == key) {
            if let Kind::Group { value, .. } = &mut d.kind {
                *value = c.value.clone();
            }
            c.used = true;
        }
    }

    fn ensure_overrides_used(&self) -> Result<(), ConfigError> {
        for c in &self.choices {
            if c.used {
                continue;
            }
            let group = c.key.split('@').next().unwrap_or("");
            let choices: Vec<String> = self
                .known_choices_per_group
                .get(group)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default();
            return Err(ConfigError::GroupNotInDefaults {
                text: c.external_text.clone(),
                key: c.key.clone(),
                containing_config: c.containing_config.clone(),
                choices,
            });
        }
        Ok(())
    }

    fn ensure_deletions_used(&self) -> Result<(), ConfigError> {
        for d in &self.deletions {
            if !d.used {
                return Err(ConfigError::GroupDeleteNotInDefaults {
                    text: d.text.clone(),
                    key: match &d.name {
                        Some(n) => format!("{}={n}", d.key),
                        None => d.key.clone(),
                    },
                });
            }
        }
        Ok(())
    }

    fn set_known_choice(&mut self, d: &InputDefault) -> Result<(), ConfigError> {
        if !matches!(d.kind, Kind::Group { .. }) {
            return Ok(());
        }
        let key = d.override_key();
        let name = d.name();
        match self.known_choices.iter().find(|(k, _)| *k == key) {
            None => self.known_choices.push((key.clone(), name)),
            Some((_, prev)) => {
                if *prev != name {
                    return Err(ConfigError::DefaultsComposition {
                        config: None,
                        message: format!(
                            "multiple values for {key}. To override a value use 'override {key}: {}'",
                            prev.as_deref().unwrap_or("null")
                        ),
                    });
                }
            }
        }
        self.known_choices_per_group
            .entry(d.group_path())
            .or_default()
            .insert(key);
        Ok(())
    }

    fn is_deleted(&self, d: &InputDefault) -> bool {
        if !matches!(d.kind, Kind::Group { .. }) {
            return false;
        }
        let key = d.override_key();
        match self.deletions.iter().find(|x| x.key == key) {
            None => false,
            Some(del) => match &del.name {
                None => true,
                Some(n) => Some(n) == d.name().as_ref(),
            },
        }
    }

    fn delete(&mut self, d: &mut InputDefault) {
        d.deleted = true;
        let key = d.override_key();
        if let Some(del) = self.deletions.iter_mut().find(|x| x.key == key) {
            del.used = true;
        }
    }

    /// The group choices that were made, in the order Hydra first saw them
    /// (override key → option, None for `null`).
    pub fn known_choices(&self) -> &[(String, Option<String>)] {
        &self.known_choices
    }
}

/// Builds the defaults tree and flattens it into the final defaults list.
pub(crate) struct Builder<'a> {
    pub repo: &'a mut Repo,
    pub overrides: Overrides,
    /// The config paths being expanded, outermost first: a config that lists one of them again
    /// would expand forever.
    pub expanding: Vec<String>,
}

impl Builder<'_> {
    fn config_not_found(&self, node: &InputDefault, parent: Option<&str>) -> ConfigError {
        let path = node.config_path();
        if node.primary {
            return ConfigError::PrimaryNotFound {
                name: path,
                search_path: self.repo.roots().to_vec(),
            };
        }
        match &node.kind {
            Kind::Group { .. } => {
                let group = node.group_path();
                let options = self.repo.group_options_recursive(&group);
                let name = node.name().unwrap_or_default();
                let suggestion = closest(&name, &options);
                ConfigError::ConfigNotFound {
                    config_path: path,
                    parent: parent.map(str::to_string),
                    group: Some(group),
                    options,
                    suggestion,
                }
            }
            Kind::Config { .. } => {
                let group = node.group_path();
                let options = self.repo.group_options(&group);
                let suggestion = closest(&node.name().unwrap_or_default(), &options).map(|s| {
                    if group.is_empty() {
                        s
                    } else {
                        format!("{group}/{s}")
                    }
                });
                ConfigError::ConfigNotFound {
                    config_path: path,
                    parent: parent.map(str::to_string),
                    group: None,
                    options: Vec::new(),
                    suggestion,
                }
            }
        }
    }

    /// `_create_defaults_tree_impl`.
    pub fn create_tree(
        &mut self,
        mut node: InputDefault,
        parent_path: Option<&str>,
        is_root: bool,
        interpolated: bool,
    ) -> Result<Tree, ConfigError> {
        let leaf = |node| {
            Ok(Tree {
                node,
                children: None,
            })
        };
        if is_root {
            node.update_parent("", "");
            if !self.repo.config_exists(&node.config_path()) {
                return Err(self.config_not_found(&node, parent_path));
            }
        }
        // update_package_header
        if !node.is_missing() && node.name().is_some() {
            if let Some(l) = self.repo.load(&node.config_path())? {
                node.set_package_header(l.header_package.as_deref());
            }
        }
        if self.overrides.is_deleted(&node) {
            self.overrides.delete(&mut node);
            return leaf(node);
        }
        self.overrides.set_known_choice(&node)?;
        if node.name().is_none() {
            return leaf(node);
        }
        if node.is_missing() {
            let key = node.override_key();
            return Err(ConfigError::MissingGroupChoice {
                options: self.repo.group_options_recursive(&node.group_path()),
                key,
            });
        }
        let path = node.config_path();
        let Some(loaded) = self.repo.load(&path)? else {
            if node.optional {
                node.deleted = true;
                return leaf(node);
            }
            return Err(self.config_not_found(&node, parent_path));
        };
        let same = |a: &str, b: &str| a.trim_start_matches('/') == b.trim_start_matches('/');
        if let Some(start) = self.expanding.iter().position(|p| same(p, &path)) {
            let chain = self.expanding[start..]
                .iter()
                .chain(std::iter::once(&path))
                .map(|p| match self.repo.find_file(p) {
                    Some(f) => f.display().to_string(),
                    None => p.clone(),
                })
                .collect();
            return Err(ConfigError::DefaultsCycle { chain });
        }
        if self.expanding.len() >= crate::value::MAX_DEPTH {
            // Distinct paths that still nest without end (`a/../a/x` spellings of one file).
            return Err(ConfigError::TooDeep {
                what: format!("the defaults lists starting at '{}'", self.expanding[0]),
                limit: crate::value::MAX_DEPTH,
                at: Some(crate::overrides::abbreviate(&path)),
            });
        }
        self.expanding.push(path.clone());
        let tree = self.expand(node, loaded, &path, is_root, interpolated);
        self.expanding.pop();
        tree
    }

    /// The rest of `create_tree`: the node's own defaults list, expanded.
    fn expand(
        &mut self,
        node: InputDefault,
        loaded: std::rc::Rc<crate::repo::Loaded>,
        path: &str,
        is_root: bool,
        interpolated: bool,
    ) -> Result<Tree, ConfigError> {
        let path = path.to_string();
        let mut defaults = loaded.defaults.clone().unwrap_or_default();
        if !defaults.is_empty() || (is_root && !self.overrides.appends.is_empty()) {
            validate_self(&path, &mut defaults)?;
        }
        if is_root {
            defaults.append(&mut self.overrides.appends);
        }
        self.update_overrides(&mut defaults, &node, interpolated)?;

        let group_path = node.group_path();
        let final_package = node.final_package();
        let mut children: Vec<Child> = Vec::new();
        let mut deferred = Vec::new();
        for mut d in defaults.clone().into_iter().rev() {
            if d.is_self() {
                d.update_parent(node.base_dir(), &node.get_package(true).unwrap_or_default());
                children.push(Child::Leaf(d));
                continue;
            }
            if d.is_override() {
                continue;
            }
            d.update_parent(&group_path, &final_package);
            self.overrides.override_default_option(&mut d);
            if let Kind::Group {
                group,
                value: GroupValue::Options(options),
                ..
            } = &d.kind
            {
                for item in options.iter().rev() {
                    if item.contains("${") {
                        return Err(ConfigError::DefaultsComposition {
                            config: Some(path.clone()),
                            message: format!(
                                "defaults list interpolation is not supported in options list items ('{item}' of group '{group}')"
                            ),
                        });
                    }
                    let mut n = InputDefault::new(
                        Kind::Config {
                            path: format!("{group}/{item}"),
                        },
                        d.package.clone(),
                    );
                    n.optional = d.optional;
                    n.update_parent(&group_path, &final_package);
                    self.add_child(&mut children, n, &path, interpolated)?;
                }
            } else if d.is_interpolation() {
                deferred.push(children.len());
                children.push(Child::Leaf(d));
            } else {
                self.add_child(&mut children, d, &path, interpolated)?;
            }
        }

        // Deferred interpolations in the defaults list (`db: ${platform}_db`).
        for idx in deferred {
            let Child::Leaf(d) = &children[idx] else {
                continue;
            };
            let mut d = d.clone();
            self.resolve_default_interpolation(&mut d)?;
            d.update_parent(&group_path, &final_package);
            let sub = self.create_tree(d, Some(&path), false, true)?;
            children[idx] = if sub.children.is_some() {
                Child::Sub(sub)
            } else {
                Child::Leaf(sub.node)
            };
        }

        children.reverse();
        Ok(Tree {
            node,
            children: if children.is_empty() {
                None
            } else {
                Some(children)
            },
        })
    }

    /// Resolves `${group}` in a defaults-list entry from the choices made so far (Hydra's
    /// deferred defaults-list interpolation, limited to plain `${key}` references).
    fn resolve_default_interpolation(&self, d: &mut InputDefault) -> Result<(), ConfigError> {
        let text = match &d.kind {
            Kind::Config { path } => path.clone(),
            Kind::Group {
                value: GroupValue::Name(n),
                ..
            } => n.clone(),
            _ => return Ok(()),
        };
        let mut out = String::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let Some(j) = rest[i..].find('}') else { break };
            let key = rest[i + 2..i + j].trim();
            let val = self
                .overrides
                .known_choices
                .iter()
                .find(|(k, _)| k == key)
                .and_then(|(_, v)| v.clone());
            match val {
                Some(v) => out.push_str(&v),
                None => {
                    let keys: Vec<String> = self
                        .overrides
                        .known_choices
                        .iter()
                        .map(|(k, _)| k.clone())
                        .collect();
                    return Err(ConfigError::DefaultsComposition {
                        config: None,
                        message: format!(
                            "error resolving interpolation '{text}', possible interpolation keys: {}",
                            keys.join(", ")
                        ),
                    });
                }
            }
            rest = &rest[i + j + 1..];
        }
        out.push_str(rest);
        match &mut d.kind {
            Kind::Config { path } => *path = out,
            Kind::Group { value, .. } => *value = GroupValue::Name(out),
        }
        Ok(())
    }

    fn add_child(
        &mut self,
        children: &mut Vec<Child>,
        node: InputDefault,
        parent_path: &str,
        interpolated: bool,
    ) -> Result<(), ConfigError> {
        let sub = self.create_tree(node, Some(parent_path), false, interpolated)?;
        children.push(if sub.children.is_some() {
            Child::Sub(sub)
        } else {
            Child::Leaf(sub.node)
        });
        Ok(())
    }

    /// `_update_overrides`: registers `override` directives and checks their placement.
    fn update_overrides(
        &mut self,
        defaults: &mut [InputDefault],
        parent: &InputDefault,
        interpolated: bool,
    ) -> Result<(), ConfigError> {
        let mut last_override: Option<InputDefault> = None;
        let group_path = parent.group_path();
        let final_package = parent.final_package();
        let parent_path = parent.config_path();
        for d in defaults.iter_mut() {
            if d.is_self() {
                continue;
            }
            d.update_parent(&group_path, &final_package);
            if let Some(lo) = &last_override {
                if !(d.is_override() || d.is_external_append()) {
                    return Err(ConfigError::DefaultsComposition {
                        config: Some(parent_path.clone()),
                        message: format!(
                            "override '{} : {}' is defined before '{}: {}'. Overrides must be at the end of the defaults list",
                            lo.override_key(),
                            lo.name().unwrap_or_default(),
                            d.override_key(),
                            d.name().unwrap_or_default()
                        ),
                    });
                }
            }
            if d.is_override() {
                last_override = Some(d.clone());
                if interpolated {
                    return Err(ConfigError::DefaultsComposition {
                        config: Some(parent_path.clone()),
                        message: format!(
                            "default list overrides are not allowed in the subtree of an interpolated config group (override {}={})",
                            d.override_key(),
                            d.name().unwrap_or_default()
                        ),
                    });
                }
                self.overrides.add_override(&parent_path, d);
            }
        }
        Ok(())
    }

    /// Builds the tree for the primary config, flattens it, and checks every override was used.
    pub fn build(
        mut self,
        config_name: Option<&str>,
    ) -> Result<(Vec<ResultDefault>, Overrides), ConfigError> {
        let mut primary = InputDefault::new(
            Kind::Config {
                path: config_name.unwrap_or(EMPTY_PRIMARY).to_string(),
            },
            None,
        );
        primary.primary = true;
        // Hydra's virtual root is `[hydra/config, primary]`, expanded last to first: the primary's
        // `override` directives (e.g. `override help: ...` in a `hydra/default.yaml`) are known
        // before Hydra's own defaults are expanded; the flattened list puts Hydra's first.
        let tree = self.create_tree(primary, None, true, false)?;
        let mut hydra = InputDefault::new(
            Kind::Config {
                path: HYDRA_CONFIG.into(),
            },
            None,
        );
        hydra.update_parent("", "");
        let hydra_tree = self.create_tree(hydra, None, false, false)?;
        let mut out = Vec::new();
        dfs(&hydra_tree, None, &mut out);
        dfs(&tree, None, &mut out);
        let mut seen = BTreeSet::new();
        for r in &out {
            if r.is_self {
                continue;
            }
            if let Some(k) = &r.override_key {
                if !seen.insert(k.clone()) {
                    return Err(ConfigError::DefaultsComposition {
                        config: r.parent.clone(),
                        message: format!("{k} appears more than once in the final defaults list"),
                    });
                }
            }
        }
        self.overrides.ensure_overrides_used()?;
        self.overrides.ensure_deletions_used()?;
        Ok((out, self.overrides))
    }
}

/// `_validate_self`: checks `_self_` appears at most once and appends it when absent
/// (Hydra 1.1+: a config's own content goes after its defaults unless `_self_` says otherwise).
fn validate_self(config_path: &str, defaults: &mut Vec<InputDefault>) -> Result<(), ConfigError> {
    let mut has_self = false;
    let mut has_non_override = false;
    for d in defaults.iter() {
        if !d.is_override() {
            has_non_override = true;
        }
        if d.is_self() {
            if has_self {
                return Err(ConfigError::DefaultsComposition {
                    config: Some(config_path.to_string()),
                    message: format!("duplicate _self_ defined in {config_path}"),
                });
            }
            has_self = true;
        }
    }
    if (!has_self && has_non_override) || defaults.is_empty() {
        defaults.push(InputDefault::new(
            Kind::Config {
                path: "_self_".into(),
            },
            None,
        ));
    }
    Ok(())
}

fn dfs(tree: &Tree, parent: Option<&Tree>, out: &mut Vec<ResultDefault>) {
    match &tree.children {
        None => collect(parent, &tree.node, out),
        Some(ch) if ch.is_empty() => collect(parent, &tree.node, out),
        Some(ch) => {
            for c in ch {
                match c {
                    Child::Leaf(d) => collect(Some(tree), d, out),
                    Child::Sub(t) => dfs(t, Some(tree), out),
                }
            }
        }
    }
}

fn collect(tree: Option<&Tree>, node: &InputDefault, out: &mut Vec<ResultDefault>) {
    if node.deleted || node.is_missing() || node.name().is_none() {
        return;
    }
    let r = if node.is_self() {
        let Some(t) = tree else { return };
        ResultDefault {
            config_path: t.node.config_path(),
            package: t.node.final_package(),
            parent: None,
            is_self: true,
            primary: t.node.primary,
            override_key: None,
        }
    } else {
        ResultDefault {
            config_path: node.config_path(),
            package: node.final_package(),
            parent: tree.map(|t| t.node.config_path()),
            is_self: false,
            primary: node.primary,
            override_key: match node.kind {
                Kind::Group { .. } => Some(node.override_key()),
                Kind::Config { .. } => None,
            },
        }
    };
    if r.config_path == EMPTY_PRIMARY {
        return;
    }
    out.push(r);
}

/// The option closest to `name` (Jaro-Winkler ≥ 0.8 or edit distance ≤ 3), if any.
pub(crate) fn closest(name: &str, options: &[String]) -> Option<String> {
    options
        .iter()
        .map(|o| {
            (
                strsim::jaro_winkler(name, o),
                strsim::levenshtein(name, o),
                o,
            )
        })
        .filter(|(j, l, _)| *j >= 0.8 || *l <= 3)
        .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal))
        .map(|(_, _, o)| o.clone())
}
