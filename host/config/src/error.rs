//! The error type of config composition and interpolation.

use std::path::PathBuf;

/// Everything that can go wrong while composing or resolving a config.
///
/// Every variant names its culprit: the file (and line, for YAML syntax errors), the override
/// exactly as typed, the key path, or the config group together with the options it offers.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A config file exists but could not be read.
    #[error("could not read config file '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A config file is not valid YAML.
    #[error("YAML syntax error in '{}' at line {line}, column {column}: {message}", path.display())]
    YamlSyntax {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error (0 when the parser gave no location).
        line: usize,
        /// 1-based column of the error (0 when the parser gave no location).
        column: usize,
        /// The parser's message.
        message: String,
    },

    /// A config file whose top level is not a mapping (or empty).
    #[error("config file '{}' must contain a mapping at the top level, found {found}", path.display())]
    NotAMapping {
        /// The file.
        path: PathBuf,
        /// What was found instead (e.g. "a list").
        found: String,
    },

    /// A malformed entry in a `defaults:` list.
    #[error("in '{}': invalid defaults list entry {entry}: {message}", path.display())]
    InvalidDefaults {
        /// The file holding the defaults list.
        path: PathBuf,
        /// The entry, rendered as YAML flow text.
        entry: String,
        /// What is wrong with it.
        message: String,
    },

    /// The primary config (`config_name`) is in none of the search-path roots.
    #[error("cannot find primary config '{name}'; check that it is in your config search path:\n{}", fmt_search_path(.search_path))]
    PrimaryNotFound {
        /// The primary config name.
        name: String,
        /// The roots that were searched.
        search_path: Vec<PathBuf>,
    },

    /// A group option (or a plain config include) that does not exist.
    #[error("{}could not find '{config_path}'{}{}", fmt_in(.parent), fmt_options(.group, .options), fmt_suggestion(.suggestion))]
    ConfigNotFound {
        /// The config path that was looked for, e.g. `method/task_arithmetc`.
        config_path: String,
        /// The config whose defaults list asked for it (None for command-line overrides of the primary).
        parent: Option<String>,
        /// The config group (None for plain config includes).
        group: Option<String>,
        /// The options available in the group.
        options: Vec<String>,
        /// The closest option, if any is close.
        suggestion: Option<String>,
    },

    /// A group whose choice is `???` and was not given on the command line.
    #[error("you must specify '{key}', e.g. {key}=<OPTION>\navailable options:\n{}", fmt_list(.options))]
    MissingGroupChoice {
        /// The override key of the group, e.g. `method`.
        key: String,
        /// The options available in the group.
        options: Vec<String>,
    },

    /// An override that does not follow Hydra's override grammar.
    #[error("invalid override '{text}': {message}")]
    OverrideSyntax {
        /// The override exactly as typed.
        text: String,
        /// What is wrong, with the position where it went wrong.
        message: String,
    },

    /// An override form this implementation does not support (sweeps, sweep functions, `++group=option`).
    #[error("unsupported override '{text}': {message}")]
    UnsupportedOverride {
        /// The override exactly as typed.
        text: String,
        /// Why.
        message: String,
    },

    /// A `--multirun` sweep that cannot be expanded (bad arguments, an empty range, ...).
    #[error("invalid sweep '{text}': {message}")]
    Sweep {
        /// The override exactly as typed.
        text: String,
        /// What is wrong.
        message: String,
    },

    /// `group=option` for a group that is not in the defaults list.
    #[error("{}could not override '{key}': {}{}", fmt_in(.containing_config), fmt_group_choices(.choices), fmt_append(.text))]
    GroupNotInDefaults {
        /// The override exactly as typed (None when the override came from a defaults list).
        text: Option<String>,
        /// The override key, e.g. `method` or `dataset@train`.
        key: String,
        /// The config containing the `override` directive, when it came from a defaults list.
        containing_config: Option<String>,
        /// Keys of the same group that are in the defaults list.
        choices: Vec<String>,
    },

    /// `~group` (or `~group=option`) for a group that is not in the defaults list.
    #[error("could not delete '{key}': no match in the defaults list (override '{text}')")]
    GroupDeleteNotInDefaults {
        /// The override exactly as typed.
        text: String,
        /// The key (with `=option` when one was given).
        key: String,
    },

    /// A problem while building the defaults tree (duplicate `_self_`, conflicting choices,
    /// misplaced `override`, a group appearing twice, ...).
    #[error("{}{message}", fmt_in(.config))]
    DefaultsComposition {
        /// The config where the problem was found, when known.
        config: Option<String>,
        /// What went wrong (names the group/key).
        message: String,
    },

    /// `a.b=v` where `a.b` does not exist.
    #[error("could not override '{key}' (override '{text}'): the key is not in the config.\nTo append to your config use +{text}")]
    OverrideKeyMissing {
        /// The override exactly as typed.
        text: String,
        /// The key path.
        key: String,
    },

    /// `+a.b=v` where `a.b` already exists.
    #[error("could not append to config (override '{text}'): an item is already at '{key}'.\nEither remove the + prefix: '{}'\nOr add a second + to add or replace '{key}': '+{text}'", .text.trim_start_matches('+'))]
    AppendKeyExists {
        /// The override exactly as typed.
        text: String,
        /// The key path.
        key: String,
    },

    /// `~a.b` where `a.b` does not exist (or is null / `???`, as in Hydra).
    #[error("could not delete from config (override '{text}'): '{key}' does not exist")]
    DeleteKeyMissing {
        /// The override exactly as typed.
        text: String,
        /// The key path.
        key: String,
    },

    /// `~a.b=v` where the value at `a.b` is not `v`.
    #[error("could not delete from config (override '{text}'): the value of '{key}' is {actual} and not {expected}")]
    DeleteValueMismatch {
        /// The override exactly as typed.
        text: String,
        /// The key path.
        key: String,
        /// The value in the config.
        actual: String,
        /// The value given in the override.
        expected: String,
    },

    /// An override that walks into a value that is not a container, or a list index out of range.
    #[error("could not apply override '{text}': {message}")]
    OverrideApply {
        /// The override exactly as typed.
        text: String,
        /// What went wrong, naming the key.
        message: String,
    },

    /// A defaults list that includes, directly or through other configs, the config it is in.
    #[error("defaults-list cycle: {} (each config's defaults list includes the next, so composing would never end)", .chain.join(" -> "))]
    DefaultsCycle {
        /// The files (or config paths, when not from a file) along the cycle, first and last
        /// the same.
        chain: Vec<String>,
    },

    /// Input nested deeper than fusion-host follows (an override value, a dotted key, a chain of
    /// interpolations): refused with an error instead of exhausting the stack.
    #[error("{what} is nested more than {limit} levels deep{}", fmt_at(.at))]
    TooDeep {
        /// What is too deep, naming the culprit (the override as typed, the key).
        what: String,
        /// The limit.
        limit: usize,
        /// Where it was found, when known (a key path).
        at: Option<String>,
    },

    /// `${a.b}` where `a.b` does not exist.
    #[error("interpolation key '{target}' not found (while resolving '{key}')")]
    InterpolationKeyNotFound {
        /// The key whose value holds the interpolation.
        key: String,
        /// The referenced key, as written.
        target: String,
    },

    /// A chain of interpolations that loops.
    #[error("interpolation cycle at '{key}': {}", .chain.join(" -> "))]
    InterpolationCycle {
        /// The key where the cycle was detected.
        key: String,
        /// The keys along the cycle.
        chain: Vec<String>,
    },

    /// An interpolation that points at a `???` value.
    #[error("missing mandatory value '{target}' (referenced while resolving '{key}')")]
    MissingMandatoryValue {
        /// The key whose value holds the interpolation.
        key: String,
        /// The key holding `???`.
        target: String,
    },

    /// An interpolation that does not parse.
    #[error("invalid interpolation in '{key}': {message} (in {text:?})")]
    InterpolationSyntax {
        /// The key whose value holds the interpolation.
        key: String,
        /// The string being resolved.
        text: String,
        /// What is wrong.
        message: String,
    },

    /// `${name:...}` with a resolver that does not exist.
    #[error("unsupported interpolation type '{resolver}' (while resolving '{key}'); known resolvers: oc.env, oc.select, oc.decode, now, hydra")]
    UnknownResolver {
        /// The key whose value holds the interpolation.
        key: String,
        /// The resolver name.
        resolver: String,
    },

    /// `${oc.env:VAR}` without a default where `VAR` is not set.
    #[error("environment variable '{var}' not found (while resolving '{key}')")]
    EnvVarNotFound {
        /// The key whose value holds the interpolation.
        key: String,
        /// The environment variable.
        var: String,
    },

    /// A resolver that was called with bad arguments.
    #[error("resolver '{resolver}' failed while resolving '{key}': {message}")]
    ResolverFailed {
        /// The key whose value holds the interpolation.
        key: String,
        /// The resolver name.
        resolver: String,
        /// What went wrong.
        message: String,
    },
}

