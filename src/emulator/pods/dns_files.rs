//! Each container's `/etc/resolv.conf` and `/etc/hosts`, as kubelet writes them: made in the
//! pod's directory when the pod gets its address, and bind-mounted over the machine's in each
//! container's private mount namespace (the machine's files are never touched).
//!
//! `dnsPolicy: ClusterFirst` (the default, and `ClusterFirstWithHostNet`, the same for a pod on
//! the pod network) points at the cluster DNS with Kubernetes' search list and `ndots:5`;
//! `Default` takes the node's resolver settings (the machine's, here); `None` only what
//! `dnsConfig` says. `dnsConfig` is merged as kubelet merges it: nameservers and searches
//! appended (without repeats, at most 3 nameservers and 32 searches), options by name.
//! kubelet also appends the node's own search domains to ClusterFirst's; the emulator does not,
//! as its nodes share the machine's, which mean nothing inside the cluster.

use std::fmt::Write as _;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::Value;

use crate::emulator::services::dns::DOMAIN;

const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;

/// Checks the DNS fields of a pod's spec as the API server does, and that nothing in them can
/// break a line of the files.
pub fn check(spec: &PodSpec) -> Result<(), String> {
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    if !["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"].contains(&policy) {
        return Err(format!(
            "spec.dnsPolicy: {policy:?} is not ClusterFirst, ClusterFirstWithHostNet, Default \
             or None"
        ));
    }
    let cfg = spec.dns_config.clone().unwrap_or_default();
    let servers = cfg.nameservers.unwrap_or_default();
    if policy == "None" && servers.is_empty() {
        return Err(
            "spec.dnsConfig.nameservers: Required value: must provide at least one DNS \
             nameserver when dnsPolicy is None"
                .into(),
        );
    }
    if servers.len() > MAX_NAMESERVERS {
        return Err(format!(
            "spec.dnsConfig.nameservers: must not have more than {MAX_NAMESERVERS} nameservers"
        ));
    }
    for (i, s) in servers.iter().enumerate() {
        s.parse::<IpAddr>()
            .map_err(|_| format!("spec.dnsConfig.nameservers[{i}]: {s:?} is not an IP address"))?;
    }
    for (i, s) in cfg.searches.unwrap_or_default().iter().enumerate() {
        word(s).map_err(|e| format!("spec.dnsConfig.searches[{i}]: {e}"))?;
    }
    for (i, o) in cfg.options.unwrap_or_default().iter().enumerate() {
        let name = o.name.as_deref().unwrap_or_default();
        word(name).map_err(|e| format!("spec.dnsConfig.options[{i}].name: {e}"))?;
        if let Some(v) = &o.value {
            word(v).map_err(|e| format!("spec.dnsConfig.options[{i}].value: {e}"))?;
        }
    }
    if let Some(sub) = &spec.subdomain {
        crate::emulator::names::validate_namespace(sub)
            .map_err(|e| format!("spec.subdomain: {e}"))?;
    }
    for (i, a) in spec.host_aliases.iter().flatten().enumerate() {
        a.ip.parse::<IpAddr>()
            .map_err(|_| format!("spec.hostAliases[{i}].ip: must be an IP address"))?;
        for (j, h) in a.hostnames.iter().flatten().enumerate() {
            word(h).map_err(|e| format!("spec.hostAliases[{i}].hostnames[{j}]: {e}"))?;
        }
    }
    Ok(())
}

fn word(s: &str) -> Result<(), String> {
    if s.is_empty()
        || !s
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '#' && c != ';')
    {
        return Err(format!("{s:?} must be one printable word"));
    }
    Ok(())
}

