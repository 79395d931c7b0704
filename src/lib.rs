//! flatnet: a flat, NAT-free pod network. See README.md for the map of modules.

pub mod agent;
pub mod cni;
pub mod crashpoint;
pub mod emulator;
pub mod fsutil;
pub mod ipam;
pub mod logging;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod registry;
pub mod stable_hash;
