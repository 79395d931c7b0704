//! Node records for the agent's unit tests.

use crate::registry::NodeRecord;

/// A dual-stack node `i` of kind's defaults: 172.18.0.(i+1) and fc00:f853:ccd:e793::(i+1),
/// pods in 10.244.i.0/24 and fd00:10:244:i::/64, created at second `i`.
pub fn dual(name: &str, i: u8) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        node_ips: vec![
            format!("172.18.0.{}", i + 1).parse().unwrap(),
            format!("fc00:f853:ccd:e793::{}", i + 1).parse().unwrap(),
        ],
        pod_cidrs: vec![
            format!("10.244.{i}.0/24").parse().unwrap(),
            format!("fd00:10:244:{i}::/64").parse().unwrap(),
        ],
        created: Some(u64::from(i)),
        node_networks: Vec::new(),
    }
}
