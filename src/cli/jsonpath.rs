//! kubectl's `-o jsonpath=TEMPLATE`, the part people use: text, `{.a.b}`, `[N]`, `[*]`,
//! `{range EXPR}…{end}`, string literals such as `{"\n"}`, and `\.` in a key
//! (`{.metadata.labels.app\.kubernetes\.io/name}`). Several results of one expression are
//! joined by a space; a missing key prints nothing, as kubectl with its default
//! `--allow-missing-template-keys`.

use anyhow::{bail, Result};
use serde_json::Value;

#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
    All,
}

#[derive(Debug, PartialEq)]
enum Node {
    Text(String),
    Path(Vec<Step>),
    Range(Vec<Step>, Vec<Node>),
}

/// Prints `value` through `template`.
pub fn render(template: &str, value: &Value) -> Result<String> {
    let mut tokens = tokenize(template)?.into_iter();
    let nodes = parse(&mut tokens, false)?;
    let mut out = String::new();
    eval(&nodes, value, &mut out);
    Ok(out)
}

enum Token {
    Text(String),
    Expr(String),
}

fn tokenize(template: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            tokens.push(Token::Text(rest[..open].into()));
        }
        let inner = &rest[open + 1..];
        // A `}` inside a string literal does not close the expression.
        let mut quoted = false;
        let close = inner
            .char_indices()
            .find(|&(_, ch)| {
                if ch == '"' {
                    quoted = !quoted;
                }
                ch == '}' && !quoted
            })
            .map(|(i, _)| i);
        let Some(close) = close else {
            bail!("error parsing jsonpath {template}: unclosed action");
        };
        tokens.push(Token::Expr(inner[..close].trim().into()));
        rest = &inner[close + 1..];
    }
    if !rest.is_empty() {
        tokens.push(Token::Text(rest.into()));
    }
    Ok(tokens)
}

fn parse(tokens: &mut impl Iterator<Item = Token>, in_range: bool) -> Result<Vec<Node>> {
    let mut nodes = Vec::new();
    while let Some(token) = tokens.next() {
        match token {
            Token::Text(t) => nodes.push(Node::Text(t)),
            Token::Expr(e) if e == "end" => {
                if in_range {
                    return Ok(nodes);
                }
                bail!("error parsing jsonpath: {{end}} without {{range}}");
            }
            Token::Expr(e) => match e.strip_prefix("range ") {
                Some(path) => {
                    let body = parse(tokens, true)?;
                    nodes.push(Node::Range(path_of(path.trim())?, body));
                }
                None if e.starts_with('"') => nodes.push(Node::Text(literal(&e)?)),
                None => nodes.push(Node::Path(path_of(&e)?)),
            },
        }
    }
    if in_range {
        bail!("error parsing jsonpath: {{range}} without {{end}}");
    }
    Ok(nodes)
}

/// `"…"` with Go's escapes for newline, tab and quote.
fn literal(e: &str) -> Result<String> {
    let Some(inner) = e.strip_prefix('"').and_then(|e| e.strip_suffix('"')) else {
        bail!("error parsing jsonpath: unterminated string {e}");
    };
    Ok(inner
        .replace("\\n", "\n")
        .replace("\\t", "\t")
        .replace("\\\"", "\""))
}

fn path_of(e: &str) -> Result<Vec<Step>> {
    let e = e.strip_prefix(['$', '@']).unwrap_or(e);
    let mut steps = Vec::new();
    let mut chars = e.chars().peekable();
    while let Some(ch) = chars.next() {
        match ch {
            '.' => {
                let mut key = String::new();
                while let Some(&c) = chars.peek() {
                    match c {
                        '\\' => {
                            chars.next();
                            key.extend(chars.next());
                        }
                        '.' | '[' => break,
                        _ => {
                            key.push(c);
                            chars.next();
                        }
                    }
                }
                if !key.is_empty() {
                    steps.push(Step::Key(key));
                }
            }
            '[' => {
                let index: String = chars.by_ref().take_while(|&c| c != ']').collect();
                steps.push(match index.trim() {
                    "*" => Step::All,
                    n => match n.parse() {
                        Ok(i) => Step::Index(i),
                        Err(_) => bail!("error parsing jsonpath {e}: unsupported index [{n}]"),
                    },
                });
            }
            c => bail!("error parsing jsonpath {e}: unexpected {c:?}"),
        }
    }
    Ok(steps)
}

fn select<'v>(steps: &[Step], value: &'v Value) -> Vec<&'v Value> {
    let mut current = vec![value];
    for step in steps {
        current = current
            .into_iter()
            .flat_map(|v| -> Vec<&Value> {
                match (step, v) {
                    (Step::Key(k), Value::Object(m)) => m.get(k).into_iter().collect(),
                    (Step::Index(i), Value::Array(a)) => a.get(*i).into_iter().collect(),
                    (Step::All, Value::Array(a)) => a.iter().collect(),
                    (Step::All, Value::Object(m)) => m.values().collect(),
                    _ => Vec::new(),
                }
            })
            .collect();
    }
    current
}

fn eval(nodes: &[Node], value: &Value, out: &mut String) {
    for node in nodes {
        match node {
            Node::Text(t) => out.push_str(t),
            Node::Path(steps) => {
                let found: Vec<String> = select(steps, value)
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect();
                out.push_str(&found.join(" "));
            }
            Node::Range(steps, body) => {
                for v in select(steps, value) {
                    eval(body, v, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_forms_people_use() {
        let list = serde_json::json!({"items": [
            {"metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "x"}},
             "status": {"podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}], "ready": true}},
            {"metadata": {"name": "b"}, "status": {"podIPs": [{"ip": "10.0.0.2"}]}},
        ]});
        let cases = [
            ("{.items[*].metadata.name}", "a b"),
            ("{.items[0].status.podIPs[1].ip}", "fd00::1"),
            ("{.items[0].status.ready}", "true"),
            (
                "{range .items[*]}{.metadata.name}{\"\\t\"}{.status.podIPs[*].ip}{\"\\n\"}{end}",
                "a\t10.0.0.1 fd00::1\nb\t10.0.0.2\n",
            ),
            (
                "{.items[0].metadata.labels.app\\.kubernetes\\.io/name}",
                "x",
            ),
            ("name: {.items[1].metadata.name}!", "name: b!"),
            ("{.items[5].metadata.name}{.nothing}", ""),
        ];
        for (template, want) in cases {
            assert_eq!(render(template, &list).unwrap(), want, "{template}");
        }
        for bad in ["{.a", "{range .items[*]}", "{end}", "{.items[x]}"] {
            assert!(render(bad, &list).is_err(), "{bad}");
        }
    }
}
