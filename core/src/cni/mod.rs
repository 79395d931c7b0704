//! The CNI spec (containernetworking/cni SPEC.md, 1.1.0) as types: versions, the `CNI_*`
//! environment, flatnet's network configuration, results per spec version, and errors.

pub mod call;
pub mod config;
pub mod env;
pub mod error;
pub mod invoke;
pub mod result;
pub mod version;

pub use config::NetConf;
pub use env::{Command, Env};
pub use error::CniError;
pub use result::CniResult;
