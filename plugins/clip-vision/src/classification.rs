//! The class names and prompt templates fusion-host knows for CLIP zero-shot tasks:
//! `configs/clip_classification/<task>.yaml`, embedded at build time (see `build.rs`). FusionBench
//! keeps the same facts in `fusion_bench.tasks.clip_classification` and finds them by task name;
//! its task pool configs do not carry them. A task is found by its file name (`stanford-cars`) or
//! one of the file's `aliases` (`stanford_cars`, `tanganke/stanford_cars`), the names FusionBench's
//! `CLIPTemplateFactory` accepts.

use std::sync::OnceLock;

use serde_json::{Map, Value};

const TABLE: &str = include_str!(concat!(env!("OUT_DIR"), "/clip_classification.json"));

fn table() -> &'static Map<String, Value> {
    static PARSED: OnceLock<Map<String, Value>> = OnceLock::new();
    // build.rs wrote this JSON from checked YAML; it cannot fail to parse.
    PARSED.get_or_init(|| serde_json::from_str(TABLE).unwrap_or_default())
}

/// One task's entry: `{aliases, classnames, templates}`.
pub fn lookup(task: &str) -> Option<&'static Value> {
    let t = table();
    t.get(task).or_else(|| {
        t.values().find(|e| {
            e.get("aliases")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|x| x.as_str() == Some(task)))
        })
    })
}

/// The names of every known task (file names), sorted.
pub fn known_tasks() -> Vec<&'static str> {
    let mut v: Vec<&str> = table().keys().map(String::as_str).collect();
    v.sort_unstable();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_eight_ta8_tasks_are_embedded_with_fusionbench_counts() {
        // (task, classes, templates) as in fusion_bench/tasks/clip_classification.
        for (task, classes, templates) in [
            ("sun397", 397, 2),
            ("stanford-cars", 196, 8),
            ("resisc45", 45, 18),
            ("eurosat", 10, 3),
            ("svhn", 10, 1),
            ("gtsrb", 43, 3),
            ("mnist", 10, 1),
            ("dtd", 47, 8),
        ] {
            let e = lookup(task).unwrap_or_else(|| panic!("{task} is not embedded"));
            assert_eq!(e["classnames"].as_array().unwrap().len(), classes, "{task}");
            assert_eq!(
                e["templates"].as_array().unwrap().len(),
                templates,
                "{task}"
            );
        }
        assert_eq!(
            lookup("eurosat").unwrap()["classnames"][0],
            "annual crop land"
        );
        assert_eq!(
            lookup("mnist").unwrap()["templates"][0],
            "a photo of the number: \"{}\"."
        );
    }

    #[test]
    fn aliases_find_the_same_entry_and_unknown_names_find_none() {
        assert_eq!(lookup("stanford_cars"), lookup("stanford-cars"));
        assert_eq!(lookup("tanganke/stanford_cars"), lookup("stanford-cars"));
        assert!(lookup("stanford-cars").is_some());
        assert!(lookup("imagenet").is_none());
        assert!(lookup("").is_none());
        let known = known_tasks();
        assert!(
            known.contains(&"dtd") && known.contains(&"digits_low"),
            "{known:?}"
        );
    }
}
