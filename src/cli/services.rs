//! `get services|endpointslices`, `delete service`, and the cluster DNS server's entry point.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use serde_json::Value;

use flatnet::emulator::services::endpoints;
use flatnet::emulator::Cluster;

use super::objects::{age, select, Selected};

/// Deletes the Services `list` (namespace, name), printing each as kubectl does. Returns
/// whether one failed and how many were not found.
pub fn delete(cluster: &Cluster, list: &[(String, String)]) -> Result<(bool, usize)> {
    let mut missing = 0;
    for (ns, name) in list {
        let gone = cluster.delete_services(ns, std::slice::from_ref(name))?;
        if gone.is_empty() {
            println!("service {name:?} deleted");
        } else {
            eprintln!("Error from server (NotFound): services {name:?} not found");
            missing += 1;
        }
    }
    Ok((false, missing))
}

/// `get services|endpointslices [NAME] [-A] [-o json|yaml]`: kubectl's columns.
pub fn get(
    cluster: &Cluster,
    ns: &str,
    slices: bool,
    name: Option<&str>,
    all_namespaces: bool,
    json: Option<bool>,
) -> Result<String> {
    let (kind, list) = if slices {
        cluster.spec()?;
        (
            "endpointslices.discovery.k8s.io",
            endpoints::stored(cluster.dir()),
        )
    } else {
        ("services", cluster.services()?)
    };
    let list = match select(list, kind, ns, name, all_namespaces, json)? {
        Selected::Printed(out) => return Ok(out),
        Selected::Rows(list) => list,
    };
    let mut header = if slices {
        vec!["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"]
    } else {
        vec![
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
        ]
    };
    if all_namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut rows = vec![header.iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    for v in &list {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let mut row = if slices {
            vec![
                s(&v["metadata"]["name"]),
                s(&v["addressType"]),
                slice_ports(v),
                slice_endpoints(v),
                // Slices are rewritten at each change: their age is the Service's.
                String::new(),
            ]
        } else {
            vec![
                s(&v["metadata"]["name"]),
                s(&v["spec"]["type"]),
                s(&v["spec"]["clusterIP"]),
                "<none>".into(),
                service_ports(v),
                age(v["metadata"]["creationTimestamp"].as_str()),
            ]
        };
        if all_namespaces {
            row.insert(0, s(&v["metadata"]["namespace"]));
        }
        rows.push(row);
    }
    Ok(flatnet::emulator::table::render(&rows))
}

/// `80/TCP,53:30053/UDP`, as kubectl shows a Service's ports.
fn service_ports(v: &Value) -> String {
    let list: Vec<String> = v["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            let proto = p["protocol"].as_str().unwrap_or("TCP");
            match p["nodePort"].as_u64() {
                Some(n) => format!("{}:{n}/{proto}", p["port"]),
                None => format!("{}/{proto}", p["port"]),
            }
        })
        .collect();
    if list.is_empty() {
        "<none>".into()
    } else {
        list.join(",")
    }
}

fn slice_ports(v: &Value) -> String {
    let list: Vec<String> = v["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| p["port"].to_string())
        .collect();
    if list.is_empty() {
        "<unset>".into()
    } else {
        list.join(",")
    }
}

/// Up to three addresses and how many more, as kubectl shows them.
fn slice_endpoints(v: &Value) -> String {
    let all: Vec<String> = v["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    match all.len() {
        0 => "<unset>".into(),
        1..=3 => all.join(","),
        n => format!("{} + {} more...", all[..3].join(","), n - 3),
    }
}

/// `flatnet dns CLUSTER_DIR`: the cluster DNS server, as the coredns pod runs it.
pub fn dns_server(cluster_dir: &Path) -> Result<ExitCode> {
    flatnet::emulator::services::dns::serve(cluster_dir)?;
    Ok(ExitCode::SUCCESS)
}
