//! What a method returned, laid out as FusionBench's program reports it.
//!
//! A method returns one unnamed model (the merged model) or several named entries (see
//! `Algorithm::run_models`). A name is a path into the report, parts separated by `/`; a part
//! `[i]` is position i of a list. FusionBench's `evaluate_merged_model` reports a dict of models
//! as a dict of reports under the same keys (a `models` key recursing into a nested dict or
//! list), a list of models as a list of reports, and copies any other value (`metadata`) into
//! the report as it is. So TALL masks' `{"models": {"a": m, "b": m}, "metadata": None}` arrives
//! as `models/a`, `models/b` and a report value `metadata`, and is reported as
//! `{"models": {"a": report, "b": report}, "metadata": null}`.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

/// One part of an entry's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Key(String),
    Index(usize),
}

impl Part {
    /// The folder name the part gives a saved model.
    fn folder(&self) -> String {
        match self {
            Part::Key(k) => k.clone(),
            Part::Index(i) => i.to_string(),
        }
    }
}

/// The paths of several entries, checked: every part non-empty and usable as a folder name,
/// no path repeated or inside another entry, and the positions of each list 0 to n − 1 with no
/// key beside them. An error names the method and the culprit.
pub(crate) fn parse_paths(names: &[String], method: &str) -> anyhow::Result<Vec<Vec<Part>>> {
    // The method's fault, not the config's: a run failure (exit 1).
    let bad = |name: &str, why: &str| {
        anyhow::anyhow!(
            "method `{method}` returned {} models, and `{name}` cannot name one of them: {why} \
             (names are paths into the report, parts separated by `/`, each part usable as a \
             folder name, `[i]` for position i of a list)",
            names.len()
        )
    };
    let mut paths = Vec::with_capacity(names.len());
    for name in names {
        if name.is_empty() {
            return Err(bad(name, "the name is empty"));
        }
        let mut path = Vec::new();
        for part in name.split('/') {
            if part.is_empty() || part.starts_with('.') || part.contains('\\') {
                return Err(bad(
                    name,
                    &format!("the part `{part}` is not a folder name"),
                ));
            }
            let index = part
                .strip_prefix('[')
                .and_then(|p| p.strip_suffix(']'))
                .map(|i| {
                    i.parse::<usize>()
                        .map_err(|_| bad(name, &format!("`{part}` is not a list position")))
                })
                .transpose()?;
            path.push(match index {
                Some(i) => Part::Index(i),
                None => Part::Key(part.to_string()),
            });
        }
        paths.push(path);
    }
    // Check the tree shape by building it (the leaves are entry numbers).
    build(
        paths.iter().enumerate().map(|(i, p)| (p.as_slice(), i)),
        &|i: usize| Json::from(i),
    )
    .map_err(|(entry, why)| bad(&names[entry], &why))?;
    Ok(paths)
}

/// Where entry `path` is saved, given `merged_model_save_path` `dest`: the folder
/// `DEST/PART/PART...`, or `STEM_PART_PART.safetensors` beside a `.safetensors` path.
pub(crate) fn save_path(dest: &Path, path: &[Part]) -> PathBuf {
    match dest.extension() {
        Some(ext) if ext == "safetensors" => {
            let stem = dest
                .file_stem()
                .map(|s| s.to_string_lossy().to_string())
                .unwrap_or_default();
            let parts: Vec<String> = path.iter().map(Part::folder).collect();
            dest.with_file_name(format!("{stem}_{}.safetensors", parts.join("_")))
        }
        _ => path
            .iter()
            .fold(dest.to_path_buf(), |d, p| d.join(p.folder())),
    }
}

/// The report of several entries: each value put where its path says (in the order the method
/// returned them), lists built from `[i]` parts.
pub(crate) fn assemble(entries: Vec<(Vec<Part>, Json)>) -> Json {
    let values: Vec<Json> = entries.iter().map(|(_, v)| v.clone()).collect();
    build(
        entries
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (p.as_slice(), i)),
        &|i: usize| values[i].clone(),
    )
    .expect("paths checked by parse_paths")
}

/// A node of the report tree while it is built.
enum Node {
    /// Just made; the entry being inserted fills it.
    Empty,
    Leaf(usize),
    Map(Vec<(String, Node)>),
    List(Vec<(usize, Node)>),
}

/// Build the JSON tree of `entries` (path, entry number), with `leaf` giving each entry's
/// value; an error is the culprit entry's number and why.
fn build<'a>(
    entries: impl Iterator<Item = (&'a [Part], usize)>,
    leaf: &dyn Fn(usize) -> Json,
) -> Result<Json, (usize, String)> {
    let mut root = Node::Empty;
    for (path, entry) in entries {
        insert(&mut root, path, entry)?;
    }
    to_json(root, leaf)
}

