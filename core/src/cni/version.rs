//! Spec versions and which verbs each one has.

use super::error::{code, CniError};
use super::Command;

/// The versions flatnet speaks, oldest first.
pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version, used where no config says otherwise.
pub const LATEST: &str = "1.1.0";

/// A spec version as a comparable triple.
pub fn parse(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}

/// Checks that `version` is one flatnet supports and that it has the verb `cmd`.
pub fn check(version: &str, cmd: Command) -> Result<(), CniError> {
    if !SUPPORTED.contains(&version) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("incompatible CNI version {version:?}"),
        )
        .with_details(format!("flatnet-cni supports {}", SUPPORTED.join(", "))));
    }
    let needs = match cmd {
        Command::Check => "0.4.0",
        Command::Status | Command::Gc => "1.1.0",
        _ => return Ok(()),
    };
    if parse(version) < parse(needs) {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("{cmd} is not available in CNI version {version}; it needs {needs} or later"),
        ));
    }
    Ok(())
}

/// The VERSION verb's answer.
pub fn version_info(version: &str) -> String {
    serde_json::json!({ "cniVersion": version, "supportedVersions": SUPPORTED }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert!(parse("0.10.0") > parse("0.4.0"));
        assert_eq!(parse("1.0"), None);
        assert_eq!(parse("1.0.0.0"), None);
    }

    #[test]
    fn verbs_need_their_version() {
        assert!(check("0.3.1", Command::Check).is_err());
        assert!(check("0.4.0", Command::Check).is_ok());
        assert!(check("1.0.0", Command::Status).is_err());
        assert!(check("1.1.0", Command::Gc).is_ok());
        assert_eq!(check("0.2.0", Command::Add).unwrap_err().code, 1);
    }
}
