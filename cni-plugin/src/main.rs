//! `flatnet-cni`: the CNI plugin binary. It reads the `CNI_*` environment and the network
//! configuration on stdin, runs the verb, and prints the result or the spec's error JSON.

use std::io::{IsTerminal, Read};
use std::process::ExitCode;
use std::sync::OnceLock;

use flatnet_core::cni::call::{self, Call};
use flatnet_core::cni::error::code;
use flatnet_core::cni::{version, CniError};

/// The version errors are reported in: the config's, once it is known to be one we speak.
static REPLY_VERSION: OnceLock<String> = OnceLock::new();

fn reply_version() -> &'static str {
    REPLY_VERSION.get().map_or(version::LATEST, String::as_str)
}

fn main() -> ExitCode {
    // A panic is a bug, but the runtime still gets the spec's error JSON (code 999) on stdout
    // and a non-zero exit, not a bare abort.
    std::panic::set_hook(Box::new(|info| {
        let err = CniError::new(code::INTERNAL, "flatnet-cni panicked").with_details(info);
        tracing::error!(error = %err, "panic");
        println!("{}", err.to_json(reply_version()));
    }));
    let get = |k: &str| std::env::var(k).ok();
    match run(&get) {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(reply_version()));
            ExitCode::FAILURE
        }
    }
}

fn run(get: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, CniError> {
    let stdin = read_stdin()?;
    let mut asked = version::LATEST.to_string();
    let decoded = call::decode(get, &stdin, &mut asked);
    let _ = REPLY_VERSION.set(asked);
    let (cmd, env, conf) = match decoded? {
        Call::Version(answer) => return Ok(Some(answer)),
        Call::Verb { cmd, env, conf } => (cmd, env, conf),
    };
    flatnet_core::logging::to_file(&conf.log_file);
    tracing::debug!(%cmd, container = %env.container_id, ifname = %env.ifname, "called");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot start the runtime").with_details(e))?;
    let out = runtime.block_on(flatnet_core::plugin::run(cmd, &env, &conf));
    if let Err(e) = &out {
        tracing::warn!(%cmd, container = %env.container_id, code = e.code, error = %e, "failed");
    }
    out
}

/// All of stdin; nothing when stdin is a terminal (VERSION run by hand).
fn read_stdin() -> Result<Vec<u8>, CniError> {
    let mut buf = Vec::new();
    if std::io::stdin().is_terminal() {
        return Ok(buf);
    }
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(code::IO_FAILURE, "cannot read stdin").with_details(e))?;
    Ok(buf)
}
