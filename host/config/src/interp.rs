//! OmegaConf 2.3 interpolation: `${a.b}`, `${.rel}`, `${..up}`, nested `${a.${b}}`, string
//! interpolation, escapes (`\${`), and the resolvers `oc.env`, `oc.select`, `oc.decode`, `now`
//! and `hydra`.

use serde_norway::{Mapping, Value};

use crate::overrides::type_primitive;
use crate::value::{get_path, is_missing, merge_into, scalar_to_string, MAX_DEPTH};
use crate::{ConfigError, ResolveContext};

/// A piece of text: literal characters or an interpolation.
#[derive(Debug, Clone)]
enum Piece {
    Text(String),
    Interp(Box<Interp>),
}

#[derive(Debug, Clone)]
enum Interp {
    /// `${a.b}` (the key may itself contain interpolations).
    Node(Vec<Piece>),
    /// `${name:arg,...}`.
    Resolver { name: String, args: Vec<Arg> },
}

#[derive(Debug, Clone)]
enum Arg {
    Quoted(Vec<Piece>),
    /// Unquoted text; `plain` when it has no escapes or interpolations (eligible for typing).
    Primitive {
        pieces: Vec<Piece>,
        plain: bool,
    },
    List(Vec<Arg>),
    Dict(Vec<(String, Arg)>),
}

/// True when the string contains an (unescaped) interpolation or an escape to process.
pub(crate) fn has_interpolation(s: &str) -> bool {
    s.contains("${")
}

struct P<'a> {
    c: &'a [char],
    i: usize,
    /// Interpolations and argument lists open around the current position.
    depth: usize,
}

