//! Parsing of command-line overrides, following Hydra 1.3's override grammar.
//!
//! Supported forms: `key=value`, `+key=value`, `++key=value`, `~key`, `~key=value`, where `key`
//! is a dotted config path (`a.b.0.c`) or a config group (`modelpool`, `dataset/test@test`).
//! Values are typed as Hydra types them: `null`, booleans (any case), ints (`1_000`), floats
//! (`1e-3`, `.5`, `inf`, `nan`), quoted strings (`'…'`, `"…"`), unquoted strings (inner
//! whitespace kept, outer whitespace trimmed, `\,` `\ ` `\=` … escapes), lists `[1, [a]]`,
//! dicts `{a: 1, b: [x]}`, and interpolations `${…}` kept verbatim as strings (`\${…}` too).
//! Sweeps (`a=1,2`) and sweep/cast functions (`choice(…)`, `range(…)`, `int(…)`) are rejected
//! with [`ConfigError::UnsupportedOverride`].

use serde_norway::{Mapping, Value};

use crate::value::MAX_DEPTH;
use crate::ConfigError;

/// What an override does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverrideKind {
    /// `key=value`: change an existing value or group choice.
    Change,
    /// `+key=value`: add a value or group that is not there yet.
    Add,
    /// `++key=value`: add or change.
    ForceAdd,
    /// `~key` or `~key=value`: delete.
    Delete,
}

/// One parsed command-line override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The override exactly as typed.
    pub text: String,
    /// What the override does.
    pub kind: OverrideKind,
    /// The key or config group, without prefix and without `@package`.
    pub key: String,
    /// The `@package` part of the key, when present (may be empty: `group@=x`).
    pub package: Option<String>,
    /// The typed value; `None` only for `~key` without `=value`.
    pub value: Option<Value>,
}

impl Override {
    /// The key as written, including `@package` when present (Hydra's `get_key_element` without
    /// the prefix).
    pub fn key_with_package(&self) -> String {
        match &self.package {
            Some(p) => format!("{}@{}", self.key, p),
            None => self.key.clone(),
        }
    }
}

/// Parses one override exactly as typed on the command line.
pub fn parse_override(text: &str) -> Result<Override, ConfigError> {
    let syntax = |message: String| ConfigError::OverrideSyntax {
        text: text.to_string(),
        message,
    };
    let trimmed = text.trim();
    let (kind, rest) = if let Some(r) = trimmed.strip_prefix("++") {
        (OverrideKind::ForceAdd, r)
    } else if let Some(r) = trimmed.strip_prefix('+') {
        (OverrideKind::Add, r)
    } else if let Some(r) = trimmed.strip_prefix('~') {
        (OverrideKind::Delete, r)
    } else {
        (OverrideKind::Change, trimmed)
    };
    let (key_part, value_part) = match rest.find('=') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let key_part = key_part.trim();
    if key_part.is_empty() {
        return Err(syntax("missing key before '='".into()));
    }
    let (key, package) = match key_part.find('@') {
        Some(i) => (&key_part[..i], Some(key_part[i + 1..].to_string())),
        None => (key_part, None),
    };
    if key.is_empty() {
        return Err(syntax("missing key before '@'".into()));
    }
    if let Some(c) = key
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '/' | '$')))
    {
        return Err(syntax(format!("unexpected character {c:?} in key '{key}'")));
    }
    let segments = key.split(['.', '/']).count();
    let package_segments = package.as_deref().map_or(0, |p| p.split('.').count());
    if segments.max(package_segments) > MAX_DEPTH {
        return Err(ConfigError::TooDeep {
            what: format!(
                "the key of override '{}' ({} parts)",
                abbreviate(text),
                segments.max(package_segments)
            ),
            limit: MAX_DEPTH,
            at: None,
        });
    }
    if let Some(p) = &package {
        if let Some(c) = p
            .chars()
            .find(|c| !(c.is_alphanumeric() || matches!(c, '_' | '-' | '.')))
        {
            return Err(syntax(format!(
                "unexpected character {c:?} in package '{p}'"
            )));
        }
    }
    let value = match value_part {
        None if kind == OverrideKind::Delete => None,
        None => {
            return Err(syntax(format!(
                "missing '=' (expected {}{key_part}=VALUE)",
                match kind {
                    OverrideKind::Add => "+",
                    OverrideKind::ForceAdd => "++",
                    _ => "",
                }
            )))
        }
        Some(v) => Some(parse_value(v).map_err(|e| match e {
            ValueError::Syntax(m) => syntax(m),
            ValueError::Unsupported(m) => ConfigError::UnsupportedOverride {
                text: text.to_string(),
                message: m,
            },
            ValueError::TooDeep => ConfigError::TooDeep {
                what: format!("the value of override '{}'", abbreviate(text)),
                limit: MAX_DEPTH,
                at: None,
            },
        })?),
    };
    Ok(Override {
        text: text.to_string(),
        kind,
        key: key.to_string(),
        package,
        value,
    })
}

