//! flatnet: a flat, NAT-free pod network. See README.md for the map of modules.
//!
//! The plugin's half lives in the `flatnet-core` crate (so that `flatnet-cni` links only what it
//! uses); it is re-exported here under the same names for the agent, the emulator and the tests.

pub mod agent;
pub mod emulator;
pub mod nfnetlink;
pub mod registry;

pub use flatnet_core::{
    cni, crashpoint, fsutil, ipam, logging, netlink, netns, plugin, stable_hash,
};
