//! `flatnet-cni`: the CNI plugin binary. It reads the `CNI_*` environment and the network
//! configuration on stdin, runs the verb, and prints the result or the spec's error JSON.

use std::io::Read;
use std::process::ExitCode;

use flatnet::cni::error::code;
use flatnet::cni::{config, env, version, CniError, Command, NetConf};

fn main() -> ExitCode {
    let get = |k: &str| std::env::var(k).ok();
    // The version errors are reported in: the config's once it is known to be supported.
    let mut reply_version = version::LATEST.to_string();
    match run(&get, &mut reply_version) {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(&reply_version));
            ExitCode::FAILURE
        }
    }
}

fn run(
    get: &impl Fn(&str) -> Option<String>,
    reply_version: &mut String,
) -> Result<Option<String>, CniError> {
    let cmd = env::command(get)?;
    let stdin = read_stdin()?;

    if cmd == Command::Version {
        // The config is optional here; answer in its version when it names one we speak.
        let asked = config::decode(&stdin)
            .ok()
            .and_then(|m| config::cni_version(&m).ok())
            .filter(|v| version::SUPPORTED.contains(&v.as_str()));
        return Ok(Some(version::version_info(
            asked.as_deref().unwrap_or(version::LATEST),
        )));
    }

    let map = config::decode(&stdin)?;
    let cni_version = config::cni_version(&map)?;
    if version::SUPPORTED.contains(&cni_version.as_str()) {
        *reply_version = cni_version.clone();
    }
    version::check(&cni_version, cmd)?;
    let env = env::read(cmd, get)?;
    let conf = NetConf::from_map(&map)?;
    flatnet::logging::to_file(&conf.log_file);
    tracing::debug!(%cmd, container = %env.container_id, ifname = %env.ifname, "called");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot start the runtime").with_details(e))?;
    let out = runtime.block_on(flatnet::plugin::run(cmd, &env, &conf));
    if let Err(e) = &out {
        tracing::warn!(%cmd, container = %env.container_id, code = e.code, error = %e, "failed");
    }
    out
}

/// All of stdin; nothing when stdin is a terminal (VERSION run by hand).
fn read_stdin() -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    // SAFETY: isatty only inspects fd 0.
    if unsafe { libc::isatty(0) } == 1 {
        return Ok(buf);
    }
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot read stdin").with_details(e))?;
    Ok(buf)
}
