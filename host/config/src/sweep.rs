//! Hydra's basic sweeper: expanding the sweep overrides of a `--multirun` command line into the
//! override lists of its jobs.
//!
//! Supported sweeps, as Hydra 1.3 writes them:
//! - comma lists `a=1,2,3` (each element any override value: `'x,y'`, `[1,2]`, `{a: 1}`, ...);
//! - `choice(a, b, ...)`;
//! - `range(start, stop[, step])`: Python's `range` for integers; with a float, Hydra's decimal
//!   stepping (28-digit `decimal.Decimal` arithmetic, so `range(0,1,0.1)` gives Hydra's
//!   `0.7000000000000001`), arguments positional or named;
//! - `glob(include[, exclude])` over the options of a config group (patterns or lists of them,
//!   `fnmatch` style: `*`, `?`, `[...]`);
//! - `sort(...)` of a list or of a nested `choice`/`range`, with `reverse=true`.
//!
//! The jobs are the cartesian product of the swept keys in the order the keys first appear (the
//! last key varies fastest); a key given twice keeps its first place and its last value, as in
//! Hydra. Values are written back in Hydra's form (`0.1`, `1e-05`, `True`, quoted strings kept
//! quoted). Not supported: `interval(...)` (Hydra's basic sweeper refuses it too), `shuffle(...)`,
//! `tag(...)` and cast functions.

use serde_norway::Value;

use crate::overrides::{parse_override, parse_value_text, type_primitive, OverrideKind};
use crate::ConfigError;

pub use crate::value::py_float;

/// One command-line override after expansion: its key element (`method`, `+a.b`, `db@pkg`) and
/// the override text of each value it takes (one for a plain override).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepOverride {
    /// The key with its prefix and package, as Hydra's `get_key_element`.
    pub key: String,
    /// The override text of each job's value (`method.scaling_factor=0.1`, ...).
    pub overrides: Vec<String>,
    /// True when the override was a sweep (even one of a single value).
    pub is_sweep: bool,
}

/// The jobs of a sweep: for each job, its overrides in order.
pub type Jobs = Vec<Vec<String>>;

/// Expands `overrides` (as typed) into the override lists of the jobs, Hydra's basic sweeper
/// order. `group_options` lists the options of a config group (for `glob`). An empty sweep
/// (`range(5,1)`, a `glob` that matches nothing) is an error naming it.
pub fn expand(
    overrides: &[String],
    group_options: &dyn Fn(&str) -> Vec<String>,
) -> Result<(Jobs, Vec<SweepOverride>), ConfigError> {
    let mut keyed: Vec<SweepOverride> = Vec::new();
    for text in overrides {
        let o = parse_sweep_override(text, group_options)?;
        match keyed.iter_mut().find(|k| k.key == o.key) {
            Some(slot) => *slot = o,
            None => keyed.push(o),
        }
    }
    let mut jobs: Jobs = vec![Vec::new()];
    for k in &keyed {
        jobs = jobs
            .into_iter()
            .flat_map(|job| {
                k.overrides.iter().map(move |v| {
                    let mut j = job.clone();
                    j.push(v.clone());
                    j
                })
            })
            .collect();
    }
    Ok((jobs, keyed))
}

/// True when `text` is a sweep override (a comma list or a sweep function).
pub fn is_sweep(text: &str) -> bool {
    parse_sweep_override(text, &|_| Vec::new())
        .map(|o| o.is_sweep)
        .unwrap_or(true)
}

fn sweep_error(text: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Sweep {
        text: text.to_string(),
        message: message.into(),
    }
}

