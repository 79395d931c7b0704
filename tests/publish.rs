//! What the emulator publishes to the agents' registry, and when (issue 23): each command
//! publishes the pods, namespaces and policies it changed, as stored now, and the
//! controller's periodic full publish removes what a command killed half-way left behind.

mod common;

use std::path::Path;
use std::time::Duration;

use common::cluster::{eventually, TestCluster};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn object(reg: &Path, kind: &str, key: &str) -> Option<Value> {
    let bytes = std::fs::read(reg.join(kind).join(format!("{key}.json"))).ok()?;
    Some(serde_json::from_slice(&bytes).expect("a published object is JSON"))
}

#[test]
fn commands_publish_what_they_change_and_the_controller_repairs_the_rest() {
    let c = TestCluster::up("fpub", &["--nodes", "1"]);
    let reg = c.state_dir().join("registry");
    c.ok(&["run", "a", "--sandbox-only"]);
    c.ok(&["run", "b", "--sandbox-only"]);
    let a = object(&reg, "pods", "default_a").expect("a is published at once");
    assert!(!a["ips"].as_array().unwrap().is_empty(), "{a}");
    assert!(object(&reg, "pods", "default_b").is_some());

    // A relabelled pod or namespace is published again, with its new labels.
    c.ok(&["label", "pod", "a", "app=web"]);
    assert_eq!(
        object(&reg, "pods", "default_a").unwrap()["labels"]["app"],
        "web"
    );
    c.ok(&["label", "ns", "default", "team=x"]);
    assert_eq!(
        object(&reg, "namespaces", "default").unwrap()["labels"]["team"],
        "x"
    );

    // A policy comes and goes with apply and delete, without kubectl's annotation.
    c.apply_ok(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {name: p}\nspec: {podSelector: {matchLabels: {app: web}}}\n",
    );
    let p = object(&reg, "policies", "default_p").expect("the policy is published");
    assert!(p["metadata"]["annotations"]
        .get("kubectl.kubernetes.io/last-applied-configuration")
        .is_none());
    c.ok(&["delete", "netpol", "p"]);
    assert!(object(&reg, "policies", "default_p").is_none());

    // A deleted pod's object goes; the others stay.
    c.ok(&["delete", "pod", "a"]);
    assert!(object(&reg, "pods", "default_a").is_none());
    assert!(object(&reg, "pods", "default_b").is_some());

    // What a command killed between its change and its publish would leave: an object for a
    // pod that is gone, and a pod's object missing. The controller's full publish mends both.
    let ghost = object(&reg, "pods", "default_b").unwrap();
    std::fs::write(
        reg.join("pods").join("default_ghost.json"),
        serde_json::to_vec(&ghost).unwrap(),
    )
    .unwrap();
    std::fs::remove_file(reg.join("pods").join("default_b.json")).unwrap();
    eventually(
        "the controller's full publish repairs the registry",
        WAIT,
        || {
            object(&reg, "pods", "default_ghost").is_none()
                && object(&reg, "pods", "default_b").is_some()
        },
    );
}
