//! kubectl's habits, part 2, through the built `flatnet` binary: logs as kubelet keeps them
//! (the previous instance, -f ending with the instance, the default container, --tail,
//! --timestamps, --since, --all-containers), `exec -it` through a real pty (window size and
//! its changes, Ctrl-C, the exit code) and on the container's PATH, `get clusters`, shell
//! completions, errors that list the valid choices, and `node remove` naming its pods.

mod common;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cluster::{eventually, TestCluster};
use common::{workspace_bin, TempDir};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn apply(c: &TestCluster, yaml: &str) {
    let out = c.apply_stdin(yaml, &[]);
    assert!(out.status.success(), "apply failed: {}", stderr(&out));
}

/// A container's status as the supervisor recorded it (status.json), or Null.
fn container_status(c: &TestCluster, pod: &str, container: &str) -> Value {
    let path = c
        .state_dir()
        .join(format!("pods/default/{pod}/status.json"));
    let Ok(bytes) = std::fs::read(path) else {
        return Value::Null;
    };
    let status: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    status["containers"]
        .as_array()
        .and_then(|cs| cs.iter().find(|x| x["name"] == container).cloned())
        .unwrap_or(Value::Null)
}

fn restarts(c: &TestCluster, pod: &str, container: &str) -> u64 {
    container_status(c, pod, container)["restartCount"]
        .as_u64()
        .unwrap_or(0)
}

fn running(c: &TestCluster, pod: &str, container: &str) -> bool {
    container_status(c, pod, container)["state"] == "running"
}

/// `flatnet … args` as a child, for commands that must end by themselves (logs -f).
fn spawn(c: &TestCluster, args: &[&str]) -> std::process::Child {
    Command::new(workspace_bin("flatnet"))
        .args(["--name", &c.name, "--state-dir"])
        .arg(c.state.path())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flatnet")
}

/// Waits for `child` for up to `timeout`; kills it and fails if it is still running.
fn finishes(mut child: std::process::Child, timeout: Duration, what: &str) -> Output {
    let deadline = Instant::now() + timeout;
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!("{what} did not return; it printed:\n{}", stdout(&out));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

fn pod(name: &str, policy: &str, annotations: &str, containers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n{annotations}spec:\n  \
         restartPolicy: {policy}\n  terminationGracePeriodSeconds: 1\n  containers:\n{containers}"
    )
}

fn sh(name: &str, script: &str) -> String {
    format!("  - name: {name}\n    command: [sh, -c, {script:?}]\n")
}

