//! Logs go to a file, never to stdout: stdout belongs to the CNI protocol.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;

/// The level named by `FLATNET_LOG` (error, warn, info, debug, trace, off), default info. A
/// level, not env-filter's directives: its regex engine would double the plugin's size, and the
/// plugin is exec'd once per pod.
fn level() -> LevelFilter {
    std::env::var("FLATNET_LOG")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(LevelFilter::INFO)
}

/// Sends `tracing` output to `path` (appending), filtered by `FLATNET_LOG` (default `info`).
/// Logging is best effort: if the file cannot be opened, the program runs without it.
pub fn to_file(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let Ok(file) = OpenOptions::new().create(true).append(true).open(path) else {
        return;
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(level())
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
}

/// Sends `tracing` output to stderr, filtered by `FLATNET_LOG` (default `info`): for the
/// agent, whose supervisor (the emulator, or the kubelet of a DaemonSet) keeps its stderr.
pub fn to_stderr() {
    let _ = tracing_subscriber::fmt()
        .with_max_level(level())
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
}