/// Parses an override value (the part after `=`) on its own; errors name `text`, the whole
/// override.
pub(crate) fn parse_value_text(text: &str, value: &str) -> Result<Value, ConfigError> {
    parse_value(value).map_err(|e| match e {
        ValueError::Syntax(message) => ConfigError::OverrideSyntax {
            text: text.to_string(),
            message,
        },
        ValueError::Unsupported(message) => ConfigError::UnsupportedOverride {
            text: text.to_string(),
            message,
        },
        ValueError::TooDeep => ConfigError::TooDeep {
            what: format!("the value of override '{}'", abbreviate(text)),
            limit: MAX_DEPTH,
            at: None,
        },
    })
}

/// Parses many overrides, stopping at the first error.
pub fn parse_overrides(texts: &[String]) -> Result<Vec<Override>, ConfigError> {
    texts.iter().map(|t| parse_override(t)).collect()
}

#[derive(Debug)]
enum ValueError {
    Syntax(String),
    Unsupported(String),
    /// Lists and dicts nested more than [`MAX_DEPTH`] deep.
    TooDeep,
}

/// The text of an override short enough for an error message: hostile input can be megabytes.
pub(crate) fn abbreviate(text: &str) -> String {
    const KEEP: usize = 60;
    let n = text.chars().count();
    if n <= KEEP + 20 {
        return text.to_string();
    }
    let head: String = text.chars().take(KEEP).collect();
    format!("{head}... ({n} characters)")
}

/// Parses an override value (the part after `=`) into a typed YAML value.
fn parse_value(s: &str) -> Result<Value, ValueError> {
    let chars: Vec<char> = s.chars().collect();
    let mut p = Parser {
        c: &chars,
        i: 0,
        depth: 0,
    };
    p.ws();
    if p.eof() {
        return Ok(Value::String(String::new()));
    }
    let v = p.element(Ctx::Top)?;
    p.ws();
    if !p.eof() {
        if p.peek() == Some(',') {
            return Err(ValueError::Unsupported(
                "sweeps (comma-separated values) need --multirun (-m); \
                 quote the value ('a,b') or escape the comma (a\\,b) for a plain string"
                    .into(),
            ));
        }
        return Err(ValueError::Syntax(format!(
            "unexpected {:?} at position {}",
            p.peek().unwrap_or(' '),
            p.i
        )));
    }
    Ok(v)
}

#[derive(Clone, Copy, PartialEq)]
enum Ctx {
    Top,
    List,
    DictValue,
    DictKey,
}

struct Parser<'a> {
    c: &'a [char],
    i: usize,
    /// Lists and dicts open around the current position.
    depth: usize,
}

