//! Block YAML output identical to `OmegaConf.to_yaml` (PyYAML's emitter with OmegaConf's
//! dumper: `default_flow_style=False`, `allow_unicode=True`, `sort_keys=False`, width 80).
//!
//! Scalar styles follow PyYAML: plain when the text reads back as the same string under YAML
//! 1.1 and has no indicators, otherwise single-quoted, otherwise double-quoted; OmegaConf adds
//! quotes to strings that look like booleans, ints or floats. Long plain and quoted scalars are
//! folded at spaces past column 80, as PyYAML does.

use serde_norway::Value;

use crate::value::py_float;

const BEST_WIDTH: usize = 80;

/// Renders a value as OmegaConf's `to_yaml` would.
pub(crate) fn to_yaml(v: &Value) -> String {
    let mut w = W::default();
    match v {
        Value::Mapping(m) if !m.is_empty() => w.mapping(m, 0, true),
        Value::Sequence(s) if !s.is_empty() => w.sequence(s, 0, true),
        Value::Mapping(_) => w.write("{}"),
        Value::Sequence(_) => w.write("[]"),
        Value::Tagged(t) => return to_yaml(&t.value),
        scalar => w.scalar(scalar, 0, false),
    }
    w.out.push('\n');
    w.out
}

#[derive(Default)]
struct W {
    out: String,
    column: usize,
    whitespace: bool,
    indention: bool,
    indent: usize,
}

impl W {
    fn write(&mut self, s: &str) {
        self.out.push_str(s);
        self.column += s.chars().count();
    }

