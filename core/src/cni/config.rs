//! flatnet's network configuration: one plugin object of a conflist, as the runtime passes it
//! on stdin (with `name` and `cniVersion` copied in from the list, and `prevResult` when chained).

use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::{code, CniError};

pub const DEFAULT_DATA_DIR: &str = "/run/flatnet/ipam";
pub const DEFAULT_LOG_FILE: &str = "/run/flatnet/flatnet-cni.log";

/// One attachment named by the runtime in GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

impl Attachment {
    /// Whether both halves follow the rules the runtime's `CNI_CONTAINERID` and `CNI_IFNAME`
    /// must: then neither can hold a path separator or name a parent directory.
    pub fn is_valid(&self) -> bool {
        super::env::validate_container_id(&self.container_id).is_ok()
            && super::env::validate_ifname(&self.ifname).is_ok()
    }
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    /// The network name; also names the IPAM store's directory, so its charset is checked.
    pub name: String,
    /// The node's pod CIDRs, at most one per family, in the node's order (`podCIDRs`, as
    /// Node.spec.podCIDRs): a pod gets one address of each, listed in this order.
    pub pod_cidrs: Vec<IpNetwork>,
    /// The first of `pod_cidrs`: the node's primary family, what a single `podCIDR` names.
    pub pod_cidr: IpNetwork,
    /// None: take the MTU of the node's default-route interface.
    pub mtu: Option<u32>,
    pub data_dir: PathBuf,
    pub log_file: PathBuf,
    pub prev_result: Option<Value>,
    /// GC only: the attachments to keep; None when the key is absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

/// Parses stdin into a JSON object: anything else is a decode error (6).
pub fn decode(stdin: &[u8]) -> Result<Map<String, Value>, CniError> {
    match serde_json::from_slice::<Value>(stdin) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(CniError::new(
            code::DECODE,
            "network configuration is not a JSON object",
        )),
        Err(e) => {
            Err(CniError::new(code::DECODE, "cannot decode network configuration").with_details(e))
        }
    }
}

/// The config's `cniVersion`.
pub fn cni_version(conf: &Map<String, Value>) -> Result<String, CniError> {
    match conf.get("cniVersion") {
        Some(Value::String(v)) => Ok(v.clone()),
        None => Err(invalid("cniVersion", "is required")),
        Some(_) => Err(invalid("cniVersion", "must be a string")),
    }
}

/// The plugin object as it arrives: every key flatnet reads, with its JSON type. Decoded with
/// serde, so a key of the wrong type is refused with its path (`podCIDRs[1]`); what each value
/// must be beyond its type is checked in [`NetConf::from_map`]. Unknown keys are ignored, as the
/// spec asks (other plugins' keys, `type`, `capabilities`, …).
#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "cniVersion")]
    cni_version: Option<String>,
    name: Option<String>,
    #[serde(rename = "podCIDR")]
    pod_cidr: Option<String>,
    #[serde(rename = "podCIDRs")]
    pod_cidrs: Option<Vec<String>>,
    mtu: Option<u64>,
    #[serde(rename = "dataDir")]
    data_dir: Option<String>,
    #[serde(rename = "logFile")]
    log_file: Option<String>,
    #[serde(rename = "prevResult")]
    prev_result: Option<Map<String, Value>>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<RawAttachment>>,
    /// The key's name before spec 1.1 was final.
    #[serde(rename = "cni.dev/attachments")]
    attachments: Option<Vec<RawAttachment>>,
}

#[derive(Deserialize)]
struct RawAttachment {
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
}

impl NetConf {
    pub fn from_map(conf: &Map<String, Value>) -> Result<NetConf, CniError> {
        let value = Value::Object(conf.clone());
        let raw: Raw = serde_path_to_error::deserialize(&value).map_err(|e| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("invalid network config: {}: {}", e.path(), e.inner()),
            )
        })?;
        let cni_version = raw
            .cni_version
            .ok_or_else(|| invalid("cniVersion", "is required"))?;
        let name = raw.name.ok_or_else(|| invalid("name", "is required"))?;
        validate_network_name(&name)?;
        let pod_cidrs = pod_cidrs(raw.pod_cidr, raw.pod_cidrs)?;
        let mtu = match raw.mtu {
            None => None,
            Some(m @ 68..=65535) => Some(m as u32),
            Some(_) => return Err(invalid("mtu", "must be an integer from 68 to 65535")),
        };
        if mtu.is_some_and(|m| m < 1280) && pod_cidrs.iter().any(IpNetwork::is_ipv6) {
            // The kernel turns IPv6 off on a link below IPv6's minimum MTU.
            return Err(invalid(
                "mtu",
                "must be at least 1280 with an IPv6 pod CIDR (IPv6's minimum link MTU)",
            ));
        }
        let valid_attachments = raw.valid_attachments.or(raw.attachments).map(|list| {
            list.into_iter()
                .map(|a| Attachment {
                    container_id: a.container_id,
                    ifname: a.ifname,
                })
                .collect()
        });
        Ok(NetConf {
            cni_version,
            name,
            pod_cidr: pod_cidrs[0],
            pod_cidrs,
            mtu,
            data_dir: absolute("dataDir", raw.data_dir, DEFAULT_DATA_DIR)?,
            log_file: absolute("logFile", raw.log_file, DEFAULT_LOG_FILE)?,
            prev_result: raw.prev_result.map(Value::Object),
            valid_attachments,
        })
    }

    /// Where this network's IPAM store lives.
    pub fn store_dir(&self) -> PathBuf {
        self.data_dir.join(&self.name)
    }
}

