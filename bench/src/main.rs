//! `flatnet-bench`: the side-by-side benchmarks of issue 7, in one run. Use `bench/run.sh`
//! (as root), which builds, picks a unique tag and cleans up by name whatever happens.
//!
//! ```text
//! flatnet-bench --tag fbench123 --work /dev/shm/fbench123 [--reps 5] [--quick]
//!               [--only cni,agent,datapath,antispoof,bringup,netpol] [--out DIR]
//! ```
//!
//! Everything it creates is named after the tag: namespaces `<tag>-…`, emulated clusters
//! `<tag>-conv`, `<tag>-dp`, `<tag>-emu`, `<tag>-np` (namespaces `flatnet-<tag>-…`), files under `--work`.
//! Nothing is created in the machine's own network namespace.

mod agent;
mod bringup;
mod cni;
mod datapath;
mod mirror;
mod netpol;
mod overlay;
mod services;
mod util;
mod wait4;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use util::{progress, Ctx};

const SECTIONS: [&str; 8] = [
    "cni",
    "agent",
    "datapath",
    "antispoof",
    "bringup",
    "netpol",
    "services",
    "overlay",
];

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // The emulator starts each node's agent as `<current exe> agent …`, each pod's supervisor
    // as `<current exe> supervisor …` and the cluster's controller as `<current exe> controller …`:
    // hand them to the real `flatnet` beside this
    // binary, keeping the pid (the emulator tracks it) and an argv[0] that ends in "flatnet"
    // (it finds strays by that).
    if matches!(
        argv.get(1).map(String::as_str),
        Some("agent" | "supervisor" | "controller" | "dns")
    ) {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("flatnet")))
            .unwrap_or_else(|| PathBuf::from("flatnet"));
        let err = std::process::Command::new(&exe).args(&argv[1..]).exec();
        eprintln!("exec {}: {err}", exe.display());
        return ExitCode::FAILURE;
    }
    util::start_clock();
    flatnet::emulator::interrupt::install();
    let code = match run(&argv[1..]) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    util::cleanup_all();
    code
}

fn run(args: &[String]) -> Result<bool> {
    let mut tag = format!("fbench{}", std::process::id());
    let mut work = None;
    let mut reps = 5;
    let mut quick = false;
    let mut growth = None;
    let mut only: Vec<String> = SECTIONS.iter().map(|s| s.to_string()).collect();
    let mut out = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().context(format!("{a} needs a value"));
        match a.as_str() {
            "--tag" => tag = val()?,
            "--work" => work = Some(PathBuf::from(val()?)),
            "--reps" => reps = val()?.parse().context("--reps")?,
            "--quick" => quick = true,
            "--growth" => growth = Some(val()?.parse().context("--growth")?),
            "--only" => only = val()?.split(',').map(str::to_string).collect(),
            "--out" => out = Some(PathBuf::from(val()?)),
            "-h" | "--help" => {
                println!("flatnet-bench --tag TAG --work DIR [--reps N] [--quick] [--growth PODS] [--only cni,agent,datapath,antispoof,bringup,netpol] [--out DIR]");
                return Ok(true);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if !tag.starts_with("fbench")
        || !tag
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        bail!("--tag must be fbench followed by lowercase letters or digits");
    }
    if let Some(s) = only.iter().find(|s| !SECTIONS.contains(&s.as_str())) {
        bail!("unknown section {s}; sections: {}", SECTIONS.join(","));
    }
    let work = work.unwrap_or_else(|| PathBuf::from(format!("/dev/shm/{tag}")));
    std::fs::create_dir_all(&work)?;
    let bin = std::env::current_exe()?
        .parent()
        .context("the executable's directory")?
        .to_path_buf();
    let ctx = Ctx {
        tag,
        work,
        bin,
        reps,
        quick,
        growth,
    };
    progress(&format!(
        "flatnet-bench: tag {}, work dir {}, {} repetitions{}",
        ctx.tag,
        ctx.work.display(),
        ctx.reps,
        if ctx.quick { ", quick" } else { "" }
    ));
    let started = Instant::now();
    let mut md = String::new();
    let mut js = serde_json::Map::new();
    let mut all_ok = true;
    for section in SECTIONS.iter().filter(|s| only.iter().any(|o| o == *s)) {
        let t0 = Instant::now();
        let r = match *section {
            "cni" => cni::run(&ctx),
            "agent" => agent::run(&ctx),
            "datapath" => datapath::run(&ctx),
            "antispoof" => datapath::run_antispoof(&ctx),
            "netpol" => netpol::run(&ctx),
            "services" => services::run(&ctx),
            "overlay" => overlay::run(&ctx),
            _ => bringup::run(&ctx),
        };
        let took = t0.elapsed().as_secs_f64();
        let title = match *section {
            "cni" => "CNI path",
            "agent" => "Agent",
            "datapath" => "Datapath",
            "antispoof" => "Anti-spoofing rules",
            "netpol" => "NetworkPolicy",
            "services" => "Services and cluster DNS",
            "overlay" => "Overlay (VXLAN across segments)",
            _ => "Emulator bring-up",
        };
        match r {
            Ok((text, v)) => {
                md += &format!("## {title}\n\n{text}\n_Section time: {took:.0} s._\n\n");
                js.insert(section.to_string(), json!({"result": v, "seconds": took}));
            }
            Err(e) => {
                all_ok = false;
                progress(&format!("{section}: FAILED: {e:#}"));
                md += &format!("## {title}\n\nFAILED: {e:#}\n\n");
                js.insert(
                    section.to_string(),
                    json!({"error": format!("{e:#}"), "seconds": took}),
                );
            }
        }
        // Leftovers of a failed section must not disturb the next one.
        util::cleanup_all();
        if flatnet::emulator::interrupt::check().is_err() {
            break;
        }
    }
    let total = started.elapsed().as_secs_f64();
    md += &format!("_Whole run: {total:.0} s._\n");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    js.insert(
        "run".into(),
        json!({"seconds": total, "reps": ctx.reps, "quick": ctx.quick, "loadavg_end": load.trim()}),
    );
    if let Some(out) = out {
        std::fs::create_dir_all(&out)?;
        std::fs::write(out.join("results.md"), &md)?;
        std::fs::write(
            out.join("results.json"),
            serde_json::to_vec_pretty(&Value::Object(js))?,
        )?;
        progress(&format!("results in {}", out.display()));
    }
    println!("{md}");
    Ok(all_ok)
}