    fn line_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
        self.whitespace = true;
        self.indention = true;
    }

    /// PyYAML's `write_indent`.
    fn write_indent(&mut self) {
        let indent = self.indent;
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.line_break();
        }
        if self.column < indent {
            self.whitespace = true;
            let pad = " ".repeat(indent - self.column);
            self.out.push_str(&pad);
            self.column = indent;
        }
    }

    fn start_line(&mut self, indent: usize) {
        if !self.out.is_empty() {
            self.out.push('\n');
        }
        self.out.push_str(&" ".repeat(indent));
        self.column = indent;
    }

    fn mapping(&mut self, m: &serde_norway::Mapping, indent: usize, first_inline: bool) {
        for (i, (k, v)) in m.iter().enumerate() {
            if !(i == 0 && first_inline) {
                self.start_line(indent);
            }
            if is_simple_key(k) {
                self.scalar(k, indent, true);
                self.write(":");
            } else {
                // PyYAML's complex key: `? key` then `: value` on the next line.
                self.write("? ");
                self.scalar(k, indent + 2, false);
                self.start_line(indent);
                self.write(":");
            }
            self.value(v, indent);
        }
    }

    fn value(&mut self, v: &Value, indent: usize) {
        match v {
            Value::Mapping(m) if !m.is_empty() => self.mapping(m, indent + 2, false),
            Value::Sequence(s) if !s.is_empty() => self.sequence(s, indent, false),
            Value::Mapping(_) => self.write(" {}"),
            Value::Sequence(_) => self.write(" []"),
            Value::Tagged(t) => self.value(&t.value, indent),
            scalar => {
                self.write(" ");
                self.scalar(scalar, indent + 2, false);
            }
        }
    }

    fn sequence(&mut self, s: &[Value], indent: usize, first_inline: bool) {
        for (i, item) in s.iter().enumerate() {
            if !(i == 0 && first_inline) {
                self.start_line(indent);
            }
            self.write("- ");
            match item {
                Value::Mapping(m) if !m.is_empty() => self.mapping(m, indent + 2, true),
                Value::Sequence(s) if !s.is_empty() => self.sequence(s, indent + 2, true),
                Value::Mapping(_) => self.write("{}"),
                Value::Sequence(_) => self.write("[]"),
                Value::Tagged(t) => self.scalar(&t.value, indent + 2, false),
                scalar => self.scalar(scalar, indent + 2, false),
            }
        }
    }

    /// Writes a scalar; `indent` is where folded continuation lines start.
    fn scalar(&mut self, v: &Value, indent: usize, simple_key: bool) {
        let text = match v {
            Value::Null => "null".to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => crate::value::number_text(n, yaml_float),
            Value::String(s) => {
                self.string(s, indent, simple_key);
                return;
            }
            Value::Tagged(t) => return self.scalar(&t.value, indent, simple_key),
            Value::Mapping(_) | Value::Sequence(_) => {
                // Containers as keys do not occur in configs; fall back to flow text.
                crate::value::flow(v)
            }
        };
        self.write(&text);
    }

    fn string(&mut self, s: &str, indent: usize, simple_key: bool) {
        let a = analyze(s);
        let force_quotes = omegaconf_quotes(s);
        let implicit_str = !yaml11_non_str(s);
        let style = if !force_quotes
            && implicit_str
            && !(simple_key && (a.empty || a.multiline))
            && a.allow_block_plain
        {
            Style::Plain
        } else if a.allow_single_quoted && !(simple_key && a.multiline) {
            Style::Single
        } else {
            Style::Double
        };
        self.indent = indent;
        self.whitespace = self.out.ends_with(' ') || self.out.is_empty();
        self.indention = false;
        let split = !simple_key;
        match style {
            Style::Plain => self.write_plain(s, split),
            Style::Single => self.write_single(s, split),
            Style::Double => self.write_double(s, split),
        }
    }

    fn write_plain(&mut self, text: &str, split: bool) {
        let c: Vec<char> = text.chars().collect();
        let (mut spaces, mut breaks) = (false, false);
        let (mut start, mut end) = (0, 0);
        while end <= c.len() {
            let ch = c.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end && self.column > BEST_WIDTH && split {
                        self.write_indent();
                        self.whitespace = false;
                        self.indention = false;
                    } else {
                        let d: String = c[start..end].iter().collect();
                        self.write(&d);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    if c[start] == '\n' {
                        self.line_break();
                    }
                    for _ in start..end {
                        self.line_break();
                    }
                    self.write_indent();
                    self.whitespace = false;
                    self.indention = false;
                    start = end;
                }
            } else if ch.is_none_or(|x| x == ' ' || is_break(x)) {
                let d: String = c[start..end].iter().collect();
                self.write(&d);
                start = end;
            }
            if let Some(x) = ch {
                spaces = x == ' ';
                breaks = is_break(x);
            }
            end += 1;
        }
    }

    fn write_single(&mut self, text: &str, split: bool) {
        self.write("'");
        let c: Vec<char> = text.chars().collect();
        let (mut spaces, mut breaks) = (false, false);
        let (mut start, mut end) = (0, 0);
        while end <= c.len() {
            let ch = c.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && split
                        && start != 0
                        && end != c.len()
                    {
                        self.write_indent();
                    } else {
                        let d: String = c[start..end].iter().collect();
                        self.write(&d);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    if c[start] == '\n' {
                        self.line_break();
                    }
                    for _ in start..end {
                        self.line_break();
                    }
                    self.write_indent();
                    start = end;
                }
            } else if ch.is_none_or(|x| x == ' ' || is_break(x) || x == '\'') && start < end {
                let d: String = c[start..end].iter().collect();
                self.write(&d);
                start = end;
            }
            if ch == Some('\'') {
                self.write("''");
                start = end + 1;
            }
            if let Some(x) = ch {
                spaces = x == ' ';
                breaks = is_break(x);
            }
            end += 1;
        }
        self.write("'");
    }

    fn write_double(&mut self, text: &str, split: bool) {
        self.write("\"");
        let c: Vec<char> = text.chars().collect();
        let (mut start, mut end) = (0, 0);
        while end <= c.len() {
            let ch = c.get(end).copied();
            let needs_escape = match ch {
                None => true,
                Some(x) => {
                    matches!(
                        x,
                        '"' | '\\' | '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}'
                    ) || !(('\x20'..='\x7E').contains(&x)
                        || ('\u{A0}'..='\u{D7FF}').contains(&x)
                        || ('\u{E000}'..='\u{FFFD}').contains(&x))
                }
            };
            if needs_escape {
                if start < end {
                    let d: String = c[start..end].iter().collect();
                    self.write(&d);
                    start = end;
                }
                if let Some(x) = ch {
                    let data = match x {
                        '\0' => "\\0".to_string(),
                        '\x07' => "\\a".to_string(),
                        '\x08' => "\\b".to_string(),
                        '\t' => "\\t".to_string(),
                        '\n' => "\\n".to_string(),
                        '\x0B' => "\\v".to_string(),
                        '\x0C' => "\\f".to_string(),
                        '\r' => "\\r".to_string(),
                        '\x1B' => "\\e".to_string(),
                        '"' => "\\\"".to_string(),
                        '\\' => "\\\\".to_string(),
                        '\u{85}' => "\\N".to_string(),
                        '\u{A0}' => "\\_".to_string(),
                        '\u{2028}' => "\\L".to_string(),
                        '\u{2029}' => "\\P".to_string(),
                        x if (x as u32) <= 0xFF => format!("\\x{:02X}", x as u32),
                        x if (x as u32) <= 0xFFFF => format!("\\u{:04X}", x as u32),
                        x => format!("\\U{:08X}", x as u32),
                    };
                    self.write(&data);
                    start = end + 1;
                }
            }
            if 0 < end
                && end + 1 < c.len()
                && (ch == Some(' ') || start >= end)
                && self.column + end.saturating_sub(start) > BEST_WIDTH
                && split
            {
                let mut d: String = c[start.min(end)..end].iter().collect();
                d.push('\\');
                if start < end {
                    start = end;
                }
                self.write(&d);
                self.write_indent();
                self.whitespace = false;
                self.indention = false;
                if c.get(start) == Some(&' ') {
                    self.write("\\");
                }
            }
            end += 1;
        }
        self.write("\"");
    }
}

