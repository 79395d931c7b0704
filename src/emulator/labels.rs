//! Labels and label selectors as Kubernetes defines them: key and value syntax
//! (apimachinery's `validation.IsQualifiedName` and `IsValidLabelValue`) and the selector
//! language of `kubectl -l` (`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a)`, `k`, `!k`,
//! comma-separated, all of which must hold).

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// A label (or annotation) key: an optional DNS-subdomain prefix of at most 253 characters and
/// a `/`, then a name of at most 63 characters of alphanumerics, `-`, `_` and `.`, starting and
/// ending with an alphanumeric.
pub fn validate_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(format!(
                "{key:?}: prefix part must be a lowercase RFC 1123 subdomain of at most 253 \
                 characters (e.g. 'example.com')"
            ));
        }
    }
    if !is_qualified_name(name) {
        return Err(format!(
            "{key:?}: name part must be at most 63 characters of alphanumerics, '-', '_' or '.', \
             starting and ending with an alphanumeric (e.g. 'MyName', 'my.name', '123-abc')"
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of alphanumerics, `-`, `_` and `.`,
/// starting and ending with an alphanumeric.
pub fn validate_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name(value) {
        Ok(())
    } else {
        Err(format!(
            "{value:?}: a label value must be empty or at most 63 characters of alphanumerics, \
             '-', '_' or '.', starting and ending with an alphanumeric"
        ))
    }
}

/// Checks every key and value of a label map.
pub fn validate(labels: &Labels) -> Result<(), String> {
    for (k, v) in labels {
        validate_key(k)?;
        validate_value(v).map_err(|e| format!("{k}: {e}"))?;
    }
    Ok(())
}

fn is_qualified_name(s: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(alnum)
        && s.ends_with(alnum)
        && s.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
}

fn is_dns_subdomain(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.starts_with(ok)
                && l.ends_with(ok)
                && l.chars().all(|c| ok(c) || c == '-')
        })
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `k=v`, `k==v`, `k in (a,b)`.
    In(String, Vec<String>),
    /// `k!=v`, `k notin (a,b)`: also true when the key is absent.
    NotIn(String, Vec<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A parsed selector: all requirements must hold. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(pub Vec<Requirement>);

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// Parses kubectl's selector syntax.
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let mut reqs = Vec::new();
        p.space();
        if p.at_end() {
            return Ok(Selector(reqs));
        }
        loop {
            reqs.push(
                p.requirement()
                    .map_err(|e| format!("selector {text:?}: {e}"))?,
            );
            p.space();
            if p.at_end() {
                break;
            }
            if !p.eat(b",") {
                return Err(format!(
                    "selector {text:?}: expected ',' after a requirement at offset {}",
                    p.i
                ));
            }
        }
        Ok(Selector(reqs))
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn at_end(&self) -> bool {
        self.i >= self.s.len()
    }

    fn space(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, tok: &[u8]) -> bool {
        self.space();
        if self.s[self.i..].starts_with(tok) {
            self.i += tok.len();
            true
        } else {
            false
        }
    }

    /// Eats a keyword (`in`, `notin`) only when a space or `(` follows it.
    fn keyword(&mut self, word: &[u8]) -> bool {
        self.space();
        let rest = &self.s[self.i..];
        let after = rest.get(word.len());
        if rest.starts_with(word) && after.is_some_and(|c| c.is_ascii_whitespace() || *c == b'(') {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    /// A key or value: everything up to an operator, separator or space.
    fn word(&mut self) -> String {
        self.space();
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|c| !c.is_ascii_whitespace() && !b"=!,()".contains(c))
        {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }

    fn key(&mut self) -> Result<String, String> {
        let k = self.word();
        if k.is_empty() {
            return Err(format!("expected a label key at offset {}", self.i));
        }
        validate_key(&k)?;
        Ok(k)
    }

    fn value(&mut self) -> Result<String, String> {
        let v = self.word();
        validate_value(&v)?;
        Ok(v)
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.eat(b"!") {
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let k = self.key()?;
        if self.eat(b"==") || self.eat(b"=") {
            return Ok(Requirement::In(k, vec![self.value()?]));
        }
        if self.eat(b"!=") {
            return Ok(Requirement::NotIn(k, vec![self.value()?]));
        }
        if self.keyword(b"notin") {
            return Ok(Requirement::NotIn(k, self.set()?));
        }
        if self.keyword(b"in") {
            return Ok(Requirement::In(k, self.set()?));
        }
        self.space();
        if self.at_end() || self.s[self.i] == b',' {
            return Ok(Requirement::Exists(k));
        }
        Err(format!(
            "expected '=', '==', '!=', 'in', 'notin', ',' or the end after {k:?} at offset {}",
            self.i
        ))
    }

    /// `(a, b, ...)`: at least one value.
    fn set(&mut self) -> Result<Vec<String>, String> {
        if !self.eat(b"(") {
            return Err(format!("expected '(' at offset {}", self.i));
        }
        let mut vs = Vec::new();
        loop {
            let v = self.value()?;
            vs.push(v);
            if self.eat(b")") {
                break;
            }
            if !self.eat(b",") {
                return Err(format!("expected ',' or ')' at offset {}", self.i));
            }
        }
        if vs.iter().all(String::is_empty) {
            return Err("a set needs at least one value".into());
        }
        Ok(vs)
    }
}

/// A label change of `flatnet label`: `k=v` sets, `k-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Set(String, String),
    Remove(String),
}

impl Change {
    pub fn parse(arg: &str) -> Result<Change, String> {
        if let Some((k, v)) = arg.split_once('=') {
            validate_key(k)?;
            validate_value(v)?;
            return Ok(Change::Set(k.into(), v.into()));
        }
        if let Some(k) = arg.strip_suffix('-') {
            validate_key(k)?;
            return Ok(Change::Remove(k.into()));
        }
        Err(format!(
            "{arg:?}: a label change is KEY=VALUE (set) or KEY- (remove)"
        ))
    }
}

/// Applies `changes` as `kubectl label` does: setting a key that has another value needs
/// `overwrite`; removing an absent key is fine. Returns whether anything changed.
pub fn apply_changes(
    labels: &mut Labels,
    changes: &[Change],
    overwrite: bool,
) -> Result<bool, String> {
    let before = labels.clone();
    for c in changes {
        match c {
            Change::Set(k, v) => {
                if let Some(old) = labels.get(k) {
                    if old != v && !overwrite {
                        return Err(format!(
                            "'{k}' already has a value ({old}), and --overwrite is false"
                        ));
                    }
                }
                labels.insert(k.clone(), v.clone());
            }
            Change::Remove(k) => {
                labels.remove(k);
            }
        }
    }
    Ok(*labels != before)
}

/// `k=v,k2=v2` (`run --labels`).
pub fn parse_list(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: labels are KEY=VALUE, separated by commas"))?;
        validate_key(k)?;
        validate_value(v)?;
        labels.insert(k.into(), v.into());
    }
    Ok(labels)
}

/// Three-way merge of a map, as kubectl's client-side apply does for labels and annotations:
/// keys the last applied configuration had and the new one drops are removed, keys the new one
/// has are set, and keys others added (neither applied before nor now) stay.
pub fn merge3(live: &Labels, last: &Labels, new: &Labels) -> Labels {
    let mut out = live.clone();
    for k in last.keys() {
        if !new.contains_key(k) {
            out.remove(k);
        }
    }
    for (k, v) in new {
        out.insert(k.clone(), v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn every_selector_form_parses() {
        use Requirement::*;
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(sel("").0, []);
        assert_eq!(sel("app=web").0, [In("app".into(), s(&["web"]))]);
        assert_eq!(sel("app==web").0, [In("app".into(), s(&["web"]))]);
        assert_eq!(sel("app!=web").0, [NotIn("app".into(), s(&["web"]))]);
        assert_eq!(sel("tier in (a, b)").0, [In("tier".into(), s(&["a", "b"]))]);
        assert_eq!(sel("tier notin (a)").0, [NotIn("tier".into(), s(&["a"]))]);
        assert_eq!(sel("tier in(a)").0, [In("tier".into(), s(&["a"]))]);
        assert_eq!(sel("app").0, [Exists("app".into())]);
        assert_eq!(sel("!app").0, [DoesNotExist("app".into())]);
        assert_eq!(sel("app=").0, [In("app".into(), s(&[""]))]);
        assert_eq!(
            sel(" example.com/app = web , !x,y ,z in (1,2)").0,
            [
                In("example.com/app".into(), s(&["web"])),
                DoesNotExist("x".into()),
                Exists("y".into()),
                In("z".into(), s(&["1", "2"])),
            ]
        );
        // A key may be named like the keywords.
        assert_eq!(sel("in=notin").0, [In("in".into(), s(&["notin"]))]);
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        for yes in [
            "",
            "app=web",
            "app==web",
            "app!=db",
            "missing!=x",
            "tier in (front,back)",
            "tier notin (back)",
            "missing notin (x)",
            "app",
            "!missing",
            "app=web,tier=front",
        ] {
            assert!(sel(yes).matches(&l), "{yes}");
        }
        for no in [
            "app=db",
            "app!=web",
            "tier in (back)",
            "missing in (x)",
            "tier notin (front)",
            "missing",
            "!app",
            "app=web,tier=back",
        ] {
            assert!(!sel(no).matches(&l), "{no}");
        }
    }

    #[test]
    fn bad_selectors_are_errors() {
        for bad in [
            "=web",
            "app=web,",
            ",app",
            "app=web x",
            "app in ()",
            "app in (a",
            "app in a",
            "app notin",
            "app=we b",
            "App_/x=1",
            "app=-bad",
            "app=(x)",
            &format!("app={}", "v".repeat(64)),
            "!",
            "a b",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_and_values_are_validated() {
        for ok in ["app", "a.b_c-d", "example.com/app", "A1", &"k".repeat(63)] {
            validate_key(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            "a-",
            "a b",
            "Example.com/app",
            "/app",
            "a/",
            "a/b/c",
            &"k".repeat(64),
            &format!("{}/a", "p".repeat(254)),
        ] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
        for ok in ["", "v", "V1.2_3-x", &"v".repeat(63)] {
            validate_value(ok).unwrap();
        }
        for bad in ["-v", "v-", "a b", "a/b", &"v".repeat(64)] {
            assert!(validate_value(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_changes_follow_kubectl() {
        let mut l = labels(&[("app", "web")]);
        let set = |k: &str, v: &str| Change::Set(k.into(), v.into());
        assert!(apply_changes(&mut l, &[set("tier", "a")], false).unwrap());
        let e = apply_changes(&mut l, &[set("app", "db")], false).unwrap_err();
        assert!(e.contains("'app' already has a value (web)"), "{e}");
        assert!(!apply_changes(&mut l, &[set("app", "web")], false).unwrap());
        assert!(apply_changes(&mut l, &[set("app", "db")], true).unwrap());
        assert!(apply_changes(&mut l, &[Change::Remove("app".into())], false).unwrap());
        assert_eq!(l, labels(&[("tier", "a")]));
        assert_eq!(Change::parse("k-").unwrap(), Change::Remove("k".into()));
        assert_eq!(Change::parse("k=").unwrap(), set("k", ""));
        assert!(Change::parse("k").is_err());
        assert!(Change::parse("k=a b").is_err());
    }

    #[test]
    fn three_way_merge_keeps_what_others_added() {
        let live = labels(&[("app", "web"), ("old", "1"), ("added", "by-label")]);
        let last = labels(&[("app", "web"), ("old", "1")]);
        let new = labels(&[("app", "api")]);
        assert_eq!(
            merge3(&live, &last, &new),
            labels(&[("app", "api"), ("added", "by-label")])
        );
        assert_eq!(
            parse_list("a=1,b=").unwrap(),
            labels(&[("a", "1"), ("b", "")])
        );
        assert!(parse_list("a").is_err());
    }
}
