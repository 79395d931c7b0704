//! The result of ADD, written in the form each spec version defines, and read back from any of
//! them (prevResult on CHECK and DEL).

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::{code, CniError};
use super::version;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// The netns path, for interfaces inside the container; absent for the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// Since 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6"; written only before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<RouteEntry>,
    #[serde(default)]
    pub dns: Value,
}

impl CniResult {
    /// The result as `version` writes it.
    pub fn to_json(&self, cni_version: &str) -> String {
        let mut out = self.clone();
        out.cni_version = cni_version.to_string();
        let before_1_0 = version::parse(cni_version) < version::parse("1.0.0");
        let before_1_1 = version::parse(cni_version) < version::parse("1.1.0");
        for ip in &mut out.ips {
            ip.version = before_1_0.then(|| if ip.address.is_ipv4() { "4" } else { "6" }.into());
        }
        if before_1_1 {
            for i in &mut out.interfaces {
                i.mtu = None;
            }
        }
        if out.dns.is_null() {
            out.dns = Value::Object(Default::default());
        }
        serde_json::to_string(&out).expect("result always serializes")
    }

    /// Reads a result of any supported version.
    pub fn from_value(v: &Value) -> Result<CniResult, CniError> {
        serde_json::from_value(v.clone())
            .map_err(|e| CniError::new(code::DECODE, "cannot decode prevResult").with_details(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                sandbox: Some("/run/netns/p".into()),
                mtu: Some(1500),
            }],
            ips: vec![IpConfig {
                version: None,
                address: "10.244.1.2/32".parse().unwrap(),
                gateway: Some("10.244.1.1".parse().unwrap()),
                interface: Some(0),
            }],
            routes: vec![RouteEntry {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.244.1.1".parse().unwrap()),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_no_mtu() {
        let v: Value = serde_json::from_str(&sample().to_json("0.4.0")).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
        assert!(v["interfaces"][0].get("mtu").is_none());
    }

    #[test]
    fn new_versions_drop_ip_version() {
        let v: Value = serde_json::from_str(&sample().to_json("1.1.0")).unwrap();
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(v["interfaces"][0]["mtu"], 1500);
        assert_eq!(v["dns"], serde_json::json!({}));
    }

    #[test]
    fn round_trips() {
        let v: Value = serde_json::from_str(&sample().to_json("0.3.1")).unwrap();
        let back = CniResult::from_value(&v).unwrap();
        assert_eq!(back.ips[0].address, sample().ips[0].address);
    }
}
