//! API objects the emulator keeps as the documents they were applied as (NetworkPolicies,
//! Services, EndpointSlices): one JSON file per object, `<root>/<namespace>/<name>.json`,
//! written whole by rename so that a reader never sees half of one.

use std::path::Path;

use serde_json::Value;

use super::objects::Outcome;
use super::{io_err, Error, Result};

/// Writes `doc` at `path` unless `live` (what is stored there now) is the same document.
pub fn store(path: &Path, live: Option<&Value>, doc: &Value) -> Result<Outcome> {
    if live == Some(doc) {
        return Ok(Outcome::Unchanged);
    }
    let parent = path.parent().expect("a file in a directory");
    std::fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
    let json = serde_json::to_vec_pretty(doc).expect("JSON serializes");
    crate::fsutil::write_atomic(path, &json)
        .map_err(io_err(format!("write {}", path.display())))?;
    Ok(if live.is_some() {
        Outcome::Configured
    } else {
        Outcome::Created
    })
}

/// The creation time of `live`, kept across updates, or now for a new object.
pub fn created(live: Option<&Value>) -> String {
    live.and_then(|l| l["metadata"]["creationTimestamp"].as_str())
        .map_or_else(|| super::netpol::rfc3339(super::state::now()), String::from)
}

/// The document at `path`; None when there is none.
pub fn read(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Io {
            op: format!("parse {}", path.display()),
            cause: std::io::Error::other(e),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// Every document under `root` that `valid` accepts, sorted by namespace and name. Temp files
/// of a write in progress are skipped; a document that does not read or is not valid is logged
/// (as a `kind`) and left out.
pub fn read_all(
    root: &Path,
    kind: &str,
    valid: impl Fn(&Value) -> std::result::Result<(), String>,
) -> Vec<Value> {
    let mut out = Vec::new();
    for ns in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let path = f.path();
            if path.extension().is_none_or(|e| e != "json")
                || f.file_name().to_string_lossy().starts_with('.')
            {
                continue;
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
                .and_then(|v| valid(&v).map(|_| v))
            {
                Ok(v) => out.push(v),
                Err(e) => tracing::warn!("refusing the {kind} {}: {e}", path.display()),
            }
        }
    }
    out.sort_by_key(|v| {
        let meta = |k: &str| v["metadata"][k].as_str().unwrap_or_default().to_string();
        (meta("namespace"), meta("name"))
    });
    out
}