impl P<'_> {
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }
    fn at(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(k, ch)| self.c.get(self.i + k) == Some(&ch))
    }
    fn ws(&mut self) {
        while matches!(self.peek(), Some(' ' | '\t')) {
            self.i += 1;
        }
    }
    fn err<T>(&self, m: &str) -> Result<T, String> {
        Err(format!("{m} at position {}", self.i))
    }

    /// Top-level string: text with `${...}`; `\${` is a literal `${`, `\\${` a backslash
    /// followed by an interpolation.
    fn top(&mut self) -> Result<Vec<Piece>, String> {
        let mut out = Vec::new();
        let mut text = String::new();
        while let Some(c) = self.peek() {
            if c == '\\' {
                let mut n = 0;
                while self.c.get(self.i + n) == Some(&'\\') {
                    n += 1;
                }
                let before = self.i;
                self.i += n;
                if self.at("${") {
                    for _ in 0..n / 2 {
                        text.push('\\');
                    }
                    if n % 2 == 1 {
                        text.push_str("${");
                        self.i += 2;
                    }
                } else {
                    text.extend(&self.c[before..self.i]);
                }
            } else if self.at("${") {
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(Piece::Interp(Box::new(self.interp()?)));
            } else {
                text.push(c);
                self.i += 1;
            }
        }
        if !text.is_empty() {
            out.push(Piece::Text(text));
        }
        Ok(out)
    }

    /// Runs a nested parse one level deeper, refusing input nested past [`MAX_DEPTH`].
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T, String>) -> Result<T, String> {
        if self.depth >= MAX_DEPTH {
            return self.err(&format!("nested more than {MAX_DEPTH} levels deep"));
        }
        self.depth += 1;
        let r = f(self);
        self.depth -= 1;
        r
    }

    /// `${...}` starting at the current position.
    fn interp(&mut self) -> Result<Interp, String> {
        self.nested(Self::interp_here)
    }

    fn interp_here(&mut self) -> Result<Interp, String> {
        self.i += 2;
        self.ws();
        // Read a key-like run (may contain nested interpolations).
        let mut pieces = Vec::new();
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return self.err("unterminated interpolation"),
                Some('$') if self.at("${") => {
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Interp(Box::new(self.interp()?)));
                }
                Some('}' | ':' | ' ' | '\t') => break,
                Some('[') => {
                    text.push('.');
                    self.i += 1;
                }
                Some(']') => self.i += 1,
                Some(c @ ('{' | '(' | ')' | '\'' | '"' | '\\')) => {
                    return self.err(&format!("unexpected {c:?} in interpolation key"))
                }
                Some(c) => {
                    text.push(c);
                    self.i += 1;
                }
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        self.ws();
        match self.peek() {
            Some('}') => {
                self.i += 1;
                if pieces.is_empty() {
                    return self.err("empty interpolation");
                }
                Ok(Interp::Node(pieces))
            }
            Some(':') => {
                self.i += 1;
                let name = match pieces.as_slice() {
                    [Piece::Text(t)] => t.clone(),
                    _ => return self.err("resolver name must be plain text"),
                };
                let mut args = Vec::new();
                self.ws();
                if self.peek() == Some('}') {
                    self.i += 1;
                    return Ok(Interp::Resolver { name, args });
                }
                loop {
                    args.push(self.element(&['}', ','])?);
                    self.ws();
                    match self.peek() {
                        Some(',') => self.i += 1,
                        Some('}') => {
                            self.i += 1;
                            return Ok(Interp::Resolver { name, args });
                        }
                        _ => return self.err("expected ',' or '}' in resolver arguments"),
                    }
                }
            }
            _ => self.err("expected '}' to close interpolation"),
        }
    }

    fn element(&mut self, stops: &[char]) -> Result<Arg, String> {
        self.nested(|p| p.element_here(stops))
    }

    fn element_here(&mut self, stops: &[char]) -> Result<Arg, String> {
        self.ws();
        match self.peek() {
            Some('[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some(']') {
                    self.i += 1;
                    return Ok(Arg::List(items));
                }
                loop {
                    items.push(self.element(&[']', ','])?);
                    self.ws();
                    match self.peek() {
                        Some(',') => self.i += 1,
                        Some(']') => {
                            self.i += 1;
                            return Ok(Arg::List(items));
                        }
                        _ => return self.err("expected ',' or ']'"),
                    }
                }
            }
            Some('{') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.peek() == Some('}') {
                    self.i += 1;
                    return Ok(Arg::Dict(items));
                }
                loop {
                    self.ws();
                    let mut key = String::new();
                    while let Some(c) = self.peek() {
                        if c == ':' {
                            break;
                        }
                        key.push(c);
                        self.i += 1;
                    }
                    if self.peek() != Some(':') {
                        return self.err("expected ':' in dict");
                    }
                    self.i += 1;
                    let v = self.element(&['}', ','])?;
                    items.push((key.trim().to_string(), v));
                    self.ws();
                    match self.peek() {
                        Some(',') => self.i += 1,
                        Some('}') => {
                            self.i += 1;
                            return Ok(Arg::Dict(items));
                        }
                        _ => return self.err("expected ',' or '}'"),
                    }
                }
            }
            Some(q @ ('\'' | '"')) => {
                self.i += 1;
                let mut pieces = Vec::new();
                let mut text = String::new();
                loop {
                    match self.peek() {
                        None => return self.err("unterminated quoted string"),
                        Some('\\') if self.c.get(self.i + 1) == Some(&q) => {
                            text.push(q);
                            self.i += 2;
                        }
                        Some('\\') if self.c.get(self.i + 1) == Some(&'\\') => {
                            text.push('\\');
                            self.i += 2;
                        }
                        Some('\\') if self.at("\\${") => {
                            text.push_str("${");
                            self.i += 3;
                        }
                        Some('$') if self.at("${") => {
                            if !text.is_empty() {
                                pieces.push(Piece::Text(std::mem::take(&mut text)));
                            }
                            pieces.push(Piece::Interp(Box::new(self.interp()?)));
                        }
                        Some(c) if c == q => {
                            self.i += 1;
                            break;
                        }
                        Some(c) => {
                            text.push(c);
                            self.i += 1;
                        }
                    }
                }
                if !text.is_empty() || pieces.is_empty() {
                    pieces.push(Piece::Text(text));
                }
                Ok(Arg::Quoted(pieces))
            }
            _ => {
                let mut pieces = Vec::new();
                let mut text = String::new();
                let mut plain = true;
                loop {
                    match self.peek() {
                        None => break,
                        Some(c) if stops.contains(&c) => break,
                        Some('\\') => {
                            let n = self.c.get(self.i + 1).copied();
                            match n {
                                Some(
                                    x @ ('\\' | '(' | ')' | '[' | ']' | '{' | '}' | ':' | '=' | ','
                                    | ' ' | '\t'),
                                ) => {
                                    text.push(x);
                                    self.i += 2;
                                    plain = false;
                                }
                                Some('$') if self.at("\\${") => {
                                    text.push_str("${");
                                    self.i += 3;
                                    plain = false;
                                }
                                _ => {
                                    text.push('\\');
                                    self.i += 1;
                                }
                            }
                        }
                        Some('$') if self.at("${") => {
                            if !text.is_empty() {
                                pieces.push(Piece::Text(std::mem::take(&mut text)));
                            }
                            pieces.push(Piece::Interp(Box::new(self.interp()?)));
                            plain = false;
                        }
                        Some(c @ ('[' | ']' | '{' | '}' | '\'' | '"')) => {
                            return self.err(&format!("unexpected {c:?} in resolver argument"))
                        }
                        Some(c) => {
                            text.push(c);
                            self.i += 1;
                        }
                    }
                }
                // trim outer whitespace
                if !text.is_empty() {
                    pieces.push(Piece::Text(text));
                }
                if let Some(Piece::Text(t)) = pieces.first_mut() {
                    *t = t.trim_start().to_string();
                }
                if let Some(Piece::Text(t)) = pieces.last_mut() {
                    *t = t.trim_end().to_string();
                }
                pieces.retain(|p| !matches!(p, Piece::Text(t) if t.is_empty()));
                Ok(Arg::Primitive { pieces, plain })
            }
        }
    }
}

