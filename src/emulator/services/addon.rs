//! The cluster DNS addon, as kind installs CoreDNS: the Deployment `coredns` in `kube-system`
//! (its container runs `flatnet dns`) behind the Service `kube-dns` at the tenth address of
//! the service CIDR. It is made with the first Service a cluster gets, not by `up`: a cluster
//! without Services has nothing to resolve, and keeps only the pods it was given.

use std::time::Duration;

use serde_json::json;

use super::{dns_ip, ServiceManifest};
use crate::emulator::cluster::Cluster;
use crate::emulator::manifest::{self, Object};
use crate::emulator::objects::last_applied_json;
use crate::emulator::{io_err, workloads, Error, Result};

pub const NAMESPACE: &str = "kube-system";
pub const SERVICE: &str = "kube-dns";
pub const DEPLOYMENT: &str = "coredns";

impl Cluster {
    /// Makes the DNS addon unless it is there. The caller holds the cluster lock.
    pub(crate) fn ensure_dns(&self, restart_backoff: Duration) -> Result<()> {
        let spec = self.spec()?;
        if self.service(NAMESPACE, SERVICE)?.is_none() {
            let raw = json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                             "labels": {"k8s-app": "kube-dns"}},
                "spec": {
                    "clusterIP": dns_ip(spec.service_cidr).to_string(),
                    "selector": {"k8s-app": "kube-dns"},
                    "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                        {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    ],
                },
            });
            let m = ServiceManifest {
                name: SERVICE.into(),
                namespace: Some(NAMESPACE.into()),
                raw: raw.clone(),
            };
            self.apply_service(&m, NAMESPACE, last_applied_json(&raw, NAMESPACE))?;
        }
        let exe = std::env::current_exe().map_err(io_err("find the flatnet executable"))?;
        let raw = json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": DEPLOYMENT, "namespace": NAMESPACE,
                         "labels": {"k8s-app": "kube-dns"}},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": "kube-dns"}},
                    "spec": {
                        "dnsPolicy": "Default",
                        "terminationGracePeriodSeconds": 5,
                        "containers": [{
                            "name": "coredns",
                            "image": "flatnet dns (CoreDNS's kubernetes plugin)",
                            "command": [exe.display().to_string(), "dns",
                                        self.dir().path().display().to_string()],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                            ],
                            "readinessProbe": {"tcpSocket": {"port": 53}, "periodSeconds": 1},
                        }],
                    },
                },
            },
        });
        let Object::Deployment(d) = manifest::parse_value(raw.clone()).map_err(Error::Invalid)?
        else {
            unreachable!("a Deployment document");
        };
        if workloads::Store(self.dir())
            .deployment(NAMESPACE, DEPLOYMENT)?
            .is_none()
        {
            workloads::apply::apply(
                self.dir(),
                &d,
                NAMESPACE,
                &last_applied_json(&raw, NAMESPACE),
                restart_backoff,
            )?;
        }
        Ok(())
    }
}