fn invalid(key: &str, why: &str) -> CniError {
    CniError::new(
        code::INVALID_CONFIG,
        format!("invalid network config: {key} {why}"),
    )
}

fn absolute(key: &str, value: Option<String>, default: &str) -> Result<PathBuf, CniError> {
    let p = PathBuf::from(value.unwrap_or_else(|| default.to_string()));
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(invalid(key, "must be an absolute path"))
    }
}

/// The spec's charset for network names; it keeps the name safe as a directory name.
fn validate_network_name(name: &str) -> Result<(), CniError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            "must start with a letter or digit and contain only letters, digits, '_', '.' and '-'",
        ))
    }
}

/// `podCIDRs` (as Kubernetes' Node.spec.podCIDRs: at most one per family, in the node's
/// order), and `podCIDR`, which may repeat one of them (Kubernetes sets both) or add a family.
fn pod_cidrs(
    single: Option<String>,
    list: Option<Vec<String>>,
) -> Result<Vec<IpNetwork>, CniError> {
    let listed = list.unwrap_or_default().into_iter().enumerate();
    let cidrs = listed
        .map(|(i, s)| (format!("podCIDRs[{i}]"), s))
        .chain(single.map(|s| ("podCIDR".to_string(), s)));
    let mut out: Vec<IpNetwork> = Vec::new();
    for (key, text) in cidrs {
        let key = key.as_str();
        let net = pod_cidr(key, &text)?;
        match out.iter().find(|o| o.is_ipv4() == net.is_ipv4()) {
            // podCIDR naming what podCIDRs already holds is how Kubernetes writes a Node.
            Some(prev) if *prev == net && key == "podCIDR" => {}
            Some(prev) => {
                return Err(invalid(
                    key,
                    &format!(
                        "{text} is a second IPv{} CIDR after {prev}: a node has at most one \
                         pod CIDR per family",
                        if net.is_ipv4() { 4 } else { 6 }
                    ),
                ))
            }
            None => out.push(net),
        }
    }
    if out.is_empty() {
        return Err(invalid("podCIDR", "is required"));
    }
    Ok(out)
}