impl Parser<'_> {
    fn eof(&self) -> bool {
        self.i >= self.c.len()
    }
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.i += 1;
        }
    }
    fn err<T>(&self, m: &str) -> Result<T, ValueError> {
        Err(ValueError::Syntax(format!("{m} at position {}", self.i)))
    }

    fn element(&mut self, ctx: Ctx) -> Result<Value, ValueError> {
        self.ws();
        match self.peek() {
            Some(open @ ('[' | '{')) => {
                if self.depth >= MAX_DEPTH {
                    return Err(ValueError::TooDeep);
                }
                self.depth += 1;
                let v = if open == '[' {
                    self.list()
                } else {
                    self.dict()
                };
                self.depth -= 1;
                v
            }
            Some('\'') | Some('"') => {
                let start = self.i;
                let s = self.quoted()?;
                self.ws();
                match self.peek() {
                    None | Some(',') | Some(']') | Some('}') => Ok(Value::String(s)),
                    Some(_) => {
                        self.i = start;
                        self.err("unexpected text after a quoted string")
                    }
                }
            }
            _ => self.primitive(ctx),
        }
    }

    fn list(&mut self) -> Result<Value, ValueError> {
        self.i += 1; // [
        let mut out = Vec::new();
        self.ws();
        if self.peek() == Some(']') {
            self.i += 1;
            return Ok(Value::Sequence(out));
        }
        loop {
            out.push(self.element(Ctx::List)?);
            self.ws();
            match self.peek() {
                Some(',') => self.i += 1,
                Some(']') => {
                    self.i += 1;
                    return Ok(Value::Sequence(out));
                }
                _ => return self.err("expected ',' or ']' in list"),
            }
        }
    }

    fn dict(&mut self) -> Result<Value, ValueError> {
        self.i += 1; // {
        let mut out = Mapping::new();
        self.ws();
        if self.peek() == Some('}') {
            self.i += 1;
            return Ok(Value::Mapping(out));
        }
        loop {
            self.ws();
            let key = match self.peek() {
                Some('\'') | Some('"') => return self.err("dict keys cannot be quoted"),
                _ => match self.primitive(Ctx::DictKey)? {
                    Value::String(s) => s,
                    other => crate::value::scalar_to_string(&other),
                },
            };
            if key.is_empty() {
                return self.err("empty dict key");
            }
            self.ws();
            if self.peek() != Some(':') {
                return self.err("expected ':' after dict key");
            }
            self.i += 1;
            let v = self.element(Ctx::DictValue)?;
            out.insert(Value::String(key), v);
            self.ws();
            match self.peek() {
                Some(',') => self.i += 1,
                Some('}') => {
                    self.i += 1;
                    return Ok(Value::Mapping(out));
                }
                _ => return self.err("expected ',' or '}' in dict"),
            }
        }
    }

    fn quoted(&mut self) -> Result<String, ValueError> {
        let q = self.peek().unwrap();
        self.i += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated quoted string"),
                Some('\\') => {
                    // Hydra: backslashes only escape the quote char or a backslash before it.
                    let mut n = 0;
                    while self.c.get(self.i + n) == Some(&'\\') {
                        n += 1;
                    }
                    if self.c.get(self.i + n) == Some(&q) {
                        for _ in 0..n / 2 {
                            out.push('\\');
                        }
                        self.i += n;
                        if n % 2 == 1 {
                            out.push(q);
                            self.i += 1;
                        }
                    } else {
                        for _ in 0..n {
                            out.push('\\');
                        }
                        self.i += n;
                    }
                }
                Some(c) if c == q => {
                    self.i += 1;
                    return Ok(out);
                }
                Some('$') if self.c.get(self.i + 1) == Some(&'{') => {
                    out.push_str(&self.interpolation()?);
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }

    /// Reads a balanced `${...}` verbatim.
    fn interpolation(&mut self) -> Result<String, ValueError> {
        let start = self.i;
        self.i += 2;
        let mut depth = 1;
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(self.c[start..self.i].iter().collect());
                    }
                }
                _ => {}
            }
        }
        self.i = start;
        self.err("unterminated interpolation '${'")
    }

    fn primitive(&mut self, ctx: Ctx) -> Result<Value, ValueError> {
        let mut out = String::new();
        let mut plain = true; // only plain characters: eligible for typing
        while let Some(c) = self.peek() {
            match c {
                ',' | ']' | '}' if ctx != Ctx::Top => break,
                ',' => break,
                ']' | '}' => return self.err(&format!("unexpected '{c}'")),
                ':' if ctx == Ctx::DictKey => break,
                '[' | '{' => return self.err(&format!("unexpected '{c}' inside a value")),
                '\'' | '"' => return self.err("unexpected quote inside an unquoted value"),
                '(' => {
                    let name = out.trim();
                    if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        return Err(ValueError::Unsupported(format!(
                            "function '{name}(...)': sweeps need --multirun (-m); casts are not supported"
                        )));
                    }
                    return self.err("unexpected '(' (escape it as \\()");
                }
                ')' => return self.err("unexpected ')' (escape it as \\))"),
                '=' => return self.err("unexpected '=' (escape it as \\=)"),
                '\\' => {
                    let next = self.c.get(self.i + 1).copied();
                    match next {
                        Some(
                            n @ ('\\' | '(' | ')' | '[' | ']' | '{' | '}' | ':' | '=' | ',' | ' '
                            | '\t'),
                        ) => {
                            out.push(n);
                            self.i += 2;
                            plain = false;
                        }
                        _ => {
                            out.push('\\');
                            self.i += 1;
                        }
                    }
                }
                '$' if self.c.get(self.i + 1) == Some(&'{') => {
                    out.push_str(&self.interpolation()?);
                    plain = false;
                }
                c => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        // Trim unescaped outer whitespace (escaped trailing spaces were pushed as plain chars,
        // which Hydra keeps; we approximate by trimming only when no escapes were used).
        let text = if plain {
            out.trim().to_string()
        } else {
            out.trim_start().to_string()
        };
        if plain && ctx != Ctx::DictKey {
            if let Some(v) = type_primitive(&text) {
                return Ok(v);
            }
        }
        Ok(Value::String(text))
    }
}

