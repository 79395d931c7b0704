//! The runtime's side of CNI, as containerd's libcni does it: find each plugin of a conflist in
//! the bin dirs, exec it with the `CNI_*` environment and its config on stdin, chain results as
//! `prevResult`, and run DEL in reverse order. The plugin process runs in the node's network
//! namespace: the forked child enters it before exec.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::config::Attachment;
use super::env::Command;
use crate::netns::NetNs;

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("invalid conflist: {0}")]
    Conflist(String),
    #[error("plugin {0} not found in {1}")]
    NotFound(String, String),
    #[error("exec {plugin}: {cause}")]
    Exec {
        plugin: String,
        cause: std::io::Error,
    },
    /// The plugin answered with the spec's error JSON (or with garbage, as code 999).
    #[error("{plugin} {command} failed with code {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
    Plugin {
        plugin: String,
        command: Command,
        code: u32,
        msg: String,
        details: String,
    },
}

/// A network configuration list (a `.conflist` file).
#[derive(Debug, Clone)]
pub struct ConfList {
    pub cni_version: String,
    pub name: String,
    pub plugins: Vec<Map<String, Value>>,
}

impl ConfList {
    pub fn parse(bytes: &[u8]) -> Result<ConfList, InvokeError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| InvokeError::Conflist(e.to_string()))?;
        ConfList::from_value(&v)
    }

    /// A conflist already parsed as JSON (as a runtime caches it).
    pub fn from_value(v: &Value) -> Result<ConfList, InvokeError> {
        #[derive(serde::Deserialize)]
        struct Raw {
            #[serde(rename = "cniVersion")]
            cni_version: String,
            name: String,
            plugins: Vec<Map<String, Value>>,
        }
        let raw: Raw = serde_path_to_error::deserialize(v)
            .map_err(|e| InvokeError::Conflist(format!("{}: {}", e.path(), e.inner())))?;
        if raw.plugins.is_empty() {
            return Err(InvokeError::Conflist("plugins is empty".into()));
        }
        if let Some(i) = raw
            .plugins
            .iter()
            .position(|p| !p.get("type").is_some_and(Value::is_string))
        {
            return Err(InvokeError::Conflist(format!(
                "plugins[{i}].type is missing or not a string"
            )));
        }
        Ok(ConfList {
            cni_version: raw.cni_version,
            name: raw.name,
            plugins: raw.plugins,
        })
    }

    /// The stdin of plugin `i`: its object with the list's name and version, the
    /// `runtimeConfig` entries for the capabilities it declares, and `prevResult`.
    fn plugin_stdin(
        &self,
        i: usize,
        prev: Option<&Value>,
        runtime_config: &Map<String, Value>,
    ) -> Vec<u8> {
        let mut conf = self.plugins[i].clone();
        conf.insert("name".into(), self.name.clone().into());
        conf.insert("cniVersion".into(), self.cni_version.clone().into());
        let caps = conf.get("capabilities").and_then(Value::as_object).cloned();
        let rc: Map<String, Value> = runtime_config
            .iter()
            .filter(|(k, _)| {
                caps.as_ref()
                    .is_some_and(|c| c.get(*k) == Some(&Value::Bool(true)))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        serde_json::to_vec(&conf).expect("config serializes")
    }

    fn plugin_type(&self, i: usize) -> &str {
        self.plugins[i]["type"].as_str().expect("checked in parse")
    }
}

/// One attachment of a pod to the network, as the runtime describes it to plugins.
#[derive(Debug, Clone, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Path of the pod's netns; empty for a DEL after the netns is gone.
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. K8S_POD_NAME.
    pub args: Vec<(String, String)>,
    /// Capability arguments (e.g. `portMappings`), passed to plugins that declare them.
    pub runtime_config: Map<String, Value>,
}

/// What runs plugins: where they are, and the node namespace they run in.
#[derive(Debug, Clone)]
pub struct Runtime {
    pub bin_dirs: Vec<PathBuf>,
    /// None: the caller's own namespace.
    pub node_netns: Option<Arc<NetNs>>,
}

