//! One plugin call, decoded from what the runtime gives: `CNI_COMMAND` and the rest of the
//! environment, and the network configuration on stdin. Every way that input can be wrong is
//! one of the spec's error codes (1, 2, 4, 6, 7), never a panic: the property tests feed it
//! arbitrary bytes and environments.

use super::error::CniError;
use super::{config, env, version, Command, Env, NetConf};

/// What to do.
#[derive(Debug)]
pub enum Call {
    /// VERSION: the answer, ready to print.
    Version(String),
    /// Any other verb, with its validated environment and config.
    Verb {
        cmd: Command,
        env: Env,
        conf: Box<NetConf>,
    },
}

/// Decodes a call. `reply_version` is set to the config's `cniVersion` as soon as it is known
/// to be one flatnet speaks, so that an error is reported in the caller's version.
pub fn decode(
    get: &impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    reply_version: &mut String,
) -> Result<Call, CniError> {
    let cmd = env::command(get)?;
    if cmd == Command::Version {
        // The config is optional here; answer in its version when it names one we speak.
        let asked = config::decode(stdin)
            .ok()
            .and_then(|m| config::cni_version(&m).ok())
            .filter(|v| version::SUPPORTED.contains(&v.as_str()));
        return Ok(Call::Version(version::version_info(
            asked.as_deref().unwrap_or(version::LATEST),
        )));
    }
    let map = config::decode(stdin)?;
    let cni_version = config::cni_version(&map)?;
    if version::SUPPORTED.contains(&cni_version.as_str()) {
        *reply_version = cni_version.clone();
    }
    version::check(&cni_version, cmd)?;
    let env = env::read(cmd, get)?;
    let conf = Box::new(NetConf::from_map(&map)?);
    Ok(Call::Verb { cmd, env, conf })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::*;

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            prop_oneof![
                Just("10.244.1.0/24"),
                Just("fd00::/64"),
                Just("10.244.1.7/24"),
                Just("0.0.0.0/0"),
                Just("10.0.0.0/31"),
                Just("1.1.0"),
                Just("0.4.0"),
                Just("/abs/path"),
                Just("../x"),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::hash_map(".{0,12}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// A valid config with keys changed, dropped or added at random.
    fn config() -> impl Strategy<Value = Vec<u8>> {
        let keys = prop_oneof![
            Just("cniVersion"),
            Just("name"),
            Just("type"),
            Just("podCIDR"),
            Just("podCIDRs"),
            Just("mtu"),
            Just("dataDir"),
            Just("logFile"),
            Just("prevResult"),
            Just("cni.dev/valid-attachments"),
            Just("cni.dev/attachments"),
            Just("other"),
        ];
        // CIDRs of both families, good and bad, alone and as lists.
        let cidr = prop_oneof![
            Just("10.244.1.0/24"),
            Just("10.244.1.7/24"),
            Just("10.244.1.0/31"),
            Just("fd00:10:244:1::/64"),
            Just("fd00:10:244:1::1/64"),
            Just("fd00::/127"),
            Just("fd00::/128"),
            Just("fe80::/64"),
        ]
        .prop_map(Value::from);
        let cidrs = prop_oneof![
            cidr.clone(),
            proptest::collection::vec(cidr, 0..4).prop_map(Value::from),
        ];
        let value = prop_oneof![3 => json_value(), 2 => cidrs];
        let edits = proptest::collection::vec((keys, proptest::option::of(value)), 0..6);
        edits.prop_map(|edits| {
            let mut m: Map<String, Value> = json!({
                "cniVersion": "1.1.0", "name": "flatnet", "type": "flatnet-cni",
                "podCIDR": "10.244.1.0/24", "dataDir": "/run/flatnet/ipam",
            })
            .as_object()
            .cloned()
            .unwrap();
            for (k, v) in edits {
                match v {
                    Some(v) => m.insert(k.to_string(), v),
                    None => m.remove(k),
                };
            }
            serde_json::to_vec(&Value::Object(m)).unwrap()
        })
    }

    fn stdin() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            3 => config(),
            1 => proptest::collection::vec(any::<u8>(), 0..200),
            1 => json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ]
    }

    fn environment() -> impl Strategy<Value = HashMap<String, String>> {
        let command = prop_oneof![
            Just("ADD".to_string()),
            Just("DEL".to_string()),
            Just("CHECK".to_string()),
            Just("STATUS".to_string()),
            Just("GC".to_string()),
            Just("VERSION".to_string()),
            ".{0,8}",
        ];
        let value = prop_oneof![
            Just("abc123".to_string()),
            Just("eth0".to_string()),
            Just("/run/netns/x".to_string()),
            Just(String::new()),
            ".{0,300}",
        ];
        (
            proptest::option::of(command),
            proptest::option::of(value.clone()),
            proptest::option::of(value.clone()),
            proptest::option::of(value.clone()),
            proptest::option::of(value),
        )
            .prop_map(|(cmd, id, netns, ifname, args)| {
                [
                    ("CNI_COMMAND", cmd),
                    ("CNI_CONTAINERID", id),
                    ("CNI_NETNS", netns),
                    ("CNI_IFNAME", ifname),
                    ("CNI_ARGS", args),
                ]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), v?)))
                .collect()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            failure_persistence: None,
            ..ProptestConfig::default()
        })]
        /// Whatever the runtime passes, decoding ends in a call or in one of the spec's codes
        /// for bad input, never in a panic.
        #[test]
        fn any_input_decodes_or_gets_a_spec_error(env in environment(), stdin in stdin()) {
            let get = |k: &str| env.get(k).cloned();
            let mut reply = crate::cni::version::LATEST.to_string();
            match decode(&get, &stdin, &mut reply) {
                Ok(Call::Verb { cmd, env, conf }) => {
                    prop_assert_ne!(cmd, Command::Version);
                    prop_assert_eq!(conf.pod_cidr, conf.pod_cidrs[0]);
                    prop_assert!(conf.pod_cidrs.len() <= 2);
                    for n in &conf.pod_cidrs {
                        let max = if n.is_ipv4() { 30 } else { 126 };
                        prop_assert!(n.prefix() <= max, "{}", n);
                        prop_assert_eq!(n.network(), n.ip());
                    }
                    if let [a, b] = conf.pod_cidrs[..] {
                        prop_assert_ne!(a.is_ipv4(), b.is_ipv4());
                    }
                    if matches!(cmd, Command::Add | Command::Del | Command::Check) {
                        let a = super::config::Attachment {
                            container_id: env.container_id,
                            ifname: env.ifname,
                        };
                        prop_assert!(a.is_valid(), "{:?}", a);
                    }
                }
                Ok(Call::Version(answer)) => {
                    prop_assert!(serde_json::from_str::<Value>(&answer).is_ok());
                }
                Err(e) => prop_assert!([1, 2, 4, 6, 7].contains(&e.code), "{:?}", e),
            }
            prop_assert!(version::SUPPORTED.contains(&reply.as_str()));
        }
    }
}