/// The pod's resolv.conf; `dns_ip` is the cluster DNS Service's address, `host` the node's
/// resolv.conf.
pub fn resolv_conf(doc: &Value, namespace: &str, dns_ip: IpAddr, host: &str) -> String {
    let spec = serde_json::from_value::<Pod>(doc.clone())
        .ok()
        .and_then(|p| p.spec)
        .unwrap_or_default();
    let mut servers: Vec<String> = Vec::new();
    let mut searches: Vec<String> = Vec::new();
    let mut options: Vec<(String, Option<String>)> = Vec::new();
    match spec.dns_policy.as_deref().unwrap_or("ClusterFirst") {
        "None" => {}
        "Default" => {
            for line in host.lines() {
                let mut words = line.split_whitespace();
                match words.next() {
                    Some("nameserver") => servers.extend(words.next().map(String::from)),
                    Some("search") => searches = words.map(String::from).collect(),
                    Some("options") => {
                        for o in words {
                            let (n, v) = o.split_once(':').map_or((o, None), |(n, v)| (n, Some(v)));
                            options.push((n.to_string(), v.map(String::from)));
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {
            servers.push(dns_ip.to_string());
            searches = vec![
                format!("{namespace}.svc.{DOMAIN}"),
                format!("svc.{DOMAIN}"),
                DOMAIN.to_string(),
            ];
            options.push(("ndots".into(), Some("5".into())));
        }
    }
    let cfg = spec.dns_config.unwrap_or_default();
    for s in cfg.nameservers.unwrap_or_default() {
        if !servers.contains(&s) {
            servers.push(s);
        }
    }
    servers.truncate(MAX_NAMESERVERS);
    for s in cfg.searches.unwrap_or_default() {
        if !searches.contains(&s) {
            searches.push(s);
        }
    }
    searches.truncate(MAX_SEARCHES);
    for o in cfg.options.unwrap_or_default() {
        let name = o.name.unwrap_or_default();
        options.retain(|(n, _)| *n != name);
        options.push((name, o.value));
    }
    let mut out = String::new();
    for s in &servers {
        let _ = writeln!(out, "nameserver {s}");
    }
    if !searches.is_empty() {
        let _ = writeln!(out, "search {}", searches.join(" "));
    }
    if !options.is_empty() {
        let list: Vec<String> = options
            .iter()
            .map(|(n, v)| v.as_ref().map_or(n.clone(), |v| format!("{n}:{v}")))
            .collect();
        let _ = writeln!(out, "options {}", list.join(" "));
    }
    out
}

/// The pod's /etc/hosts, as kubelet's managed hosts file.
pub fn hosts(doc: &Value, namespace: &str, hostname: &str, ips: &[IpAddr]) -> String {
    let spec = serde_json::from_value::<Pod>(doc.clone())
        .ok()
        .and_then(|p| p.spec)
        .unwrap_or_default();
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    let names = match &spec.subdomain {
        Some(sub) => format!("{hostname}.{sub}.{namespace}.svc.{DOMAIN}\t{hostname}"),
        None => hostname.to_string(),
    };
    for ip in ips {
        let _ = writeln!(out, "{ip}\t{names}");
    }
    let aliases = spec.host_aliases.unwrap_or_default();
    if !aliases.is_empty() {
        out += "\n# Entries added by HostAliases.\n";
        for a in aliases {
            let _ = writeln!(
                out,
                "{}\t{}",
                a.ip,
                a.hostnames.unwrap_or_default().join("\t")
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cluster_first_none_and_dns_config_as_kubelet_writes_them() {
        let dns: IpAddr = "10.96.0.10".parse().unwrap();
        let pod = json!({"spec": {"containers": []}});
        assert_eq!(
            resolv_conf(&pod, "shop", dns, ""),
            "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local \
             cluster.local\noptions ndots:5\n"
        );
        let pod = json!({"spec": {"containers": [], "dnsPolicy": "None", "dnsConfig": {
            "nameservers": ["192.0.2.1"], "searches": ["a.example"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}});
        assert_eq!(
            resolv_conf(&pod, "shop", dns, ""),
            "nameserver 192.0.2.1\nsearch a.example\noptions ndots:2 edns0\n"
        );
        let pod = json!({"spec": {"containers": [], "dnsConfig": {
            "options": [{"name": "ndots", "value": "1"}]}}});
        assert!(resolv_conf(&pod, "x", dns, "").ends_with("options ndots:1\n"));
        let pod = json!({"spec": {"containers": [], "dnsPolicy": "Default"}});
        assert_eq!(
            resolv_conf(&pod, "x", dns, "# c\nnameserver 192.0.2.53\nsearch lan\n"),
            "nameserver 192.0.2.53\nsearch lan\n"
        );
    }

    #[test]
    fn hosts_name_the_pod_and_its_subdomain() {
        let pod = json!({"spec": {"containers": [], "subdomain": "db",
            "hostAliases": [{"ip": "192.0.2.7", "hostnames": ["foo", "bar"]}]}});
        let h = hosts(&pod, "shop", "db-0", &["10.244.1.2".parse().unwrap()]);
        assert!(h.contains("10.244.1.2\tdb-0.db.shop.svc.cluster.local\tdb-0\n"));
        assert!(h.ends_with("# Entries added by HostAliases.\n192.0.2.7\tfoo\tbar\n"));
    }
}
