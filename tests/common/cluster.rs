//! Emulated clusters for tests: each made by the built `flatnet` binary with a unique name
//! and a private state dir, and brought down on drop (also when the test panics).

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use flatnet::netns;

use super::{owner_pid, pid_alive, sweep_stale, unique, workspace_bin, TempDir};

/// A cluster made by `flatnet up`; `flatnet down` runs on drop.
pub struct TestCluster {
    pub name: String,
    pub state: TempDir,
}

impl TestCluster {
    /// `flatnet up` with `args` (e.g. `--nodes 3`), and a 1 s agent resync so that repairs
    /// that wait for a resync come quickly.
    pub fn up(tag: &str, args: &[&str]) -> TestCluster {
        sweep_stale();
        let c = TestCluster {
            name: unique(tag),
            state: TempDir::new(&format!("{tag}-state")),
        };
        let mut all = vec!["up", "--agent-resync", "1"];
        all.extend_from_slice(args);
        c.ok(&all);
        c
    }

    /// `flatnet --name C --state-dir D args…`.
    pub fn flatnet(&self, args: &[&str]) -> Output {
        Command::new(workspace_bin("flatnet"))
            .arg("--name")
            .arg(&self.name)
            .arg("--state-dir")
            .arg(self.state.path())
            .args(args)
            .output()
            .expect("spawn flatnet")
    }

    /// Runs `flatnet args…`, asserting success; returns stdout.
    /// `flatnet apply -f -` with `yaml` on stdin (a short restart back-off, for tests), and
    /// `extra` arguments.
    pub fn apply_stdin(&self, yaml: &str, extra: &[&str]) -> Output {
        use std::io::Write;
        use std::process::Stdio;
        let mut child = Command::new(workspace_bin("flatnet"))
            .args(["--name", &self.name, "--state-dir"])
            .arg(self.state.path())
            .args(["apply", "-f", "-", "--restart-backoff", "0.2"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flatnet apply");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(yaml.as_bytes())
            .expect("write the manifest");
        child.wait_with_output().expect("flatnet apply")
    }

    /// [`TestCluster::apply_stdin`], asserting success; returns stdout.
    pub fn apply_ok(&self, yaml: &str) -> String {
        let out = self.apply_stdin(yaml, &[]);
        assert!(
            out.status.success(),
            "apply failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.flatnet(args);
        assert!(
            out.status.success(),
            "flatnet {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn netns(&self, what: &str) -> String {
        format!("flatnet-{}-{what}", self.name)
    }

    /// `ip -n <node netns> args…`: the independent witness.
    pub fn ip(&self, node: &str, args: &[&str]) -> String {
        let mut all = vec!["-n".to_string(), self.netns(node)];
        all.extend(args.iter().map(|s| s.to_string()));
        let out = Command::new("ip").args(&all).output().expect("spawn ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nft args…` inside the node's namespace: stdout (empty if nft failed).
    pub fn nft(&self, node: &str, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns(node), "nft"])
            .args(args)
            .output()
            .expect("spawn nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The node's routes made by the agent, as `ip route` prints them.
    pub fn agent_routes(&self, node: &str) -> Vec<String> {
        self.ip(node, &["route", "show", "proto", "0x67"])
            .lines()
            .map(|l| l.trim().to_string())
            .collect()
    }

    /// The named namespaces of this cluster that exist.
    pub fn namespaces(&self) -> Vec<String> {
        let prefix = format!("flatnet-{}-", self.name);
        netns::list_named()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&prefix))
            .collect()
    }

    /// A host on the underlay outside the cluster (`172.18.255.254`), in a namespace of its
    /// own: its link is made inside it and moved straight into the underlay's, never into
    /// the machine's.
    pub fn outside_host(&self) -> super::TestNs {
        let outside = super::TestNs::new("out");
        let peer = format!("out{}", std::process::id() % 100_000);
        outside.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &self.netns("underlay"),
        ]);
        self.ip("underlay", &["link", "set", &peer, "master", "br0", "up"]);
        outside.ip(&["addr", "add", "172.18.255.254/16", "dev", "eth0"]);
        outside.ip(&["link", "set", "eth0", "up"]);
        outside
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state.path().join(&self.name)
    }

    /// `flatnet down` and the state dir removed: what dropping it does, for a cluster that is
    /// never dropped (one in a static).
    pub fn teardown(&self) {
        let _ = self.flatnet(&["down"]);
        let _ = std::fs::remove_dir_all(self.state.path());
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.flatnet(&["down"]);
    }
}

/// The cluster a namespace made by the emulator belongs to: `flatnet-<cluster>-…`, where the
/// cluster part never contains the words that follow it.
fn cluster_of(netns: &str) -> Option<&str> {
    let rest = netns.strip_prefix("flatnet-")?;
    ["-underlay", "-node-", "-pod-"]
        .iter()
        .filter_map(|w| rest.find(w))
        .min()
        .map(|end| &rest[..end])
}

/// `flatnet down` for test clusters whose test process is gone: `down` finds the namespaces by
/// name and the agents by their namespace, so the lost state dir does not matter.
pub fn sweep_stale_clusters() {
    let mut stale: Vec<String> = netns::list_named()
        .unwrap_or_default()
        .iter()
        .filter_map(|n| cluster_of(n))
        .filter(|c| owner_pid(c).is_some_and(|p| !pid_alive(p)))
        .map(str::to_string)
        .collect();
    stale.sort();
    stale.dedup();
    for c in stale {
        let state = std::env::temp_dir().join(format!("{c}-sweep"));
        let _ = Command::new(workspace_bin("flatnet"))
            .args(["--name", &c, "--state-dir"])
            .arg(&state)
            .arg("down")
            .output();
        let _ = std::fs::remove_dir_all(state);
    }
}

/// Polls `f` until it holds, for up to `timeout`; the kernel and the agents converge
/// asynchronously.
pub fn eventually(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(
        super::wait_until(timeout, f),
        "timed out waiting for: {what}"
    );
}