/// PyYAML's `check_simple_key` for a scalar key: shorter than 128 characters, not empty,
/// single-line.
fn is_simple_key(k: &Value) -> bool {
    match k {
        Value::String(s) => {
            let a = analyze(s);
            s.chars().count() < 128 && !a.empty && !a.multiline
        }
        _ => true,
    }
}

enum Style {
    Plain,
    Single,
    Double,
}

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_ws(c: Option<&char>) -> bool {
    c.is_none_or(|c| {
        matches!(
            c,
            '\0' | ' ' | '\t' | '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'
        )
    })
}

/// PyYAML's float representation (`1.0e-05`, `.inf`, `.nan`).
fn yaml_float(f: f64) -> String {
    if f.is_nan() {
        return ".nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            ".inf".into()
        } else {
            "-.inf".into()
        };
    }
    let v = py_float(f).to_lowercase();
    if !v.contains('.') && v.contains('e') {
        v.replacen('e', ".0e", 1)
    } else {
        v
    }
}

struct Analysis {
    empty: bool,
    multiline: bool,
    allow_block_plain: bool,
    allow_single_quoted: bool,
}

/// PyYAML's `analyze_scalar` (the parts that decide block-context styles).
fn analyze(s: &str) -> Analysis {
    if s.is_empty() {
        return Analysis {
            empty: true,
            multiline: false,
            allow_block_plain: true,
            allow_single_quoted: true,
        };
    }
    let c: Vec<char> = s.chars().collect();
    let mut block_indicators = s.starts_with("---") || s.starts_with("...");
    let mut line_breaks = false;
    let mut special = false;
    let (mut leading_space, mut leading_break, mut trailing_space, mut trailing_break) =
        (false, false, false, false);
    let (mut break_space, mut space_break) = (false, false);
    let mut preceded_by_ws = true;
    let mut followed_by_ws = c.len() == 1 || is_ws(c.get(1));
    let (mut prev_space, mut prev_break) = (false, false);
    for (i, &ch) in c.iter().enumerate() {
        if i == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                block_indicators = true;
            }
            if (ch == '?' || ch == ':') && followed_by_ws {
                block_indicators = true;
            }
            if ch == '-' && followed_by_ws {
                block_indicators = true;
            }
        } else {
            if ch == ':' && followed_by_ws {
                block_indicators = true;
            }
            if ch == '#' && preceded_by_ws {
                block_indicators = true;
            }
        }
        if is_break(ch) {
            line_breaks = true;
        }
        if !(ch == '\n' || ('\x20'..='\x7E').contains(&ch)) {
            let unicode_ok = (ch == '\u{85}'
                || ('\u{A0}'..='\u{D7FF}').contains(&ch)
                || ('\u{E000}'..='\u{FFFD}').contains(&ch)
                || ('\u{10000}'..'\u{10FFFF}').contains(&ch))
                && ch != '\u{FEFF}';
            if !unicode_ok {
                special = true;
            }
        }
        if ch == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i == c.len() - 1 {
                trailing_space = true;
            }
            if prev_break {
                break_space = true;
            }
            prev_space = true;
            prev_break = false;
        } else if is_break(ch) {
            if i == 0 {
                leading_break = true;
            }
            if i == c.len() - 1 {
                trailing_break = true;
            }
            if prev_space {
                space_break = true;
            }
            prev_space = false;
            prev_break = true;
        } else {
            prev_space = false;
            prev_break = false;
        }
        preceded_by_ws = is_ws(Some(&ch));
        followed_by_ws = i + 2 >= c.len() || is_ws(c.get(i + 2));
    }
    let mut allow_block_plain = true;
    let mut allow_single_quoted = true;
    if leading_space || leading_break || trailing_space || trailing_break {
        allow_block_plain = false;
    }
    if break_space {
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if space_break || special {
        allow_block_plain = false;
        allow_single_quoted = false;
    }
    if line_breaks || block_indicators {
        allow_block_plain = false;
    }
    Analysis {
        empty: false,
        multiline: line_breaks,
        allow_block_plain,
        allow_single_quoted,
    }
}