/// Parses one override that may be a sweep.
pub fn parse_sweep_override(
    text: &str,
    group_options: &dyn Fn(&str) -> Vec<String>,
) -> Result<SweepOverride, ConfigError> {
    let trimmed = text.trim();
    let (prefix, rest) = if let Some(r) = trimmed.strip_prefix("++") {
        ("++", r)
    } else if let Some(r) = trimmed.strip_prefix('+') {
        ("+", r)
    } else if let Some(r) = trimmed.strip_prefix('~') {
        ("~", r)
    } else {
        ("", trimmed)
    };
    let Some(eq) = rest.find('=') else {
        // `~key`: no value, no sweep. The grammar check is parse_override's.
        let o = parse_override(text)?;
        return Ok(SweepOverride {
            key: format!("{prefix}{}", o.key_with_package()),
            overrides: vec![trimmed.to_string()],
            is_sweep: false,
        });
    };
    let key_element = format!("{prefix}{}", rest[..eq].trim());
    let value_text = &rest[eq + 1..];
    let elements = match sweep_value(text, value_text, &key_element, group_options)? {
        None => {
            // A plain override: checked by the ordinary parser, kept as typed.
            let o = parse_override(text)?;
            return Ok(SweepOverride {
                key: format!("{prefix}{}", o.key_with_package()),
                overrides: vec![trimmed.to_string()],
                is_sweep: false,
            });
        }
        Some(e) => e,
    };
    if prefix == "~" {
        return Err(sweep_error(text, "a delete (`~key`) cannot be swept"));
    }
    if elements.is_empty() {
        return Err(sweep_error(
            text,
            "the sweep is empty: it gives no value, so there would be no job",
        ));
    }
    // The key's grammar: checked with the first value.
    let first = format!("{key_element}={}", elements[0]);
    let o = parse_override(&first).map_err(|e| match e {
        ConfigError::OverrideSyntax { message, .. } => ConfigError::OverrideSyntax {
            text: text.to_string(),
            message,
        },
        other => other,
    })?;
    debug_assert!(o.kind != OverrideKind::Delete);
    Ok(SweepOverride {
        key: key_element.clone(),
        overrides: elements
            .into_iter()
            .map(|v| format!("{key_element}={v}"))
            .collect(),
        is_sweep: true,
    })
}

/// The value strings of a sweep value, or None when `value` is not a sweep.
fn sweep_value(
    text: &str,
    value: &str,
    key: &str,
    group_options: &dyn Fn(&str) -> Vec<String>,
) -> Result<Option<Vec<String>>, ConfigError> {
    let v = value.trim();
    if let Some((name, args)) = function_call(v) {
        let elems = call(text, name, args, key, group_options)?;
        return Ok(Some(elems.into_iter().map(|e| e.text).collect()));
    }
    let pieces = split_top_level(v, ',');
    if pieces.len() < 2 {
        return Ok(None);
    }
    let mut out = Vec::new();
    for p in pieces {
        out.push(element(text, p)?.text);
    }
    Ok(Some(out))
}

/// One swept value: its override text (Hydra's form) and its typed value.
#[derive(Debug, Clone)]
struct Elem {
    text: String,
    value: Value,
}

/// `name(args)` when `v` is a whole function call.
fn function_call(v: &str) -> Option<(&str, &str)> {
    let open = v.find('(')?;
    let name = v[..open].trim();
    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
        return None;
    }
    if !v.ends_with(')') || v[..open].ends_with('\\') {
        return None;
    }
    // The parenthesis opened after the name must be the one that closes at the end.
    let inner = &v[open + 1..v.len() - 1];
    let mut depth = 0i32;
    for (_, c) in scan(inner) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    Some((name, inner))
}

/// The characters of `s` that are structural: outside quotes and `${...}`, not escaped.
fn scan(s: &str) -> Vec<(usize, char)> {
    let mut out = Vec::new();
    let mut it = s.char_indices().peekable();
    let mut quote: Option<char> = None;
    let mut interp = 0usize;
    while let Some((i, c)) = it.next() {
        if let Some(q) = quote {
            if c == '\\' {
                it.next();
            } else if c == q {
                quote = None;
            }
            continue;
        }
        if interp > 0 {
            match c {
                '{' => interp += 1,
                '}' => interp -= 1,
                _ => {}
            }
            continue;
        }
        match c {
            '\\' => {
                it.next();
            }
            '\'' | '"' => quote = Some(c),
            '$' if it.peek().map(|p| p.1) == Some('{') => {
                it.next();
                interp = 1;
            }
            _ => out.push((i, c)),
        }
    }
    out
}