fn fmt_search_path(p: &[PathBuf]) -> String {
    p.iter()
        .map(|p| format!("\t{}", p.display()))
        .collect::<Vec<_>>()
        .join("\n")
}

fn fmt_in(parent: &Option<String>) -> String {
    match parent {
        Some(p) => format!("in '{p}': "),
        None => String::new(),
    }
}

fn fmt_at(at: &Option<String>) -> String {
    match at {
        Some(a) => format!(" (at '{a}')"),
        None => String::new(),
    }
}

fn fmt_list(options: &[String]) -> String {
    options
        .iter()
        .map(|o| format!("\t{o}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn fmt_options(group: &Option<String>, options: &[String]) -> String {
    match group {
        Some(g) if !options.is_empty() => {
            format!("\navailable options in '{g}':\n{}", fmt_list(options))
        }
        Some(g) => format!("\nconfig group '{g}' has no options"),
        None => String::new(),
    }
}

fn fmt_suggestion(s: &Option<String>) -> String {
    match s {
        Some(s) => format!("\ndid you mean '{s}'?"),
        None => String::new(),
    }
}

fn fmt_group_choices(choices: &[String]) -> String {
    match choices.len() {
        0 => "no match in the defaults list.".to_string(),
        1 => format!("did you mean to override {}?", choices[0]),
        _ => format!("did you mean to override one of {}?", choices.join(", ")),
    }
}

fn fmt_append(text: &Option<String>) -> String {
    match text {
        Some(t) => {
            let t = t.trim_start_matches('+');
            format!("\nTo append to your default list use +{t}")
        }
        None => String::new(),
    }
}