fn parse_template(s: &str) -> Result<Vec<Piece>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut p = P {
        c: &chars,
        i: 0,
        depth: 0,
    };
    p.top()
}

/// Dotted rendering of a key path.
fn dotted(path: &[String]) -> String {
    path.join(".")
}

pub(crate) struct Resolver<'a> {
    root: &'a Value,
    ctx: &'a ResolveContext,
    stack: Vec<Vec<String>>,
}

impl<'a> Resolver<'a> {
    /// Resolves the node at `path` and everything under it.
    fn resolve_all(&mut self, path: &mut Vec<String>) -> Result<Value, ConfigError> {
        let node = get_path(self.root, path).cloned().unwrap_or(Value::Null);
        match node {
            Value::String(s) if has_interpolation(&s) => self.resolve_string(path, &s),
            Value::Mapping(m) => {
                let mut out = Mapping::new();
                for (k, _) in m.iter() {
                    path.push(scalar_to_string(k));
                    let v = self.resolve_all(path)?;
                    path.pop();
                    out.insert(k.clone(), v);
                }
                Ok(Value::Mapping(out))
            }
            Value::Sequence(s) => {
                let mut out = Vec::with_capacity(s.len());
                for i in 0..s.len() {
                    path.push(i.to_string());
                    out.push(self.resolve_all(path)?);
                    path.pop();
                }
                Ok(Value::Sequence(out))
            }
            other => Ok(other),
        }
    }

    /// Resolves the string held at `path`.
    fn resolve_string(&mut self, path: &[String], s: &str) -> Result<Value, ConfigError> {
        if self.stack.iter().any(|p| p == path) {
            let mut chain: Vec<String> = self.stack.iter().map(|p| dotted(p)).collect();
            let start = chain.iter().position(|c| *c == dotted(path)).unwrap_or(0);
            chain.drain(..start);
            chain.push(dotted(path));
            return Err(ConfigError::InterpolationCycle {
                key: dotted(path),
                chain,
            });
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(ConfigError::TooDeep {
                what: format!(
                    "a chain of interpolations starting at '{}'",
                    crate::overrides::abbreviate(&dotted(&self.stack[0]))
                ),
                limit: MAX_DEPTH,
                at: Some(crate::overrides::abbreviate(&dotted(path))),
            });
        }
        let pieces = parse_template(s).map_err(|message| ConfigError::InterpolationSyntax {
            key: dotted(path),
            text: crate::overrides::abbreviate(s),
            message,
        })?;
        self.stack.push(path.to_vec());
        let r = self.eval_pieces(path, &pieces);
        self.stack.pop();
        r
    }