/// Types an unquoted primitive the way Hydra's lexer does (NULL, BOOL, INT, FLOAT).
pub(crate) fn type_primitive(t: &str) -> Option<Value> {
    let lower = t.to_ascii_lowercase();
    match lower.as_str() {
        "null" => return Some(Value::Null),
        "true" => return Some(Value::Bool(true)),
        "false" => return Some(Value::Bool(false)),
        _ => {}
    }
    let (sign, body) = match lower.strip_prefix(['+', '-']) {
        Some(b) => (&lower[..1], b),
        None => ("", lower.as_str()),
    };
    if body == "inf" {
        return Some(Value::from(if sign == "-" {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }));
    }
    if body == "nan" {
        return Some(Value::from(f64::NAN));
    }
    if is_int_unsigned(body) {
        let digits: String = body.chars().filter(|c| *c != '_').collect();
        let n = format!("{sign}{digits}");
        if let Ok(i) = n.parse::<i64>() {
            return Some(Value::from(i));
        }
        if let Ok(u) = n.parse::<u64>() {
            return Some(Value::from(u));
        }
        return n.parse::<f64>().ok().map(Value::from);
    }
    if is_float_body(body) {
        let digits: String = body.chars().filter(|c| *c != '_').collect();
        return format!("{sign}{digits}")
            .parse::<f64>()
            .ok()
            .map(Value::from);
    }
    None
}

/// `'0' | [1-9] ('_'? DIGIT)*`
fn is_int_unsigned(s: &str) -> bool {
    if s == "0" {
        return true;
    }
    let b = s.as_bytes();
    if b.is_empty() || !(b'1'..=b'9').contains(&b[0]) {
        return false;
    }
    digits_with_underscores(&s[1..], true)
}

/// `DIGIT ('_'? DIGIT)*`; with `tail`, `('_'? DIGIT)*` (may be empty, may start with `_`).
fn digits_with_underscores(s: &str, tail: bool) -> bool {
    if s.is_empty() {
        return tail;
    }
    let b = s.as_bytes();
    if b[0] == b'_' && !tail {
        return false;
    }
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' {
            // an underscore must be followed by a digit
            if !b.get(i + 1).is_some_and(|n| n.is_ascii_digit()) {
                return false;
            }
        } else if !c.is_ascii_digit() {
            return false;
        }
    }
    true
}

/// Hydra's POINT_FLOAT | EXPONENT_FLOAT (without sign).
fn is_float_body(s: &str) -> bool {
    let (mantissa, exp) = match s.find('e') {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    if let Some(e) = exp {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        if !digits_with_underscores(e, false) {
            return false;
        }
    }
    match mantissa.find('.') {
        Some(i) => {
            let (a, b) = (&mantissa[..i], &mantissa[i + 1..]);
            let a_ok = a.is_empty() || is_int_unsigned(a);
            let b_ok = b.is_empty() || digits_with_underscores(b, false);
            a_ok && b_ok && !(a.is_empty() && b.is_empty())
        }
        None => exp.is_some() && is_int_unsigned(mantissa),
    }
}
