//! flatnet's nftables table, `inet flatnet`: anti-spoofing for every node and, when the cluster
//! CIDR is known, egress masquerade. Both are one table so that they are replaced together.
//!
//! The table is replaced whole in one `nft -f` transaction, so there is never a moment with
//! half the rules (or, on an upgrade, with neither the old table nor the new one). It carries a
//! hash of its content in its comment: a pass compares it with what it wants and touches
//! nothing when they agree, and a table deleted or edited by hand is put back at the next pass.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::netns::NetNs;

/// The table's family and name.
pub const TABLE: &str = "inet flatnet";

/// Tables older flatnets made: removed in the transaction that writes [`TABLE`], and by
/// uninstall. (Before anti-spoofing, the egress rules lived in an `ip` table of the same name.)
const LEGACY: &[&str] = &["ip flatnet"];

/// The whole table, ready for `nft -f`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    script: String,
    marker: String,
}

impl Ruleset {
    /// The table whose body (counters, sets, chains) is `body`.
    pub fn new(body: &str) -> Ruleset {
        let marker = format!("flatnet {:016x}", crate::stable_hash::fnv1a(body.bytes()));
        // Creating a table first makes its delete valid when it does not exist yet; the whole
        // file is one transaction.
        let mut script = String::new();
        for t in LEGACY.iter().chain([&TABLE]) {
            script += &format!("table {t} {{}}\ndelete table {t}\n");
        }
        script += &format!("table {TABLE} {{\n  comment \"{marker}\"\n{body}}}\n");
        Ruleset { script, marker }
    }

    pub fn script(&self) -> &str {
        &self.script
    }

    /// Whether `listing` (of [`list`]) is this ruleset's table.
    pub fn is_current(&self, listing: &str) -> bool {
        listing
            .lines()
            .any(|l| l.trim() == format!("comment \"{}\"", self.marker))
    }
}

/// `nft list table inet flatnet` in `ns` (else the caller's namespace); None when the table
/// does not exist.
pub fn list(ns: Option<&NetNs>) -> Option<String> {
    let (family, name) = TABLE.split_once(' ').expect("family and name");
    nft(&["list", "table", family, name], None, ns).ok()
}

/// Why the `nft` tool did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("run nft (package nftables): {0}")]
    Run(std::io::Error),
    #[error("nft {args}: {stderr}")]
    Refused { args: String, stderr: String },
}

/// Writes `ruleset` (the table and the removal of legacy tables, in one transaction).
pub fn write(ruleset: &Ruleset, ns: Option<&NetNs>) -> Result<(), NftError> {
    nft(&["-f", "-"], Some(ruleset.script()), ns).map(|_| ())
}

/// Deletes the table and the legacy ones; absent is fine.
pub fn remove(ns: Option<&NetNs>) -> Result<(), NftError> {
    let script: String = LEGACY
        .iter()
        .chain([&TABLE])
        .map(|t| format!("table {t} {{}}\ndelete table {t}\n"))
        .collect();
    nft(&["-f", "-"], Some(&script), ns).map(|_| ())
}

/// The named counters of a listing and their packet counts. nft prints each as
/// `counter NAME {` with `packets N bytes M` on the next line.
pub fn counters(listing: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut lines = listing.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(name) = line
            .strip_prefix("counter ")
            .and_then(|r| r.strip_suffix(" {"))
        else {
            continue;
        };
        let packets = lines.next().and_then(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("packets"))
                .then(|| words.next()?.parse().ok())
                .flatten()
        });
        if let Some(p) = packets {
            out.insert(name.to_string(), p);
        }
    }
    out
}

/// Runs `nft args…` with `stdin`; its stdout, or its stderr as the error.
fn nft(args: &[&str], stdin: Option<&str>, ns: Option<&NetNs>) -> Result<String, NftError> {
    let mut child = crate::netns::command(Path::new("nft"), &[], ns)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(NftError::Run)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // nft reads all of stdin before it answers; a write that fails is nft gone, and its
        // exit status below says why.
        let _ = pipe.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(NftError::Run)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Refused {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_transaction_replaces_the_table_and_drops_the_legacy_one() {
        let r = Ruleset::new("  chain c {\n  }\n");
        let s = r.script();
        assert!(
            s.starts_with(
                "table ip flatnet {}\ndelete table ip flatnet\n\
                 table inet flatnet {}\ndelete table inet flatnet\ntable inet flatnet {\n  comment \"flatnet "
            ),
            "{s}"
        );
        assert!(s.ends_with("  chain c {\n  }\n}\n"), "{s}");
    }

    #[test]
    fn the_comment_changes_with_the_content_only() {
        let a = Ruleset::new("  chain a {\n  }\n");
        assert_eq!(a, Ruleset::new("  chain a {\n  }\n"));
        assert_ne!(a, Ruleset::new("  chain b {\n  }\n"));
        let listing = format!("table inet flatnet {{\n\tcomment \"{}\"\n}}\n", a.marker);
        assert!(a.is_current(&listing));
        assert!(!Ruleset::new("  chain b {\n  }\n").is_current(&listing));
    }

    #[test]
    fn counters_are_read_from_a_listing() {
        let listing = "table inet flatnet {\n\tcomment \"flatnet 1\"\n\
            \tcounter spoofed_ipv4 {\n\t\tpackets 12 bytes 840\n\t}\n\n\
            \tcounter router_adverts {\n\t\tpackets 0 bytes 0\n\t}\n\
            \tchain antispoof {\n\t\ticmpv6 type nd-router-advert counter name \"router_adverts\" drop\n\t}\n}\n";
        let c = counters(listing);
        assert_eq!(c.get("spoofed_ipv4"), Some(&12));
        assert_eq!(c.get("router_adverts"), Some(&0));
        assert_eq!(c.len(), 2, "{c:?}");
    }
}
