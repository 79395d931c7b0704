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
        conf: NetConf,
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
    let conf = NetConf::from_map(&map)?;
    Ok(Call::Verb { cmd, env, conf })
}
