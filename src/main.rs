//! `flatnet`: the emulator's command line (a kind-like cluster of network namespaces) and the
//! node agent. Thin: every command is a call into the library.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", message(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, outermost first. flatnet's own errors say their cause in their
/// message and do not repeat it as a source, so each part appears once.
fn message(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}