fn insert(node: &mut Node, path: &[Part], entry: usize) -> Result<(), (usize, String)> {
    let Some((first, rest)) = path.split_first() else {
        return match node {
            Node::Empty => {
                *node = Node::Leaf(entry);
                Ok(())
            }
            _ => Err((
                entry,
                "the name is used twice, or holds other entries".into(),
            )),
        };
    };
    if let Node::Empty = node {
        *node = match first {
            Part::Key(_) => Node::Map(Vec::new()),
            Part::Index(_) => Node::List(Vec::new()),
        };
    }
    let child = match (node, first) {
        (Node::Leaf(_), _) => return Err((entry, "it lies inside another entry".into())),
        (Node::Map(m), Part::Key(k)) => match m.iter().position(|(name, _)| name == k) {
            Some(at) => &mut m[at].1,
            None => {
                m.push((k.clone(), Node::Empty));
                &mut m.last_mut().expect("just pushed").1
            }
        },
        (Node::List(l), Part::Index(i)) => match l.iter().position(|(at, _)| at == i) {
            Some(at) => &mut l[at].1,
            None => {
                l.push((*i, Node::Empty));
                &mut l.last_mut().expect("just pushed").1
            }
        },
        (Node::Map(_), Part::Index(_)) => {
            return Err((entry, "a list position beside keys".into()))
        }
        (Node::List(_), Part::Key(_)) => return Err((entry, "a key beside list positions".into())),
        (Node::Empty, _) => unreachable!("filled above"),
    };
    insert(child, rest, entry)
}

fn to_json(node: Node, leaf: &dyn Fn(usize) -> Json) -> Result<Json, (usize, String)> {
    Ok(match node {
        Node::Empty => Json::Null,
        Node::Leaf(i) => leaf(i),
        Node::Map(m) => Json::Object(
            m.into_iter()
                .map(|(k, v)| Ok((k, to_json(v, leaf)?)))
                .collect::<Result<serde_json::Map<String, Json>, (usize, String)>>()?,
        ),
        Node::List(mut items) => {
            items.sort_by_key(|(i, _)| *i);
            let mut out = Vec::with_capacity(items.len());
            for (expected, (i, node)) in items.into_iter().enumerate() {
                if i != expected {
                    return Err((
                        first_leaf(&node),
                        format!("list position {expected} is missing"),
                    ));
                }
                out.push(to_json(node, leaf)?);
            }
            Json::Array(out)
        }
    })
}

fn first_leaf(node: &Node) -> usize {
    match node {
        Node::Empty => 0,
        Node::Leaf(i) => *i,
        Node::Map(m) => m.first().map(|(_, n)| first_leaf(n)).unwrap_or(0),
        Node::List(l) => l.first().map(|(_, n)| first_leaf(n)).unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Each entry's report is its name, so the result shows where each one went.
    fn report(v: &[&str]) -> anyhow::Result<Json> {
        let names = names(v);
        let paths = parse_paths(&names, "m")?;
        Ok(assemble(
            paths
                .into_iter()
                .zip(&names)
                .map(|(p, n)| (p, json!(n)))
                .collect(),
        ))
    }

    /// TSV-M's flat dict, TALL's `{"models": {...}, "metadata": ...}`, a list, a list inside a
    /// dict and dicts inside a list: the shapes FusionBench's `evaluate_merged_model` builds.
    #[test]
    fn reports_take_fusionbench_shapes() {
        assert_eq!(
            report(&["a", "b", "merged"]).unwrap(),
            json!({"a": "a", "b": "b", "merged": "merged"})
        );
        assert_eq!(
            report(&["models/a", "models/b", "metadata"]).unwrap(),
            json!({"models": {"a": "models/a", "b": "models/b"}, "metadata": "metadata"})
        );
        assert_eq!(
            report(&["[1]", "[0]", "[2]"]).unwrap(),
            json!(["[0]", "[1]", "[2]"])
        );
        assert_eq!(
            report(&["models/[0]", "models/[1]", "metadata"]).unwrap(),
            json!({"models": ["models/[0]", "models/[1]"], "metadata": "metadata"})
        );
        assert_eq!(
            report(&["[0]/x", "[0]/y", "[1]/x"]).unwrap(),
            json!([{"x": "[0]/x", "y": "[0]/y"}, {"x": "[1]/x"}])
        );
    }

    #[test]
    fn bad_names_are_refused_with_the_culprit() {
        for (bad, culprit, why) in [
            (vec!["a", "a"], "`a`", "used twice"),
            (vec!["a", "a/b"], "`a/b`", "inside another entry"),
            (vec!["a/b", "a"], "`a`", "holds other entries"),
            (vec!["[0]", "a"], "`a`", "a key beside list positions"),
            (vec!["a", "[0]"], "`[0]`", "a list position beside keys"),
            (vec!["[0]", "[2]"], "`[2]`", "list position 1 is missing"),
            (vec!["a", ""], "``", "empty"),
            (vec!["a", "b//c"], "`b//c`", "not a folder name"),
            (vec!["a", "../x"], "`../x`", "not a folder name"),
            (vec!["a", "[x]"], "`[x]`", "not a list position"),
        ] {
            let msg = format!("{:#}", report(&bad).unwrap_err());
            assert!(msg.contains(culprit) && msg.contains(why), "{bad:?}: {msg}");
            assert!(msg.contains("method `m`"), "{msg}");
        }
    }

    #[test]
    fn save_paths_follow_the_names() {
        let p = |n: &str| parse_paths(&names(&[n, "zz"]), "m").unwrap().remove(0);
        assert_eq!(
            save_path(Path::new("/o/merged"), &p("models/a")),
            PathBuf::from("/o/merged/models/a")
        );
        let list = parse_paths(&names(&["[0]", "[1]", "[2]", "[3]"]), "m").unwrap();
        assert_eq!(
            save_path(Path::new("/o/merged"), &list[3]),
            PathBuf::from("/o/merged/3")
        );
        assert_eq!(
            save_path(Path::new("/o/m.safetensors"), &p("models/a")),
            PathBuf::from("/o/m_models_a.safetensors")
        );
    }
}