    /// Evaluates a template: a lone interpolation keeps its type, anything else is a string.
    fn eval_pieces(&mut self, path: &[String], pieces: &[Piece]) -> Result<Value, ConfigError> {
        match pieces {
            [] => Ok(Value::String(String::new())),
            [Piece::Interp(i)] => self.eval_interp(path, i),
            _ => {
                let mut out = String::new();
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Interp(i) => {
                            out.push_str(&scalar_to_string(&self.eval_interp(path, i)?))
                        }
                    }
                }
                Ok(Value::String(out))
            }
        }
    }

    fn text_of(&mut self, path: &[String], pieces: &[Piece]) -> Result<String, ConfigError> {
        Ok(scalar_to_string(&self.eval_pieces(path, pieces)?))
    }

    /// Turns a (possibly relative) key into an absolute path, relative to the container of
    /// the node at `path`.
    fn absolute(&self, path: &[String], key: &str) -> Option<Vec<String>> {
        let dots = key.chars().take_while(|c| *c == '.').count();
        let rest = &key[dots..];
        let mut base: Vec<String> = if dots == 0 {
            Vec::new()
        } else {
            let mut b = path[..path.len().saturating_sub(1)].to_vec();
            for _ in 1..dots {
                b.pop()?;
            }
            b
        };
        if !rest.is_empty() {
            base.extend(rest.split('.').map(str::to_string));
        }
        Some(base)
    }

    /// The resolved value of the node at an absolute path, or None when it does not exist.
    fn value_at(&mut self, target: &[String]) -> Result<Option<Value>, ConfigError> {
        let Some(node) = get_path(self.root, target) else {
            return Ok(None);
        };
        let node = node.clone();
        let mut t = target.to_vec();
        match node {
            Value::String(s) if has_interpolation(&s) => Ok(Some(self.resolve_string(&t, &s)?)),
            Value::Mapping(_) | Value::Sequence(_) => Ok(Some(self.resolve_all(&mut t)?)),
            other => Ok(Some(other)),
        }
    }

    fn select_node(&mut self, path: &[String], key: &str) -> Result<Value, ConfigError> {
        let not_found = || ConfigError::InterpolationKeyNotFound {
            key: dotted(path),
            target: key.to_string(),
        };
        let target = self.absolute(path, key).ok_or_else(not_found)?;
        if let Some(v) = get_path(self.root, &target) {
            if is_missing(v) {
                return Err(ConfigError::MissingMandatoryValue {
                    key: dotted(path),
                    target: dotted(&target),
                });
            }
        }
        self.value_at(&target)?.ok_or_else(not_found)
    }

    fn eval_interp(&mut self, path: &[String], i: &Interp) -> Result<Value, ConfigError> {
        match i {
            Interp::Node(pieces) => {
                let key = self.text_of(path, pieces)?;
                self.select_node(path, &key)
            }
            Interp::Resolver { name, args } => {
                let mut vals = Vec::with_capacity(args.len());
                for a in args {
                    vals.push(self.eval_arg(path, a)?);
                }
                self.call(path, name, vals)
            }
        }
    }

    fn eval_arg(&mut self, path: &[String], a: &Arg) -> Result<Value, ConfigError> {
        match a {
            Arg::Quoted(p) => Ok(Value::String(self.text_of(path, p)?)),
            Arg::Primitive { pieces, plain } => {
                if *plain {
                    let t = match pieces.as_slice() {
                        [Piece::Text(t)] => t.clone(),
                        [] => String::new(),
                        _ => unreachable!("plain primitives hold one text piece"),
                    };
                    Ok(type_primitive(&t).unwrap_or(Value::String(t)))
                } else {
                    self.eval_pieces(path, pieces)
                }
            }
            Arg::List(items) => {
                let mut out = Vec::new();
                for x in items {
                    out.push(self.eval_arg(path, x)?);
                }
                Ok(Value::Sequence(out))
            }
            Arg::Dict(items) => {
                let mut out = Mapping::new();
                for (k, v) in items {
                    out.insert(Value::String(k.clone()), self.eval_arg(path, v)?);
                }
                Ok(Value::Mapping(out))
            }
        }
    }

    fn call(
        &mut self,
        path: &[String],
        name: &str,
        args: Vec<Value>,
    ) -> Result<Value, ConfigError> {
        let fail = |message: String| ConfigError::ResolverFailed {
            key: dotted(path),
            resolver: name.to_string(),
            message,
        };
        let arity = |min: usize, max: usize| -> Result<(), ConfigError> {
            if args.len() < min || args.len() > max {
                Err(fail(format!(
                    "expected {} argument(s), got {}",
                    if min == max {
                        min.to_string()
                    } else {
                        format!("{min} to {max}")
                    },
                    args.len()
                )))
            } else {
                Ok(())
            }
        };
        match name {
            "oc.env" => {
                arity(1, 2)?;
                let var = scalar_to_string(&args[0]);
                if let Some(default) = args.get(1) {
                    if !matches!(default, Value::String(_) | Value::Null) {
                        return Err(fail(format!(
                            "the default value of oc.env must be a string or null, but `{}` is not",
                            scalar_to_string(default)
                        )));
                    }
                }
                match self.ctx.env_var(&var) {
                    Some(v) => Ok(Value::String(v)),
                    None => match args.get(1) {
                        Some(d) => Ok(d.clone()),
                        None => Err(ConfigError::EnvVarNotFound {
                            key: dotted(path),
                            var,
                        }),
                    },
                }
            }
            "oc.select" => {
                arity(1, 2)?;
                let key = scalar_to_string(&args[0]);
                let target = self.absolute(path, &key);
                let found = match target {
                    Some(t) => match get_path(self.root, &t) {
                        Some(v) if is_missing(v) => None,
                        Some(_) => self.value_at(&t)?,
                        None => None,
                    },
                    None => None,
                };
                Ok(found.unwrap_or_else(|| args.get(1).cloned().unwrap_or(Value::Null)))
            }
            "oc.decode" => {
                arity(1, 1)?;
                match &args[0] {
                    Value::String(s) => {
                        let t = s.trim();
                        if let Some(v) = type_primitive(t) {
                            return Ok(v);
                        }
                        if t.starts_with('[') || t.starts_with('{') {
                            return serde_norway::from_str(t)
                                .map_err(|e| fail(format!("cannot decode {t:?}: {e}")));
                        }
                        Ok(Value::String(s.clone()))
                    }
                    Value::Null => Ok(Value::Null),
                    other => Err(fail(format!(
                        "expects a string, got {}",
                        scalar_to_string(other)
                    ))),
                }
            }
            "now" => {
                arity(1, 1)?;
                let fmt = scalar_to_string(&args[0]);
                let items: Vec<_> = chrono::format::StrftimeItems::new(&fmt).collect();
                if items
                    .iter()
                    .any(|i| matches!(i, chrono::format::Item::Error))
                {
                    return Err(fail(format!("invalid strftime pattern {fmt:?}")));
                }
                Ok(Value::String(
                    self.ctx
                        .now
                        .format_with_items(items.into_iter())
                        .to_string(),
                ))
            }
            "hydra" => {
                arity(1, 1)?;
                let key = scalar_to_string(&args[0]);
                let mut target = vec!["hydra".to_string()];
                target.extend(key.split('.').map(str::to_string));
                if let Some(v) = get_path(self.root, &target) {
                    if is_missing(v) {
                        return Err(ConfigError::MissingMandatoryValue {
                            key: dotted(path),
                            target: dotted(&target),
                        });
                    }
                }
                self.value_at(&target)?
                    .ok_or_else(|| ConfigError::InterpolationKeyNotFound {
                        key: dotted(path),
                        target: format!("hydra:{key}"),
                    })
            }
            _ => Err(ConfigError::UnknownResolver {
                key: dotted(path),
                resolver: name.to_string(),
            }),
        }
    }
}

