//! flatnet's core: everything `flatnet-cni` is made of, and what the agent and the emulator
//! share with it. It links only what the plugin needs (no Kubernetes client, no CLI parser, no
//! YAML), because the plugin is exec'd once per pod. See README.md for the map of modules.

pub mod cni;
pub mod crashpoint;
pub mod fsutil;
pub mod ipam;
pub mod logging;
pub mod netlink;
pub mod netns;
pub mod plugin;
pub mod stable_hash;