impl Runtime {
    /// ADD through the whole list; returns the final result, which the caller keeps for DEL
    /// and CHECK (libcni caches it on disk). On failure the attachment is deleted again, as
    /// libcni leaves that to the runtime and containerd does it.
    pub fn add(&self, list: &ConfList, rt: &RuntimeConf) -> Result<Value, InvokeError> {
        let mut prev: Option<Value> = None;
        for i in 0..list.plugins.len() {
            let out = self.exec_plugin(list, i, Command::Add, rt, prev.as_ref())?;
            prev = Some(
                serde_json::from_slice(&out).map_err(|e| InvokeError::Plugin {
                    plugin: list.plugin_type(i).into(),
                    command: Command::Add,
                    code: 999,
                    msg: format!("result is not JSON: {e}"),
                    details: String::from_utf8_lossy(&out).into_owned(),
                })?,
            );
        }
        Ok(prev.expect("a list has at least one plugin"))
    }

    /// DEL through the list in reverse order, each plugin getting the cached result. Goes on
    /// past a failing plugin and returns the first error.
    pub fn del(
        &self,
        list: &ConfList,
        rt: &RuntimeConf,
        cached: Option<&Value>,
    ) -> Result<(), InvokeError> {
        let mut first_err = None;
        for i in (0..list.plugins.len()).rev() {
            if let Err(e) = self.exec_plugin(list, i, Command::Del, rt, cached) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// CHECK through the list, each plugin getting the cached result.
    pub fn check(
        &self,
        list: &ConfList,
        rt: &RuntimeConf,
        cached: &Value,
    ) -> Result<(), InvokeError> {
        for i in 0..list.plugins.len() {
            self.exec_plugin(list, i, Command::Check, rt, Some(cached))?;
        }
        Ok(())
    }

    /// STATUS of every plugin of the list.
    pub fn status(&self, list: &ConfList) -> Result<(), InvokeError> {
        for i in 0..list.plugins.len() {
            self.exec_plugin(list, i, Command::Status, &RuntimeConf::default(), None)?;
        }
        Ok(())
    }

    /// GC: every plugin of the list learns which attachments are still valid.
    pub fn gc(&self, list: &ConfList, valid: &[Attachment]) -> Result<(), InvokeError> {
        let valid: Vec<Value> = valid
            .iter()
            .map(|a| serde_json::json!({"containerID": a.container_id, "ifname": a.ifname}))
            .collect();
        let mut list = list.clone();
        for p in &mut list.plugins {
            p.insert(
                "cni.dev/valid-attachments".into(),
                Value::Array(valid.clone()),
            );
        }
        for i in 0..list.plugins.len() {
            self.exec_plugin(&list, i, Command::Gc, &RuntimeConf::default(), None)?;
        }
        Ok(())
    }

    fn find(&self, plugin: &str) -> Result<PathBuf, InvokeError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                let dirs: Vec<_> = self
                    .bin_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                InvokeError::NotFound(plugin.into(), dirs.join(":"))
            })
    }

    fn exec_plugin(
        &self,
        list: &ConfList,
        i: usize,
        command: Command,
        rt: &RuntimeConf,
        prev: Option<&Value>,
    ) -> Result<Vec<u8>, InvokeError> {
        let plugin = list.plugin_type(i);
        let bin = self.find(plugin)?;
        let cni_path = std::env::join_paths(&self.bin_dirs).unwrap_or_default();
        let args: Vec<String> = rt.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let env = [
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", rt.container_id.clone()),
            ("CNI_NETNS", rt.netns.clone()),
            ("CNI_IFNAME", rt.ifname.clone()),
            ("CNI_ARGS", args.join(";")),
            ("CNI_PATH", cni_path.to_string_lossy().into_owned()),
        ];
        let stdin = list.plugin_stdin(i, prev, &rt.runtime_config);
        let out = exec(&bin, &env, &stdin, self.node_netns.as_deref()).map_err(|cause| {
            InvokeError::Exec {
                plugin: plugin.into(),
                cause,
            }
        })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        let err: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        Err(InvokeError::Plugin {
            plugin: plugin.into(),
            command,
            code: err["code"].as_u64().map_or(999, |c| c as u32),
            msg: err["msg"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string()),
            details: err["details"].as_str().unwrap_or_default().to_string(),
        })
    }
}

/// Execs `bin` with exactly `env` (plus PATH) and `stdin`, inside `netns` if given, and waits.
pub fn exec(
    bin: &Path,
    env: &[(&str, String)],
    stdin: &[u8],
    netns: Option<&NetNs>,
) -> std::io::Result<std::process::Output> {
    let mut cmd = crate::netns::command(bin, env, netns);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut pipe = child.stdin.take().expect("piped");
    // A plugin that exits without reading stdin makes this write fail; its exit status and
    // output tell the real story, so the write error is not what we report.
    let _ = pipe.write_all(stdin);
    drop(pipe);
    child.wait_with_output()
}