/// Builds the `hydra` node visible to `${hydra:...}`.
fn hydra_node(ctx: &ResolveContext) -> Value {
    let mut node = ctx.hydra.clone().unwrap_or(Value::Mapping(Mapping::new()));
    let mut job = Mapping::new();
    job.insert("name".into(), Value::String(ctx.job_name.clone()));
    job.insert("config_name".into(), Value::String(ctx.config_name.clone()));
    let mut runtime = Mapping::new();
    if let Some(o) = &ctx.output_dir {
        runtime.insert("output_dir".into(), Value::String(o.clone()));
    }
    if let Ok(cwd) = std::env::current_dir() {
        runtime.insert("cwd".into(), Value::String(cwd.display().to_string()));
    }
    let mut m = Mapping::new();
    m.insert("job".into(), Value::Mapping(job));
    m.insert("runtime".into(), Value::Mapping(runtime));
    merge_into(&mut node, Value::Mapping(m));
    node
}

pub(crate) fn resolve(config: &Value, ctx: &ResolveContext) -> Result<Value, ConfigError> {
    let Value::Mapping(m) = config else {
        let mut r = Resolver {
            root: config,
            ctx,
            stack: Vec::new(),
        };
        return r.resolve_all(&mut Vec::new());
    };
    let mut root = m.clone();
    let added_hydra = !root.contains_key("hydra");
    if added_hydra {
        root.insert("hydra".into(), hydra_node(ctx));
    }
    let root = Value::Mapping(root);
    let mut r = Resolver {
        root: &root,
        ctx,
        stack: Vec::new(),
    };
    let mut out = Mapping::new();
    for (k, _) in m.iter() {
        let mut path = vec![scalar_to_string(k)];
        out.insert(k.clone(), r.resolve_all(&mut path)?);
    }
    Ok(Value::Mapping(out))
}

/// Resolves one top-level key of `config` (the rest is resolved only where that key refers to
/// it).
pub(crate) fn resolve_key(
    config: &Value,
    key: &str,
    ctx: &ResolveContext,
) -> Result<Value, ConfigError> {
    let mut root = match config {
        Value::Mapping(m) => m.clone(),
        _ => Mapping::new(),
    };
    if !root.contains_key("hydra") {
        root.insert("hydra".into(), hydra_node(ctx));
    }
    let root = Value::Mapping(root);
    let mut r = Resolver {
        root: &root,
        ctx,
        stack: Vec::new(),
    };
    r.resolve_all(&mut vec![key.to_string()])
}
