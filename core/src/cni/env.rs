//! The `CNI_*` environment a runtime sets for each call, validated as the spec requires.

use std::collections::HashMap;
use std::fmt;

use super::error::{code, CniError};

/// The verbs of CNI 1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        })
    }
}

/// The validated environment of one call. Fields a verb does not need are empty.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub container_id: String,
    /// Empty on a DEL after the namespace is gone (containerd's RemovePodSandbox does this).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`, `K=V;K=V`: flatnet reads only K8S_POD_* for its logs.
    pub args: HashMap<String, String>,
}

/// Reads `CNI_COMMAND`.
pub fn command(get: &impl Fn(&str) -> Option<String>) -> Result<Command, CniError> {
    let raw = get("CNI_COMMAND").unwrap_or_default();
    if raw.is_empty() {
        return Err(CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"));
    }
    Command::parse(&raw).ok_or_else(|| {
        CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND {raw:?}"))
            .with_details("expected ADD, DEL, CHECK, STATUS, GC or VERSION")
    })
}

/// Reads and validates the variables `cmd` needs; `get` is `std::env::var` in the plugin.
pub fn read(cmd: Command, get: &impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let required: &[&str] = match cmd {
        Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"],
        Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME"],
        Command::Status | Command::Gc | Command::Version => &[],
    };
    let missing: Vec<&str> = required
        .iter()
        .copied()
        .filter(|k| get(k).unwrap_or_default().is_empty())
        .collect();
    if !missing.is_empty() {
        return Err(CniError::new(
            code::INVALID_ENV,
            format!("{cmd} needs {} set", missing.join(", ")),
        ));
    }
    let env = Env {
        container_id: get("CNI_CONTAINERID").unwrap_or_default(),
        netns: get("CNI_NETNS").unwrap_or_default(),
        ifname: get("CNI_IFNAME").unwrap_or_default(),
        args: parse_args(&get("CNI_ARGS").unwrap_or_default()),
    };
    if required.contains(&"CNI_CONTAINERID") {
        validate_container_id(&env.container_id)?;
        validate_ifname(&env.ifname)?;
    }
    Ok(env)
}

/// The spec's charset: an alphanumeric, then alphanumerics, `_`, `.` and `-`. The length bound
/// is flatnet's: the ID names a file in the IPAM store (runtimes use 64 hex digits).
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok = id.len() <= 200
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            code::INVALID_ENV,
            format!("invalid CNI_CONTAINERID {id:?}"),
        )
        .with_details(
            "it must start with a letter or digit, continue with letters, digits, '_', '.' or '-', \
             and be at most 200 bytes",
        ))
    }
}

/// The kernel's rules for an interface name (dev_valid_name), which the spec adopts.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(
            CniError::new(code::INVALID_ENV, format!("invalid CNI_IFNAME {name:?}")).with_details(
                "an interface name is 1 to 15 bytes without '/', ':' or whitespace, and not '.' or '..'",
            ),
        )
    }
}

fn parse_args(raw: &str) -> HashMap<String, String> {
    raw.split(';')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn add_names_every_missing_variable() {
        let e = read(Command::Add, &env(&[("CNI_IFNAME", "eth0")])).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(
            e.msg.contains("CNI_CONTAINERID") && e.msg.contains("CNI_NETNS"),
            "{e}"
        );
    }

    #[test]
    fn del_allows_empty_netns() {
        let e = read(
            Command::Del,
            &env(&[("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0")]),
        );
        assert!(e.is_ok());
    }

    #[test]
    fn container_id_and_ifname_rules() {
        assert!(validate_container_id("a1_b.c-d").is_ok());
        for bad in ["", "-abc", "_abc", "a/b", "a b", "a:b"] {
            assert!(validate_container_id(bad).is_err(), "{bad}");
        }
        assert!(validate_ifname("eth0").is_ok());
        assert!(validate_ifname("123456789012345").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "1234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\tb",
        ] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cni_args_are_split() {
        let a = parse_args("IgnoreUnknown=1;K8S_POD_NAME=web;K8S_POD_NAMESPACE=default");
        assert_eq!(a["K8S_POD_NAME"], "web");
    }
}