/// One pod CIDR: no host bits, room for a pod beside the network and gateway addresses, and a
/// unicast range a pod can be given.
fn pod_cidr(key: &str, text: &str) -> Result<IpNetwork, CniError> {
    let net: IpNetwork = text
        .parse()
        .map_err(|_| invalid(key, &format!("{text:?} is not a CIDR")))?;
    if net.network() != net.ip() {
        return Err(invalid(
            key,
            &format!(
                "{text} has host bits set (did you mean {}/{}?)",
                net.network(),
                net.prefix()
            ),
        ));
    }
    let max_prefix = if net.is_ipv4() { 30 } else { 126 };
    if net.prefix() > max_prefix {
        return Err(invalid(key, &format!("{text} leaves no address for a pod")));
    }
    if let IpNetwork::V6(n) = net {
        let first = n.network().segments()[0];
        let not_unicast = n.network().is_unspecified() && n.prefix() == 0
            || first & 0xff00 == 0xff00
            || first & 0xffc0 == 0xfe80
            || n.contains(std::net::Ipv6Addr::LOCALHOST);
        if not_unicast {
            return Err(invalid(
                key,
                &format!("{text} is not a unicast range a pod can be given"),
            ));
        }
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(extra: &str) -> Result<NetConf, CniError> {
        let text =
            format!(r#"{{"cniVersion":"1.0.0","name":"flatnet","type":"flatnet-cni"{extra}}}"#);
        NetConf::from_map(&decode(text.as_bytes())?)
    }

    #[test]
    fn minimal_config_takes_defaults() {
        let c = conf(r#","podCIDR":"10.244.1.0/24""#).unwrap();
        assert_eq!(c.pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(c.mtu, None);
        assert_eq!(c.store_dir(), PathBuf::from("/run/flatnet/ipam/flatnet"));
    }

    #[test]
    fn pod_cidrs_keep_the_nodes_order() {
        let c = conf(r#","podCIDRs":["10.244.2.0/24"]"#).unwrap();
        assert_eq!(c.pod_cidr.to_string(), "10.244.2.0/24");
        let c = conf(r#","podCIDRs":["fd00:10:244:2::/64","10.244.2.0/24"]"#).unwrap();
        let all: Vec<String> = c.pod_cidrs.iter().map(|n| n.to_string()).collect();
        assert_eq!(all, ["fd00:10:244:2::/64", "10.244.2.0/24"]);
        assert_eq!(c.pod_cidr.to_string(), "fd00:10:244:2::/64");
        // Kubernetes writes podCIDR = podCIDRs[0]; a podCIDR of the other family adds it.
        let c =
            conf(r#","podCIDR":"10.244.2.0/24","podCIDRs":["10.244.2.0/24","fd00::/64"]"#).unwrap();
        assert_eq!(c.pod_cidrs.len(), 2);
        let c = conf(r#","podCIDR":"fd00::/64""#).unwrap();
        assert_eq!(c.pod_cidrs, ["fd00::/64".parse::<IpNetwork>().unwrap()]);
        let c = conf(r#","podCIDR":"fd00::/64","podCIDRs":["10.244.2.0/24"]"#).unwrap();
        assert_eq!(c.pod_cidrs.len(), 2);
    }

    #[test]
    fn two_cidrs_of_one_family_name_the_second() {
        for (extra, key) in [
            (r#","podCIDRs":["fd00::/64","fd01::/64"]"#, "podCIDRs[1]"),
            (
                r#","podCIDRs":["10.0.0.0/24","fd00::/64","10.1.0.0/24"]"#,
                "podCIDRs[2]",
            ),
            (
                r#","podCIDRs":["10.0.0.0/24","10.0.0.0/24"]"#,
                "podCIDRs[1]",
            ),
            (
                r#","podCIDR":"fd01::/64","podCIDRs":["fd00::/64"]"#,
                "podCIDR",
            ),
        ] {
            let e = conf(extra).unwrap_err();
            assert_eq!(e.code, 7, "{extra}: {e}");
            assert!(
                e.msg.contains(key) && e.msg.contains("per family"),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn ipv6_needs_an_mtu_of_at_least_1280() {
        let e = conf(r#","podCIDRs":["10.0.0.0/24","fd00::/64"],"mtu":1200"#).unwrap_err();
        assert_eq!(e.code, 7);
        assert!(e.msg.contains("mtu"), "{e}");
        assert!(conf(r#","podCIDR":"10.0.0.0/24","mtu":1200"#).is_ok());
        assert!(conf(r#","podCIDR":"fd00::/64","mtu":1280"#).is_ok());
    }

    #[test]
    fn bad_ipv6_cidrs_name_their_key() {
        for extra in [
            r#","podCIDR":"fd00::1/64""#,
            r#","podCIDR":"fd00::/128""#,
            r#","podCIDR":"fd00::/127""#,
            r#","podCIDR":"fe80::/64""#,
            r#","podCIDR":"ff02::/64""#,
            r#","podCIDR":"::/0""#,
            r#","podCIDR":"fd00::/129""#,
        ] {
            let e = conf(extra).unwrap_err();
            assert_eq!(e.code, 7, "{extra}: {e}");
            assert!(e.msg.contains("podCIDR"), "{extra}: {e}");
        }
        assert!(conf(r#","podCIDR":"fd00::/126""#).is_ok());
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            (r#","podCIDR":42"#, "podCIDR"),
            (r#","podCIDR":"10.244.1.0/33""#, "podCIDR"),
            (r#","podCIDR":"10.244.1.7/24""#, "podCIDR"),
            (r#","podCIDR":"10.244.1.0/24","mtu":"9000""#, "mtu"),
            (
                r#","podCIDR":"10.244.1.0/24","dataDir":"relative""#,
                "dataDir",
            ),
            (r#","podCIDR":"10.244.1.0/24","dataDir":7"#, "dataDir"),
            ("", "podCIDR"),
        ] {
            let e = conf(extra).unwrap_err();
            assert_eq!(e.code, 7, "{extra}: {e}");
            assert!(e.msg.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn network_name_cannot_escape_the_data_dir() {
        let m =
            decode(br#"{"cniVersion":"1.0.0","name":"../etc","podCIDR":"10.0.0.0/24"}"#).unwrap();
        assert_eq!(NetConf::from_map(&m).unwrap_err().code, 7);
    }

    #[test]
    fn malformed_json_is_a_decode_error() {
        assert_eq!(decode(b"{not json").unwrap_err().code, 6);
        assert_eq!(decode(b"[]").unwrap_err().code, 6);
    }

    #[test]
    fn gc_attachments_parse() {
        let c = conf(
            r#","podCIDR":"10.0.0.0/24","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]"#,
        )
        .unwrap();
        assert_eq!(c.valid_attachments.unwrap()[0].container_id, "a");
    }
}
