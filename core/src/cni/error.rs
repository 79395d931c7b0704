//! CNI errors: the spec's codes, flatnet's own (100 and up), and the JSON shape on stdout.

use serde::Serialize;

/// Error codes of the spec (0–99 are reserved for it) and flatnet's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    pub const LIMITED_CONNECTIVITY: u32 = 51;

    /// No free address left in the node's pod CIDR.
    pub const POOL_EXHAUSTED: u32 = 100;
    /// The interface (or the attachment for this container and ifname) already exists.
    pub const ALREADY_EXISTS: u32 = 101;
    /// The kernel refused a netlink request.
    pub const NETLINK: u32 = 102;
    /// The IPAM store has a format version this plugin does not read (a read or write that
    /// fails is the spec's 5).
    pub const STORE: u32 = 103;
    /// CHECK found the attachment not as ADD left it.
    pub const CHECK_FAILED: u32 = 104;
    /// A bug: the plugin panicked. The message says where.
    pub const INTERNAL: u32 = 999;
}

/// An error as the spec has the plugin print it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl std::fmt::Display) -> CniError {
        self.details = details.to_string();
        self
    }

    /// The JSON the plugin prints on stdout.
    pub fn to_json(&self, cni_version: &str) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            #[serde(flatten)]
            err: &'a CniError,
        }
        serde_json::to_string(&Out {
            cni_version,
            err: self,
        })
        .expect("error JSON always serializes")
    }
}