#[test]
fn logs_previous_instance_follow_and_line_selection() {
    let c = TestCluster::up("logs", &["--nodes", "1"]);

    // Each instance prints its own start time: the previous and the current instance differ,
    // and neither holds the other's output (they used to be concatenated).
    apply(
        &c,
        &pod(
            "crash",
            "Always",
            "",
            &sh(
                "main",
                "echo instance-$(date +%s%N); for i in 1 2 3 4 5; do echo line-$i; done; sleep 1; exit 3",
            ),
        ),
    );
    eventually("a restart of crash", WAIT, || {
        restarts(&c, "crash", "main") >= 1 && running(&c, "crash", "main")
    });
    let previous = c.ok(&["logs", "crash", "--previous"]);
    let current = c.ok(&["logs", "crash"]);
    let instances = |s: &str| s.lines().filter(|l| l.starts_with("instance-")).count();
    assert_eq!(instances(&previous), 1, "previous:\n{previous}");
    assert!(instances(&current) <= 1, "current:\n{current}");
    assert!(previous.contains("line-5\n"), "previous:\n{previous}");
    let first_line = |s: &str| s.lines().next().map(str::to_string);
    assert_ne!(first_line(&previous), first_line(&current));

    // -f follows the running instance and returns when it terminates, though the pod
    // restarts it.
    eventually("crash running again", WAIT, || running(&c, "crash", "main"));
    let out = finishes(
        spawn(&c, &["logs", "crash", "-f"]),
        Duration::from_secs(15),
        "logs -f of a restarting container",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("line-5\n"), "{}", stdout(&out));

    // --tail, --timestamps.
    let tail = c.ok(&["logs", "crash", "--previous", "--tail", "2"]);
    assert_eq!(tail, "line-4\nline-5\n");
    let stamped = c.ok(&["logs", "crash", "--previous", "--timestamps", "--tail", "1"]);
    let (ts, text) = stamped.split_once(' ').expect("a timestamp and the line");
    assert_eq!(text, "line-5\n");
    assert!(stamp_nanos(ts).is_some(), "not RFC 3339: {ts:?}");

    // A container that ends: -f prints what it wrote and returns.
    apply(
        &c,
        &pod(
            "short",
            "Never",
            "",
            &sh("main", "echo before; sleep 2; echo after"),
        ),
    );
    eventually("short running", WAIT, || running(&c, "short", "main"));
    let out = finishes(
        spawn(&c, &["logs", "short", "-f"]),
        Duration::from_secs(15),
        "logs -f of a container that exits",
    );
    assert_eq!(stdout(&out), "before\nafter\n");

    // --since: between two lines written two seconds apart.
    let stamped = c.ok(&["logs", "short", "--timestamps"]);
    let after = stamped
        .lines()
        .find(|l| l.ends_with(" after"))
        .and_then(|l| stamp_nanos(l.split(' ').next()?))
        .expect("a stamped 'after' line");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let since_ms = (now - after) / 1_000_000 + 1_500;
    assert_eq!(
        c.ok(&["logs", "short", "--since", &format!("{since_ms}ms")]),
        "after\n"
    );
    assert_eq!(c.ok(&["logs", "short", "--since", "1h"]), "before\nafter\n");
    let bad = c.flatnet(&["logs", "short", "--since", "yesterday"]);
    assert!(!bad.status.success());

    // No previous instance yet: kubectl's error.
    let out = c.flatnet(&["logs", "short", "--previous"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("previous terminated container \"main\" in pod \"short\" not found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn logs_default_container_and_all_containers() {
    let c = TestCluster::up("logsc", &["--nodes", "1"]);
    let two = sh("a", "echo from-a; sleep infinity") + &sh("b", "echo from-b; sleep infinity");
    apply(&c, &pod("plain", "Always", "", &two));
    apply(
        &c,
        &pod(
            "marked",
            "Always",
            "  annotations:\n    kubectl.kubernetes.io/default-container: b\n",
            &two,
        ),
    );
    for p in ["plain", "marked"] {
        eventually(&format!("{p} running"), WAIT, || {
            running(&c, p, "a") && running(&c, p, "b")
        });
    }
    eventually("both logs written", WAIT, || {
        c.ok(&["logs", "plain", "--all-containers"]) == "from-a\nfrom-b\n"
    });

    let out = c.flatnet(&["logs", "plain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from-a\n");
    assert!(
        stderr(&out).contains("Defaulted container \"a\" out of: a, b"),
        "{}",
        stderr(&out)
    );
    let out = c.flatnet(&["logs", "marked"]);
    assert_eq!(stdout(&out), "from-b\n");
    assert!(
        stderr(&out).contains("Defaulted container \"b\" out of: a, b"),
        "{}",
        stderr(&out)
    );
    // Named with -c: no note.
    let out = c.flatnet(&["logs", "marked", "-c", "a"]);
    assert_eq!(stdout(&out), "from-a\n");
    assert!(!stderr(&out).contains("Defaulted"), "{}", stderr(&out));
    // exec defaults the same way.
    let out = c.flatnet(&["exec", "marked", "--", "hostname"]);
    assert!(
        stderr(&out).contains("Defaulted container \"b\""),
        "{}",
        stderr(&out)
    );
    // An unknown container lists the ones there are.
    let out = c.flatnet(&["logs", "marked", "-c", "z"]);
    assert!(stderr(&out).contains("one of a, b"), "{}", stderr(&out));

    // -f of every container: returns once each has ended, with all they wrote.
    let ending = sh("a", "sleep 1; echo end-a") + &sh("b", "sleep 2; echo end-b");
    apply(&c, &pod("pair", "Never", "", &ending));
    eventually("pair running", WAIT, || {
        running(&c, "pair", "a") || running(&c, "pair", "b")
    });
    let out = finishes(
        spawn(&c, &["logs", "pair", "--all-containers", "-f"]),
        Duration::from_secs(15),
        "logs --all-containers -f",
    );
    let text = stdout(&out);
    assert!(
        text.contains("end-a\n") && text.contains("end-b\n"),
        "{text}"
    );
}

/// Nanoseconds since the epoch of an RFC 3339 time as the logs write it.
fn stamp_nanos(ts: &str) -> Option<u128> {
    let line = format!("{ts} stdout F x\n");
    flatnet::emulator::pods::logs::parse(line.as_bytes())
        .first()
        .map(|e| e.nanos)
}

/// A pty pair for the test: the master end, and the slave the command gets as its terminal.
fn pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    // SAFETY: openpty fills both fds and reads the winsize we pass.
    unsafe {
        let (mut m, mut s) = (0, 0);
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(
            libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws),
            0
        );
        (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s))
    }
}

fn resize(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the struct we pass; the kernel signals the foreground group.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(rc, 0);
}

/// `flatnet exec -it` run as a user runs it: in a session of its own whose controlling
/// terminal is a pty the test holds the other end of.
struct Terminal {
    master: OwnedFd,
    child: std::process::Child,
    seen: Arc<Mutex<String>>,
}

impl Terminal {
    fn exec(c: &TestCluster, args: &[&str]) -> Terminal {
        let (master, slave) = pty(33, 101);
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let mut cmd = Command::new(workspace_bin("flatnet"));
        cmd.args(["--name", &c.name, "--state-dir"])
            .arg(c.state.path())
            .args(args)
            .stdin(io(&slave))
            .stdout(io(&slave))
            .stderr(io(&slave));
        // SAFETY: setsid and ioctl are async-signal-safe; fd 0 is the slave by then.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn flatnet exec -it");
        drop(slave);
        let seen = Arc::new(Mutex::new(String::new()));
        let mut reader = std::fs::File::from(master.try_clone().expect("dup"));
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once every holder of the slave is gone.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Terminal {
            master,
            child,
            seen,
        }
    }

    fn wait_for(&self, text: &str) {
        eventually(&format!("{text:?} on the terminal"), WAIT, || {
            self.seen.lock().unwrap().contains(text)
        });
    }

    fn type_bytes(&self, bytes: &[u8]) {
        // SAFETY: writing our buffer to our pty master.
        let n = unsafe { libc::write(self.master.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n, bytes.len() as isize);
    }

    fn status(mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "exec -it did not end; the terminal shows:\n{}",
                    self.seen.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn script(dir: &TempDir, name: &str, body: &str) {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn exec_tty_and_the_containers_path() {
    let c = TestCluster::up("exec", &["--nodes", "1"]);
    // The container's PATH has a directory of its own; the caller's PATH another, with a
    // program of the same name.
    let theirs = TempDir::new("path-container");
    let ours = TempDir::new("path-caller");
    script(&theirs, "fnt-which", "echo container");
    script(&ours, "fnt-which", "echo caller");
    script(&theirs, "fnt-start", "echo started; exec sleep infinity");
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: box\nspec:\n  \
         terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    \
         command: [fnt-start]\n    env:\n    - name: PATH\n      value: {}:/usr/bin:/bin\n",
        theirs.path().display()
    );
    apply(&c, &yaml);
    // Started on its own PATH (flatnet's has no fnt-start).
    eventually("box running", WAIT, || running(&c, "box", "main"));
    assert_eq!(c.ok(&["logs", "box"]), "started\n");
    let caller_path = format!(
        "{}:{}",
        ours.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(workspace_bin("flatnet"))
        .args(["--name", &c.name, "--state-dir"])
        .arg(c.state.path())
        .args(["exec", "box", "--", "fnt-which"])
        .env("PATH", &caller_path)
        .output()
        .unwrap();
    assert_eq!(stdout(&out), "container\n", "{}", stderr(&out));
    // Not found on the container's PATH: 127, as a shell says.
    let out = c.flatnet(&["exec", "box", "--", "fnt-nowhere"]);
    assert_eq!(out.status.code(), Some(127));
    assert!(stderr(&out).contains("executable file not found in $PATH"));
    // The exit code comes back.
    assert_eq!(
        c.flatnet(&["exec", "box", "--", "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    // -it without a terminal to pass on: kubectl's warning, and it runs without one.
    let out = c.flatnet(&["exec", "-it", "box", "--", "sh", "-c", "tty || echo no-tty"]);
    assert!(stdout(&out).contains("no-tty"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("Unable to use a TTY"),
        "{}",
        stderr(&out)
    );

    // -it: the command's terminal has the caller's size, follows its changes, and Ctrl-C
    // typed there interrupts the command, whose exit code comes back.
    let t = Terminal::exec(
        &c,
        &[
            "exec",
            "-it",
            "box",
            "--",
            "sh",
            "-c",
            "tty >/dev/null && echo is-a-tty; stty size; \
             trap 'echo resized; stty size' WINCH; \
             trap 'echo interrupted; exit 42' INT; \
             echo ready; while :; do sleep 0.1; done",
        ],
    );
    t.wait_for("ready");
    t.wait_for("is-a-tty");
    t.wait_for("33 101");
    resize(&t.master, 40, 120);
    t.wait_for("40 120");
    t.type_bytes(b"\x03");
    t.wait_for("interrupted");
    assert_eq!(t.status().code(), Some(42));

    // -i: keystrokes reach the command through the pty.
    let t = Terminal::exec(
        &c,
        &[
            "exec",
            "-it",
            "box",
            "--",
            "sh",
            "-c",
            "echo ready; read x; echo got-$x",
        ],
    );
    t.wait_for("ready");
    t.type_bytes(b"hello\r");
    t.wait_for("got-hello");
    assert_eq!(t.status().code(), Some(0));
}

#[test]
fn clusters_completion_choices_and_node_remove() {
    let c = TestCluster::up("choices", &["--nodes", "2"]);

    // get clusters: the clusters of the state dir.
    assert_eq!(c.ok(&["get", "clusters"]), format!("{}\n", c.name));

    // An unknown cluster: the error names the ones there are.
    let out = Command::new(workspace_bin("flatnet"))
        .args(["--name", "nosuch", "--state-dir"])
        .arg(c.state.path())
        .args(["get", "pods"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("the clusters are: {}", c.name)),
        "{}",
        stderr(&out)
    );

    // An unknown node: the error names the nodes.
    let out = c.flatnet(&["run", "x", "--node", "node-9"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("its nodes are: node-1, node-2"),
        "{}",
        stderr(&out)
    );
    let out = c.flatnet(&["node", "remove", "node-9"]);
    assert!(
        stderr(&out).contains("its nodes are: node-1, node-2"),
        "{}",
        stderr(&out)
    );

    // node remove names the pods it deletes.
    c.ok(&["run", "p1", "--node", "node-2", "--sandbox-only"]);
    c.ok(&["run", "p2", "--node", "node-2", "--sandbox-only"]);
    c.ok(&["run", "p3", "--node", "node-1", "--sandbox-only"]);
    let out = c.ok(&["node", "remove", "node-2"]);
    assert!(out.contains("pod \"p1\" deleted"), "{out}");
    assert!(out.contains("pod \"p2\" deleted"), "{out}");
    assert!(!out.contains("p3"), "{out}");

    // Completion scripts load in their shells (bash here; zsh and fish when installed).
    let flatnet = workspace_bin("flatnet");
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "source <({} completion bash) && complete -p flatnet",
            flatnet.display()
        ))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("flatnet"), "{}", stdout(&out));
    let zsh = c.ok(&["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef flatnet"), "{zsh}");
    assert!(c
        .ok(&["completion", "fish"])
        .contains("complete -c flatnet"));
}