/// OmegaConf's dumper quotes strings that would read back as bool, int or float.
fn omegaconf_quotes(s: &str) -> bool {
    const BOOLS: [&str; 22] = [
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    ];
    BOOLS.contains(&s) || py_int(s) || py_float_parses(s)
}

/// Python's `int(s)` succeeds.
fn py_int(s: &str) -> bool {
    let t = s.trim();
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    underscored_digits(t, |c| c.is_ascii_digit())
}

/// Python's `float(s)` succeeds.
fn py_float_parses(s: &str) -> bool {
    let t = s.trim();
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let lower = body.to_ascii_lowercase();
    if matches!(lower.as_str(), "inf" | "infinity" | "nan") {
        return true;
    }
    let (mant, exp) = match lower.find('e') {
        Some(i) => (&lower[..i], Some(&lower[i + 1..])),
        None => (lower.as_str(), None),
    };
    if let Some(e) = exp {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        if !underscored_digits(e, |c| c.is_ascii_digit()) {
            return false;
        }
    }
    match mant.split_once('.') {
        Some((a, b)) => {
            (a.is_empty() || underscored_digits(a, |c| c.is_ascii_digit()))
                && (b.is_empty() || underscored_digits(b, |c| c.is_ascii_digit()))
                && !(a.is_empty() && b.is_empty())
        }
        None => underscored_digits(mant, |c| c.is_ascii_digit()),
    }
}

/// Digits with single underscores between them (Python's numeric literal rule).
fn underscored_digits(s: &str, digit: impl Fn(char) -> bool) -> bool {
    let c: Vec<char> = s.chars().collect();
    if c.is_empty() || !digit(c[0]) || !digit(c[c.len() - 1]) {
        return false;
    }
    c.windows(2)
        .all(|w| (digit(w[0]) || w[0] == '_') && (digit(w[1]) || w[1] == '_'))
        && !c.windows(2).any(|w| w[0] == '_' && w[1] == '_')
}

fn all(s: &str, f: impl Fn(char) -> bool) -> bool {
    !s.is_empty() && s.chars().all(f)
}

/// `[0-9][0-9_]*`
fn digits_us(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_digit() || c == '_')
}

/// `(:[0-5]?[0-9])+`
fn sexagesimal_tail(s: &str) -> bool {
    if !s.starts_with(':') {
        return false;
    }
    s[1..].split(':').all(|part| {
        let b = part.as_bytes();
        match b.len() {
            1 => b[0].is_ascii_digit(),
            2 => (b'0'..=b'5').contains(&b[0]) && b[1].is_ascii_digit(),
            _ => false,
        }
    })
}