/// Splits `s` at `sep` where it is structural and outside brackets and parentheses.
fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in scan(s) {
        match c {
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth -= 1,
            c if c == sep && depth == 0 => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// A plain element (no sweep) in Hydra's string form: a quoted string stays quoted in a comma
/// list, and is written unquoted (escaped) from `choice(...)`, as Hydra does.
fn element(text: &str, piece: &str) -> Result<Elem, ConfigError> {
    element_as(text, piece, true)
}

fn element_as(text: &str, piece: &str, keep_quotes: bool) -> Result<Elem, ConfigError> {
    let raw = piece.trim();
    let value = parse_value_text(text, raw)?;
    let quoted = raw.starts_with('\'') || raw.starts_with('"');
    let text = if (quoted && keep_quotes) || raw.contains("${") {
        raw.to_string()
    } else {
        render(&value)
    };
    Ok(Elem { text, value })
}

/// A value as Hydra writes it back into an override (`Override._get_value_element_as_str`).
fn render(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => crate::value::number_text(n, py_float),
        Value::String(s) => render_str(s),
        Value::Sequence(items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(",")
        ),
        Value::Mapping(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("{}:{}", render(k), render(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Value::Tagged(t) => render(&t.value),
    }
}

/// A string as an unquoted override value (Hydra's `escape_special_characters`), or quoted when
/// the unquoted form would read back as something else (a number, `null`, outer spaces).
fn render_str(s: &str) -> String {
    let reads_back_other = s.is_empty()
        || s.trim() != s
        || type_primitive(s).is_some()
        || s.contains('\'')
        || s.contains('"')
        || s.contains("${");
    if reads_back_other {
        return format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"));
    }
    let mut out = String::new();
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '(' | ')' | '[' | ']' | '{' | '}' | ':' | '=' | ',' | ' '
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A sweep function's positional and named arguments, as raw text.
struct Args<'a> {
    positional: Vec<&'a str>,
    named: Vec<(&'a str, &'a str)>,
}

fn parse_args<'a>(text: &str, name: &str, inner: &'a str) -> Result<Args<'a>, ConfigError> {
    let mut args = Args {
        positional: Vec::new(),
        named: Vec::new(),
    };
    if inner.trim().is_empty() {
        return Ok(args);
    }
    for piece in split_top_level(inner, ',') {
        // `name=value`: the first structural `=` at depth 0.
        let eq = scan(piece)
            .into_iter()
            .find(|(_, c)| matches!(c, '=' | '[' | '{' | '('))
            .filter(|(_, c)| *c == '=');
        match eq {
            Some((i, _)) => {
                let arg = piece[..i].trim();
                if arg.is_empty() || !arg.chars().all(|c| c.is_alphanumeric() || c == '_') {
                    return Err(sweep_error(
                        text,
                        format!("{name}(...): bad argument name '{arg}'"),
                    ));
                }
                args.named.push((arg, &piece[i + 1..]));
            }
            None => {
                if !args.named.is_empty() {
                    return Err(sweep_error(
                        text,
                        format!("{name}(...): a positional argument after a named one"),
                    ));
                }
                args.positional.push(piece);
            }
        }
    }
    Ok(args)
}

fn call(
    text: &str,
    name: &str,
    inner: &str,
    key: &str,
    group_options: &dyn Fn(&str) -> Vec<String>,
) -> Result<Vec<Elem>, ConfigError> {
    let args = parse_args(text, name, inner)?;
    let only = |allowed: &[&str]| -> Result<(), ConfigError> {
        for (n, _) in &args.named {
            if !allowed.contains(n) {
                return Err(sweep_error(
                    text,
                    format!(
                        "{name}(...) takes no argument '{n}'{}",
                        if allowed.is_empty() {
                            String::new()
                        } else {
                            format!(" (it takes {})", allowed.join(", "))
                        }
                    ),
                ));
            }
        }
        Ok(())
    };
    match name {
        "choice" => {
            only(&[])?;
            if args.positional.is_empty() {
                return Err(sweep_error(text, "choice() needs at least one value"));
            }
            args.positional
                .iter()
                .map(|p| element_as(text, p, false))
                .collect()
        }
        "range" => {
            only(&["start", "stop", "step"])?;
            let mut slots: [Option<&str>; 3] = [None, None, None];
            for (i, p) in args.positional.iter().enumerate() {
                if i >= 3 {
                    return Err(sweep_error(text, "range() takes at most 3 arguments"));
                }
                slots[i] = Some(p);
            }
            for (n, v) in &args.named {
                let i = ["start", "stop", "step"]
                    .iter()
                    .position(|x| x == n)
                    .expect("checked");
                if slots[i].is_some() {
                    return Err(sweep_error(text, format!("range(): '{n}' given twice")));
                }
                slots[i] = Some(v);
            }
            // Hydra's range(stop) is not a form: start and stop are both required.
            let number = |which: &str, s: Option<&str>| -> Result<Option<Num>, ConfigError> {
                let Some(s) = s else { return Ok(None) };
                match parse_value_text(text, s.trim())? {
                    Value::Number(n) => Ok(Some(match n.as_i64() {
                        Some(i) => Num::Int(i),
                        None => Num::Float(n.as_f64().unwrap_or(f64::NAN)),
                    })),
                    other => Err(sweep_error(
                        text,
                        format!(
                            "range(): {which} must be a number, got '{}'",
                            render(&other)
                        ),
                    )),
                }
            };
            let start = number("start", slots[0])?;
            let stop = number("stop", slots[1])?;
            let step = number("step", slots[2])?.unwrap_or(Num::Int(1));
            let (Some(start), Some(stop)) = (start, stop) else {
                return Err(sweep_error(
                    text,
                    "range() needs start and stop: range(start, stop[, step])",
                ));
            };
            let values = range_values(text, start, stop, step)?;
            Ok(values
                .into_iter()
                .map(|n| match n {
                    Num::Int(i) => Elem {
                        text: i.to_string(),
                        value: Value::from(i),
                    },
                    Num::Float(f) => Elem {
                        text: py_float(f),
                        value: Value::from(f),
                    },
                })
                .collect())
        }
        "glob" => {
            only(&["include", "exclude"])?;
            let mut include: Option<&str> = args.positional.first().copied();
            let mut exclude: Option<&str> = args.positional.get(1).copied();
            if args.positional.len() > 2 {
                return Err(sweep_error(text, "glob() takes at most 2 arguments"));
            }
            for (n, v) in &args.named {
                let slot = if *n == "include" {
                    &mut include
                } else {
                    &mut exclude
                };
                if slot.is_some() {
                    return Err(sweep_error(text, format!("glob(): '{n}' given twice")));
                }
                *slot = Some(v);
            }
            let patterns = |s: Option<&str>| -> Result<Vec<String>, ConfigError> {
                let Some(s) = s else { return Ok(Vec::new()) };
                Ok(match parse_value_text(text, s.trim())? {
                    Value::Sequence(items) => items.iter().map(crate::value::scalar_to_string).collect(),
                    other => vec![crate::value::scalar_to_string(&other)],
                })
            };
            let include = patterns(include)?;
            let exclude = patterns(exclude)?;
            let group = key.trim_start_matches('+');
            let group = group.split('@').next().unwrap_or(group);
            let options = group_options(group);
            if options.is_empty() {
                return Err(sweep_error(
                    text,
                    format!("glob(...) sweeps the options of a config group, and '{group}' is not a config group with options"),
                ));
            }
            Ok(options
                .into_iter()
                .filter(|o| {
                    include.iter().any(|p| fnmatch(p, o)) && !exclude.iter().any(|p| fnmatch(p, o))
                })
                .map(|o| Elem {
                    text: render_str(&o),
                    value: Value::String(o),
                })
                .collect())
        }
        "sort" => {
            only(&["reverse", "sweep"])?;
            let mut reverse = false;
            let mut sweep: Option<&str> = None;
            for (n, v) in &args.named {
                if *n == "reverse" {
                    reverse = match parse_value_text(text, v.trim())? {
                        Value::Bool(b) => b,
                        _ => return Err(sweep_error(text, "sort(): reverse must be true or false")),
                    };
                } else {
                    sweep = Some(v);
                }
            }
            let single = match args.positional.as_slice() {
                [one] => Some(*one),
                _ => None,
            };
            let nested = sweep
                .or(single)
                .and_then(|s| function_call(s.trim()));
            let mut elems = match nested {
                Some((n, a)) if sweep.is_none() || args.positional.is_empty() => {
                    call(text, n, a, key, group_options)?
                }
                None if sweep.is_none() => args
                    .positional
                    .iter()
                    .map(|p| element(text, p))
                    .collect::<Result<Vec<_>, _>>()?,
                _ => return Err(sweep_error(text, "sort(): give values or one sweep")),
            };
            let numeric = elems.iter().all(|e| matches!(e.value, Value::Number(_)));
            let strings = elems.iter().all(|e| matches!(e.value, Value::String(_)));
            if !(numeric || strings) {
                return Err(sweep_error(
                    text,
                    "sort(): the values must be all numbers or all strings",
                ));
            }
            elems.sort_by(|a, b| match (&a.value, &b.value) {
                (Value::Number(x), Value::Number(y)) => x
                    .as_f64()
                    .partial_cmp(&y.as_f64())
                    .unwrap_or(std::cmp::Ordering::Equal),
                (Value::String(x), Value::String(y)) => x.cmp(y),
                _ => std::cmp::Ordering::Equal,
            });
            if reverse {
                elems.reverse();
            }
            Ok(elems)
        }
        "interval" => Err(sweep_error(
            text,
            "interval(...) is a continuous range, which the basic sweeper cannot enumerate (as in Hydra); use range(start, stop, step)",
        )),
        "shuffle" | "tag" => Err(sweep_error(
            text,
            format!("{name}(...) is not supported by fusion-host's sweeper"),
        )),
        other => Err(sweep_error(
            text,
            format!("unknown sweep function '{other}(...)'; the sweeps are choice, range, glob and sort"),
        )),
    }
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Float(f64),
}

/// The values of `range(start, stop, step)` as Hydra computes them.
fn range_values(text: &str, start: Num, stop: Num, step: Num) -> Result<Vec<Num>, ConfigError> {
    const LIMIT: usize = 100_000;
    let too_many = || {
        sweep_error(
            text,
            format!("range() gives more than {LIMIT} values; a sweep that large is a mistake"),
        )
    };
    if let (Num::Int(a), Num::Int(b), Num::Int(s)) = (start, stop, step) {
        if s == 0 {
            return Err(sweep_error(text, "range(): step must not be zero"));
        }
        let mut out = Vec::new();
        let mut x = a as i128;
        while (s > 0 && x < b as i128) || (s < 0 && x > b as i128) {
            if out.len() == LIMIT {
                return Err(too_many());
            }
            out.push(Num::Int(x as i64));
            x += s as i128;
        }
        return Ok(out);
    }
    let dec = |n: Num| match n {
        Num::Int(i) => Dec::from_int(i),
        Num::Float(f) => Dec::from_f64(f),
    };
    let (Some(mut x), Some(b), Some(s)) = (dec(start), dec(stop), dec(step)) else {
        return Err(sweep_error(
            text,
            "range(): start, stop and step must be finite",
        ));
    };
    if s.c == 0 {
        return Err(sweep_error(text, "range(): step must not be zero"));
    }
    let mut out = Vec::new();
    while (s.c > 0 && x.cmp(&b).is_lt()) || (s.c < 0 && x.cmp(&b).is_gt()) {
        if out.len() == LIMIT {
            return Err(too_many());
        }
        out.push(Num::Float(x.to_f64()));
        x = x.add(&s);
    }
    Ok(out)
}

/// A decimal `c * 10^e`, enough of Python's `decimal.Decimal` (28 significant digits, half-even)
/// to step a float range as Hydra's `FloatRange` does.
#[derive(Debug, Clone, Copy)]
struct Dec {
    c: i128,
    e: i32,
}

const PRECISION: u32 = 28;

impl Dec {
    fn from_int(i: i64) -> Option<Dec> {
        Some(Dec { c: i as i128, e: 0 })
    }

    /// The float's value to 38 significant digits (`Decimal(float)` is exact; 38 digits are as
    /// many as an i128 holds, and ten more than the arithmetic keeps).
    fn from_f64(f: f64) -> Option<Dec> {
        if !f.is_finite() {
            return None;
        }
        if f == 0.0 {
            return Some(Dec { c: 0, e: 0 });
        }
        let s = format!("{f:.37e}");
        let (m, e) = s.split_once('e')?;
        let neg = m.starts_with('-');
        let digits: String = m.chars().filter(|c| c.is_ascii_digit()).collect();
        let c: i128 = digits.parse().ok()?;
        Some(Dec {
            c: if neg { -c } else { c },
            e: e.parse::<i32>().ok()? - 37,
        })
    }

    fn to_f64(self) -> f64 {
        format!("{}e{}", self.c, self.e).parse().unwrap_or(f64::NAN)
    }

    /// Both at one exponent (dropping low digits of the smaller one where an i128 overflows).
    fn align(mut a: Dec, mut b: Dec) -> (i128, i128, i32) {
        if a.e < b.e {
            std::mem::swap(&mut a, &mut b);
            let (x, y, e) = Self::align(a, b);
            return (y, x, e);
        }
        loop {
            let diff = (a.e - b.e) as u32;
            if let Some(scaled) = 10i128
                .checked_pow(diff)
                .and_then(|p| a.c.checked_mul(p))
                .filter(|s| s.checked_add(b.c).is_some())
            {
                return (scaled, b.c, b.e);
            }
            b.c /= 10;
            b.e += 1;
        }
    }

    fn add(&self, other: &Dec) -> Dec {
        let (x, y, e) = Self::align(*self, *other);
        Dec { c: x + y, e }.round()
    }

    fn cmp(&self, other: &Dec) -> std::cmp::Ordering {
        let (x, y, _) = Self::align(*self, *other);
        x.cmp(&y)
    }

    /// Rounded to [`PRECISION`] significant digits, half to even.
    fn round(mut self) -> Dec {
        let digits = |c: i128| c.unsigned_abs().checked_ilog10().map_or(1, |d| d + 1);
        while digits(self.c) > PRECISION {
            let drop = digits(self.c) - PRECISION;
            let p = 10i128.pow(drop);
            let (q, r) = (self.c / p, (self.c % p).abs());
            let half = p / 2;
            let up = r > half || (r == half && q % 2 != 0);
            self.c = if up { q + self.c.signum() } else { q };
            self.e += drop as i32;
        }
        self
    }
}

/// Python's `fnmatch.fnmatch` on POSIX (case-sensitive): `*`, `?`, `[seq]`, `[!seq]`.
fn fnmatch(pattern: &str, name: &str) -> bool {
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some('?') => !n.is_empty() && go(&p[1..], &n[1..]),
            Some('[') => {
                let Some(close) = p.iter().skip(2).position(|c| *c == ']').map(|i| i + 2) else {
                    return n.first() == Some(&'[') && go(&p[1..], &n[1..]);
                };
                let Some(&c) = n.first() else { return false };
                let set = &p[1..close];
                let (negate, set) = match set.first() {
                    Some('!') => (true, &set[1..]),
                    _ => (false, set),
                };
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == '-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != negate && go(&p[close + 1..], &n[1..])
            }
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<String> {
        let o = parse_sweep_override(text, &|g| {
            if g == "method" {
                vec![
                    "dummy".into(),
                    "task_arithmetic".into(),
                    "ties_merging".into(),
                ]
            } else {
                Vec::new()
            }
        })
        .unwrap_or_else(|e| panic!("{text}: {e}"));
        o.overrides
            .iter()
            .map(|s| s.split_once('=').unwrap().1.to_string())
            .collect()
    }

    #[test]
    fn python_float_repr() {
        for (f, s) in [
            (0.1, "0.1"),
            (1.0, "1.0"),
            (1e-5, "1e-05"),
            (1e16, "1e+16"),
            (0.0002, "0.0002"),
            (0.30000000000000004, "0.30000000000000004"),
            (123456789.5, "123456789.5"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
            (1e15, "1000000000000000.0"),
        ] {
            assert_eq!(py_float(f), s);
        }
    }

    #[test]
    fn hydra_float_ranges_step_in_decimal() {
        // From Hydra 1.3.8: list(parse_override(...).sweep_string_iterator()).
        assert_eq!(
            values("a=range(0,1,0.1)"),
            [
                "0.0",
                "0.1",
                "0.2",
                "0.3",
                "0.4",
                "0.5",
                "0.6",
                "0.7000000000000001",
                "0.8",
                "0.9"
            ]
        );
        assert_eq!(
            values("a=range(0.1,0.6,0.2)"),
            ["0.1", "0.30000000000000004", "0.5"]
        );
        assert_eq!(values("a=range(3,0,-1)"), ["3", "2", "1"]);
        assert_eq!(values("a=range(start=1,stop=3)"), ["1", "2"]);
    }

    #[test]
    fn glob_and_sort() {
        assert_eq!(
            values("method=glob(*)"),
            ["dummy", "task_arithmetic", "ties_merging"]
        );
        assert_eq!(values("method=glob(t*,exclude=ties*)"), ["task_arithmetic"]);
        assert_eq!(values("a=sort(3,1,2)"), ["1", "2", "3"]);
        assert_eq!(values("a=sort(range(1,4),reverse=true)"), ["3", "2", "1"]);
    }

    #[test]
    fn empty_and_bad_sweeps_are_named() {
        for (text, want) in [
            ("a=range(5,1)", "empty"),
            ("a=range(1,2,0)", "zero"),
            ("a=interval(0,1)", "interval"),
            ("a=foo(1)", "unknown sweep function"),
            ("a=range(x,2)", "number"),
            ("x=glob(*)", "not a config group"),
        ] {
            let e = parse_sweep_override(text, &|_| Vec::new())
                .unwrap_err()
                .to_string();
            assert!(e.contains(text) && e.contains(want), "{text}: {e}");
        }
    }
}