/// True when PyYAML's YAML 1.1 resolver reads the plain scalar as something other than a
/// string (bool, int, float, null, timestamp, merge, value).
fn yaml11_non_str(s: &str) -> bool {
    const WORDS: [&str; 23] = [
        "yes", "Yes", "YES", "no", "No", "NO", "true", "True", "TRUE", "false", "False", "FALSE",
        "on", "On", "ON", "off", "Off", "OFF", "~", "null", "Null", "NULL", "",
    ];
    if WORDS.contains(&s) || s == "<<" || s == "=" {
        return true;
    }
    yaml11_int(s) || yaml11_float(s) || yaml11_timestamp(s)
}

fn yaml11_int(s: &str) -> bool {
    let t = s.strip_prefix(['+', '-']).unwrap_or(s);
    if let Some(b) = t.strip_prefix("0b") {
        return all(b, |c| c == '0' || c == '1' || c == '_');
    }
    if let Some(x) = t.strip_prefix("0x") {
        return all(x, |c| c.is_ascii_hexdigit() || c == '_');
    }
    if t == "0" {
        return true;
    }
    if let Some(o) = t.strip_prefix('0') {
        return all(o, |c| ('0'..='7').contains(&c) || c == '_');
    }
    if !t.starts_with(|c: char| ('1'..='9').contains(&c)) {
        return false;
    }
    match t.find(':') {
        None => digits_us(t),
        Some(i) => digits_us(&t[..i]) && sexagesimal_tail(&t[i..]),
    }
}

fn yaml11_float(s: &str) -> bool {
    // [-+]?\.(inf|Inf|INF) | \.(nan|NaN|NAN)
    let unsigned = s.strip_prefix(['+', '-']).unwrap_or(s);
    if matches!(unsigned, ".inf" | ".Inf" | ".INF") || matches!(s, ".nan" | ".NaN" | ".NAN") {
        return true;
    }
    let exp_ok = |e: &str| -> bool {
        // ([eE][-+][0-9]+)?
        e.is_empty()
            || (e.starts_with(['e', 'E'])
                && e[1..].starts_with(['+', '-'])
                && all(&e[2..], |c| c.is_ascii_digit()))
    };
    // \.[0-9_]+ (exp)?   (no sign)
    if let Some(rest) = s.strip_prefix('.') {
        let end = rest.find(['e', 'E']).unwrap_or(rest.len());
        return all(&rest[..end], |c| c.is_ascii_digit() || c == '_') && exp_ok(&rest[end..]);
    }
    let t = unsigned;
    let Some(dot) = t.find('.') else {
        return false;
    };
    let (int_part, frac) = (&t[..dot], &t[dot + 1..]);
    let frac_digits_end = frac.find(['e', 'E']).unwrap_or(frac.len());
    let frac_ok = frac[..frac_digits_end]
        .chars()
        .all(|c| c.is_ascii_digit() || c == '_');
    // [0-9][0-9_]* \. [0-9_]* (exp)?
    if digits_us(int_part) && frac_ok && exp_ok(&frac[frac_digits_end..]) {
        return true;
    }
    // [0-9][0-9_]* (:[0-5]?[0-9])+ \. [0-9_]*
    if let Some(i) = int_part.find(':') {
        return digits_us(&int_part[..i])
            && sexagesimal_tail(&int_part[i..])
            && frac.chars().all(|c| c.is_ascii_digit() || c == '_');
    }
    false
}

fn yaml11_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let d = |i: usize| b.get(i).is_some_and(|c| c.is_ascii_digit());
    // YYYY-MM-DD exactly
    if b.len() == 10
        && (0..4).all(d)
        && b[4] == b'-'
        && d(5)
        && d(6)
        && b[7] == b'-'
        && d(8)
        && d(9)
    {
        return true;
    }
    // YYYY-M?M-D?D([Tt]|[ \t]+)H?H:MM:SS(.f*)?(([ \t]*)(Z|[-+]H?H(:MM)?))?
    if !(b.len() > 10 && (0..4).all(d) && b[4] == b'-') {
        return false;
    }
    let mut i = 5;
    let take_1_2 = |i: &mut usize| -> bool {
        if !d(*i) {
            return false;
        }
        *i += 1;
        if d(*i) {
            *i += 1;
        }
        true
    };
    if !take_1_2(&mut i) || b.get(i) != Some(&b'-') {
        return false;
    }
    i += 1;
    if !take_1_2(&mut i) {
        return false;
    }
    match b.get(i) {
        Some(b'T' | b't') => i += 1,
        Some(b' ' | b'\t') => {
            while matches!(b.get(i), Some(b' ' | b'\t')) {
                i += 1;
            }
        }
        _ => return false,
    }
    if !take_1_2(&mut i) {
        return false;
    }
    for _ in 0..2 {
        if b.get(i) != Some(&b':') || !d(i + 1) || !d(i + 2) {
            return false;
        }
        i += 3;
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        while d(i) {
            i += 1;
        }
    }
    if i == b.len() {
        return true;
    }
    while matches!(b.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    match b.get(i) {
        Some(b'Z') => i + 1 == b.len(),
        Some(b'+' | b'-') => {
            i += 1;
            if !take_1_2(&mut i) {
                return false;
            }
            if b.get(i) == Some(&b':') {
                if !(d(i + 1) && d(i + 2)) {
                    return false;
                }
                i += 3;
            }
            i == b.len()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn y(s: &str) -> String {
        to_yaml(&serde_norway::from_str(s).unwrap())
    }

    #[test]
    fn quoting_matches_omegaconf() {
        assert_eq!(
            y("{n: null, 'y': 'n', t: 'true', e: ''}"),
            "'n': null\n'y': 'n'\nt: 'true'\ne: ''\n"
        );
        assert_eq!(
            y("{a: '1e3', b: '2024-05-17', c: '0x1F', d: '0o17', h: 'a #b', k: 'a#b'}"),
            "a: '1e3'\nb: '2024-05-17'\nc: '0x1F'\nd: 0o17\nh: 'a #b'\nk: a#b\n"
        );
        assert_eq!(
            y("{s: '${a.b}', q: \"it's\", m: \"line1\\nline2\", t: \"a\\tb\"}"),
            "s: ${a.b}\nq: it's\nm: 'line1\n\n  line2'\nt: \"a\\tb\"\n"
        );
        assert_eq!(
            y("{f: 1.0e-5, g: 1.0e20, i: .inf, z: 0.5}"),
            "f: 1.0e-05\ng: 1.0e+20\ni: .inf\nz: 0.5\n"
        );
    }

    #[test]
    fn block_layout() {
        assert_eq!(
            y("{a: {b: [1, {c: 2, d: [x]}, [3, 4], []]}, e: {}, f: []}"),
            "a:\n  b:\n  - 1\n  - c: 2\n    d:\n    - x\n  - - 3\n    - 4\n  - []\ne: {}\nf: []\n"
        );
        assert_eq!(y("{}"), "{}\n");
    }

    #[test]
    fn long_words_and_lists_fold_like_pyyaml() {
        let v: Value = serde_norway::from_str(&format!(
            "{{x: {} {}, d: '\"{}', l: ['{}end']}}",
            "a".repeat(90),
            "b".repeat(10),
            "x ".repeat(60),
            "p ".repeat(45)
        ))
        .unwrap();
        // Generated with OmegaConf.to_yaml.
        let want = "x: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n  bbbbbbbbbb\nd: '\"x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x x\n  x x x x x x x x x x x x x x x x x x x x x '\nl:\n- p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p p\n  p p p p p end\n";
        assert_eq!(to_yaml(&v), want);
    }

    #[test]
    fn long_strings_fold_like_pyyaml() {
        let words = "word ".repeat(30);
        let v: Value = serde_norway::from_str(&format!(
            "{{a: '{words}', b: {{c: '{}'}}}}",
            words.trim_end()
        ))
        .unwrap();
        assert_eq!(
            to_yaml(&v),
            "a: 'word word word word word word word word word word word word word word word word\n  word word word word word word word word word word word word word word '\nb:\n  c: word word word word word word word word word word word word word word word word\n    word word word word word word word word word word word word word word\n"
        );
    }
}
