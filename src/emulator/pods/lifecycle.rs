//! What the supervisor decides about each container, apart from the processes themselves:
//! when to start it, what its exit means for its status, when to restart it (kubelet's
//! back-off: the base delay, doubled per restart, at most five minutes) and how to stop it.
//!
//! The clock and the processes are traits, so that the decisions run in unit tests without
//! root, namespaces or waiting: the supervisor gives them the machine's clock and real
//! processes (forked into the pod's namespaces, signalled, reaped with waitpid).

use std::time::{Duration, Instant};

use crate::emulator::manifest::{ContainerSpec, PodSpec, RestartPolicy};
use crate::emulator::pod_status::{ContainerState, ContainerStatus, PodStatus};
use crate::emulator::state::now;

/// The longest back-off, as kubelet's.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The time, and waiting for it to pass.
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// The machine's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

/// The supervisor's children: containers started, signalled and reaped.
pub trait Processes {
    /// Starts a container; its PID, or why it could not start.
    fn spawn(&mut self, c: &ContainerSpec) -> Result<i32, String>;
    fn kill(&mut self, pid: i32, signal: i32);
    /// A child that has ended, with its wait status; None when none has.
    fn reap(&mut self) -> Option<(i32, i32)>;
}

/// One container's process, across restarts.
struct Slot {
    spec: ContainerSpec,
    pid: Option<i32>,
    /// When to (re)start it; None while it runs or once it is done for good.
    restart_at: Option<Instant>,
    /// When to SIGKILL it, after a SIGTERM for a failed probe.
    kill_at: Option<Instant>,
}

/// The containers of one pod and what is due for each.
pub struct Containers {
    slots: Vec<Slot>,
    policy: RestartPolicy,
    /// The first restart back-off; it doubles per restart.
    backoff: Duration,
}

impl Containers {
    /// Every container of `spec`, due to start at once.
    pub fn new(spec: &PodSpec, backoff: Duration, clock: &impl Clock) -> Containers {
        Containers {
            slots: spec
                .containers
                .iter()
                .map(|c| Slot {
                    spec: c.clone(),
                    pid: None,
                    restart_at: Some(clock.now()),
                    kill_at: None,
                })
                .collect(),
            policy: spec.restart_policy,
            backoff,
        }
    }

    /// The process of container `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<i32> {
        self.slots[i].pid
    }

    /// Kills container `i` as kubelet does for a failed liveness or startup probe: SIGTERM,
    /// SIGKILL after `grace`; its exit is then handled as any other (the restart policy).
    pub fn kill(
        &mut self,
        i: usize,
        procs: &mut impl Processes,
        clock: &impl Clock,
        grace: Duration,
    ) {
        let slot = &mut self.slots[i];
        let Some(pid) = slot.pid else { return };
        if grace.is_zero() {
            procs.kill(pid, libc::SIGKILL);
        } else {
            procs.kill(pid, libc::SIGTERM);
            slot.kill_at = Some(clock.now() + grace);
        }
    }

    /// Starts every container whose (re)start is due, and SIGKILLs those whose grace period
    /// after a probe's SIGTERM is over.
    pub fn start_due(
        &mut self,
        procs: &mut impl Processes,
        clock: &impl Clock,
        status: &mut PodStatus,
    ) {
        for slot in &mut self.slots {
            if let (Some(pid), Some(at)) = (slot.pid, slot.kill_at) {
                if at <= clock.now() {
                    procs.kill(pid, libc::SIGKILL);
                    slot.kill_at = None;
                }
            }
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.restart_at.is_some_and(|t| t <= clock.now()) {
                slot.restart_at = None;
                let st = &mut status.containers[i];
                start(slot, st, procs, clock, self.policy, self.backoff);
            }
        }
    }

    /// How long until the next (re)start is due; a second when none is.
    pub fn next_wake(&self, clock: &impl Clock) -> Duration {
        self.slots
            .iter()
            .flat_map(|s| [s.restart_at, s.kill_at.filter(|_| s.pid.is_some())])
            .flatten()
            .min()
            .map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(clock.now())
            })
    }

    /// Reaps every child that ended: containers are recorded and maybe restarted; other
    /// processes (orphans handed to the supervisor as subreaper, the infra process `infra`)
    /// are just reaped.
    pub fn reap(
        &mut self,
        procs: &mut impl Processes,
        clock: &impl Clock,
        status: &mut PodStatus,
        infra: i32,
    ) {
        while let Some((pid, ws)) = procs.reap() {
            if pid == infra {
                continue;
            }
            let Some(i) = self.slots.iter().position(|s| s.pid == Some(pid)) else {
                continue;
            };
            let (code, how) = exit_code(ws);
            let slot = &mut self.slots[i];
            slot.pid = None;
            slot.kill_at = None;
            let st = &mut status.containers[i];
            st.state = ContainerState::Terminated {
                exit_code: code,
                reason: if code == 0 { "Completed" } else { "Error" }.into(),
                message: how,
                finished_at: now(),
            };
            schedule_restart(slot, st, code, clock, self.policy, self.backoff);
        }
    }

    /// SIGTERM to every running container, SIGKILL to those still running after `grace`;
    /// every container reaped, none restarted.
    pub fn stop(
        &mut self,
        procs: &mut impl Processes,
        clock: &impl Clock,
        status: &mut PodStatus,
        grace: Duration,
    ) {
        self.policy = RestartPolicy::Never;
        for s in &mut self.slots {
            s.restart_at = None;
            // No grace period (`delete --force --grace-period=0`): SIGKILL only.
            if let Some(pid) = s.pid.filter(|_| !grace.is_zero()) {
                procs.kill(pid, libc::SIGTERM);
            }
        }
        let deadline = clock.now() + grace;
        while self.any_running() && clock.now() < deadline {
            clock.sleep(Duration::from_millis(10));
            self.reap(procs, clock, status, -1);
        }
        for s in &self.slots {
            if let Some(pid) = s.pid {
                procs.kill(pid, libc::SIGKILL);
            }
        }
        while self.any_running() {
            clock.sleep(Duration::from_millis(10));
            self.reap(procs, clock, status, -1);
        }
        status.compute_phase(self.policy);
    }

    fn any_running(&self) -> bool {
        self.slots.iter().any(|s| s.pid.is_some())
    }
}

/// Starts a container and records the outcome: Running, or Terminated with StartError (the
/// command does not exist, a mount failed, …) and the policy decides about a retry.
fn start(
    slot: &mut Slot,
    st: &mut ContainerStatus,
    procs: &mut impl Processes,
    clock: &impl Clock,
    policy: RestartPolicy,
    backoff: Duration,
) {
    if !matches!(st.state, ContainerState::Waiting { ref reason, .. } if reason == "ContainerCreating")
    {
        st.restart_count += 1;
    }
    match procs.spawn(&slot.spec) {
        Ok(pid) => {
            slot.pid = Some(pid);
            st.state = ContainerState::Running {
                pid: pid as u32,
                started_at: now(),
            };
        }
        Err(message) => {
            st.state = ContainerState::Terminated {
                exit_code: 128,
                reason: "StartError".into(),
                message,
                finished_at: now(),
            };
            schedule_restart(slot, st, 128, clock, policy, backoff);
        }
    }
}

/// After a container ended with `code`: a restart after the back-off if the policy says so.
/// The back-off is `backoff` times two to the number of restarts so far, at most
/// [`MAX_BACKOFF`]; it is never reset, however long the container ran.
fn schedule_restart(
    slot: &mut Slot,
    st: &mut ContainerStatus,
    code: i32,
    clock: &impl Clock,
    policy: RestartPolicy,
    backoff: Duration,
) {
    if !policy.restarts(code) {
        return;
    }
    let delay = backoff
        .saturating_mul(1u32 << st.restart_count.min(16))
        .min(MAX_BACKOFF);
    slot.restart_at = Some(clock.now() + delay);
    st.last_exit_code = Some(code);
    st.state = ContainerState::Waiting {
        reason: "CrashLoopBackOff".into(),
        message: format!(
            "back-off {}ms restarting failed container",
            delay.as_millis()
        ),
    };
}

/// The exit code as a shell reports it, and how it ended.
fn exit_code(ws: i32) -> (i32, String) {
    let how = if libc::WIFSIGNALED(ws) {
        format!("killed by signal {}", libc::WTERMSIG(ws))
    } else {
        String::new()
    };
    (super::shell_exit_code(ws), how)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::collections::{BTreeSet, VecDeque};

    use super::*;
    use crate::emulator::manifest;
    use crate::emulator::pod_status::Phase;

    const BASE: Duration = Duration::from_secs(10);

    /// A clock that only moves when told, or when slept on.
    struct FakeClock {
        start: Instant,
        elapsed: Cell<Duration>,
    }

    impl FakeClock {
        fn new() -> FakeClock {
            FakeClock {
                start: Instant::now(),
                elapsed: Cell::new(Duration::ZERO),
            }
        }

        fn advance(&self, d: Duration) {
            self.elapsed.set(self.elapsed.get() + d);
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.start + self.elapsed.get()
        }

        fn sleep(&self, d: Duration) {
            self.advance(d);
        }
    }

    /// Processes that exist only as PIDs: a spawn fails for the containers named in
    /// `unstartable`, a SIGTERM ends a process unless it is `stubborn`, a SIGKILL always does.
    #[derive(Default)]
    struct FakeProcesses {
        next_pid: i32,
        unstartable: BTreeSet<String>,
        stubborn: BTreeSet<i32>,
        spawned: Vec<(String, i32)>,
        killed: Vec<(i32, i32)>,
        ended: VecDeque<(i32, i32)>,
    }

    impl FakeProcesses {
        fn pid_of(&self, name: &str) -> i32 {
            self.spawned
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, p)| *p)
                .expect("spawned")
        }

        /// The last process of container `name` exits with `code`.
        fn exit(&mut self, name: &str, code: i32) {
            let pid = self.pid_of(name);
            self.ended.push_back((pid, code << 8));
        }

        fn starts(&self, name: &str) -> usize {
            self.spawned.iter().filter(|(n, _)| n == name).count()
        }
    }

    impl Processes for FakeProcesses {
        fn spawn(&mut self, c: &ContainerSpec) -> Result<i32, String> {
            if self.unstartable.contains(&c.name) {
                return Err("exec: executable file not found in $PATH".into());
            }
            self.next_pid += 1;
            let pid = 100 + self.next_pid;
            self.spawned.push((c.name.clone(), pid));
            Ok(pid)
        }

        fn kill(&mut self, pid: i32, signal: i32) {
            self.killed.push((pid, signal));
            if signal == libc::SIGKILL || !self.stubborn.contains(&pid) {
                self.ended.push_back((pid, signal));
            }
        }

        fn reap(&mut self) -> Option<(i32, i32)> {
            self.ended.pop_front()
        }
    }

    /// A pod, its status, its containers, and fakes to drive them.
    struct Pod {
        spec: PodSpec,
        status: PodStatus,
        containers: Containers,
        procs: FakeProcesses,
        clock: FakeClock,
    }

    impl Pod {
        fn new(policy: &str, names: &[&str]) -> Pod {
            let containers: String = names
                .iter()
                .map(|n| format!("  - {{name: {n}, command: [run-{n}]}}\n"))
                .collect();
            let yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  restartPolicy: {policy}\n  containers:\n{containers}"
            );
            let manifest::Object::Pod(m) = manifest::parse(&yaml).expect("manifest").remove(0)
            else {
                panic!("a pod")
            };
            let spec = m.spec;
            let clock = FakeClock::new();
            Pod {
                status: PodStatus::new(&spec),
                containers: Containers::new(&spec, BASE, &clock),
                procs: FakeProcesses::default(),
                clock,
                spec,
            }
        }

        /// One turn of the supervisor's loop: due starts, then the children that ended.
        fn turn(&mut self) {
            self.containers
                .start_due(&mut self.procs, &self.clock, &mut self.status);
            self.containers
                .reap(&mut self.procs, &self.clock, &mut self.status, 1);
            self.status.compute_phase(self.spec.restart_policy);
        }

        fn after(&mut self, d: Duration) {
            self.clock.advance(d);
            self.turn();
        }

        fn state(&self, i: usize) -> &ContainerState {
            &self.status.containers[i].state
        }

        fn restarts(&self, i: usize) -> u32 {
            self.status.containers[i].restart_count
        }

        /// The back-off the status announces for container `i`.
        fn announced(&self, i: usize) -> Option<Duration> {
            match self.state(i) {
                ContainerState::Waiting { reason, message } if reason == "CrashLoopBackOff" => {
                    let ms = message
                        .strip_prefix("back-off ")?
                        .strip_suffix("ms restarting failed container")?;
                    Some(Duration::from_millis(ms.parse().ok()?))
                }
                _ => None,
            }
        }

        /// Lets container `i` (named `name`) crash with `code` and returns the back-off it
        /// then waited: checked to the millisecond, by its not starting a moment earlier.
        fn crash_and_wait(&mut self, i: usize, name: &str, code: i32) -> Duration {
            self.procs.exit(name, code);
            self.turn();
            let announced = self.announced(i).expect("in back-off");
            assert_eq!(self.containers.next_wake(&self.clock), announced);
            let starts = self.procs.starts(name);
            self.after(announced - Duration::from_millis(1));
            assert_eq!(self.procs.starts(name), starts, "restarted early");
            self.after(Duration::from_millis(1));
            assert_eq!(self.procs.starts(name), starts + 1, "not restarted in time");
            assert!(matches!(self.state(i), ContainerState::Running { .. }));
            announced
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn containers_start_at_once_without_counting_a_restart() {
        let mut pod = Pod::new("Always", &["a", "b"]);
        assert_eq!(pod.status.phase, Phase::Pending);
        pod.turn();
        assert_eq!(pod.procs.spawned.len(), 2);
        assert!(matches!(
            pod.state(0),
            ContainerState::Running { pid: 101, .. }
        ));
        assert!(matches!(
            pod.state(1),
            ContainerState::Running { pid: 102, .. }
        ));
        assert_eq!((pod.restarts(0), pod.restarts(1)), (0, 0));
        assert_eq!(pod.status.phase, Phase::Running);
        // Nothing is due: the supervisor sleeps its default second.
        assert_eq!(pod.containers.next_wake(&pod.clock), secs(1));
    }

    #[test]
    fn the_first_restart_waits_the_base_back_off() {
        let mut pod = Pod::new("Always", &["a"]);
        pod.turn();
        assert_eq!(pod.crash_and_wait(0, "a", 1), BASE);
        assert_eq!(pod.restarts(0), 1);
        assert_eq!(pod.status.containers[0].last_exit_code, Some(1));
    }

    #[test]
    fn each_restart_doubles_the_back_off_up_to_five_minutes() {
        let mut pod = Pod::new("Always", &["a"]);
        pod.turn();
        let waited: Vec<Duration> = (0..9).map(|_| pod.crash_and_wait(0, "a", 1)).collect();
        assert_eq!(
            waited,
            [10, 20, 40, 80, 160, 300, 300, 300, 300].map(secs),
            "kubelet's 10 s doubling, capped at MAX_BACKOFF"
        );
        assert_eq!(pod.restarts(0), 9);
    }

    #[test]
    fn the_cap_holds_however_many_restarts() {
        let mut pod = Pod::new("Always", &["a"]);
        pod.turn();
        // Far past the point where the doubling would overflow without its clamp.
        for _ in 0..40 {
            pod.crash_and_wait(0, "a", 1);
        }
        assert_eq!(pod.crash_and_wait(0, "a", 1), MAX_BACKOFF);
        assert_eq!(pod.restarts(0), 41);
    }

    /// Kubelet forgets a container's back-off once it has run ten minutes; the supervisor
    /// does not (the restart count alone sets the delay). Pinned here so that a change to it
    /// is made on purpose.
    #[test]
    fn a_long_run_does_not_reset_the_back_off() {
        let mut pod = Pod::new("Always", &["a"]);
        pod.turn();
        assert_eq!(pod.crash_and_wait(0, "a", 1), secs(10));
        assert_eq!(pod.crash_and_wait(0, "a", 1), secs(20));
        pod.clock.advance(secs(3600));
        assert_eq!(pod.crash_and_wait(0, "a", 1), secs(40));
    }

    #[test]
    fn back_offs_are_per_container() {
        let mut pod = Pod::new("Always", &["a", "b"]);
        pod.turn();
        pod.crash_and_wait(0, "a", 1);
        pod.crash_and_wait(0, "a", 1);
        assert_eq!(pod.crash_and_wait(1, "b", 1), BASE);
        assert!(matches!(pod.state(0), ContainerState::Running { .. }));
    }

    #[test]
    fn always_restarts_a_container_that_succeeded() {
        let mut pod = Pod::new("Always", &["a"]);
        pod.turn();
        assert_eq!(pod.crash_and_wait(0, "a", 0), BASE);
        assert_eq!(pod.status.containers[0].last_exit_code, Some(0));
        assert_eq!(pod.status.phase, Phase::Running);
    }

    #[test]
    fn on_failure_restarts_failures_only() {
        let mut pod = Pod::new("OnFailure", &["a"]);
        pod.turn();
        assert_eq!(pod.crash_and_wait(0, "a", 2), BASE);
        pod.procs.exit("a", 0);
        pod.turn();
        assert!(matches!(
            pod.state(0),
            ContainerState::Terminated { exit_code: 0, reason, .. } if reason == "Completed"
        ));
        pod.after(MAX_BACKOFF * 2);
        assert_eq!(pod.procs.starts("a"), 2, "a success is not restarted");
        assert_eq!(pod.restarts(0), 1);
        assert_eq!(pod.status.phase, Phase::Succeeded);
    }

    #[test]
    fn never_restarts_and_the_exit_codes_decide_the_phase() {
        let mut pod = Pod::new("Never", &["ok", "bad"]);
        pod.turn();
        pod.procs.exit("ok", 0);
        pod.procs.exit("bad", 3);
        pod.turn();
        pod.after(MAX_BACKOFF * 2);
        assert_eq!(pod.procs.spawned.len(), 2, "nothing restarted");
        assert!(matches!(
            pod.state(0),
            ContainerState::Terminated { exit_code: 0, reason, .. } if reason == "Completed"
        ));
        assert!(matches!(
            pod.state(1),
            ContainerState::Terminated { exit_code: 3, reason, .. } if reason == "Error"
        ));
        assert_eq!(pod.status.containers[1].last_exit_code, None);
        assert_eq!((pod.restarts(0), pod.restarts(1)), (0, 0));
        assert_eq!(pod.status.phase, Phase::Failed);
        assert_eq!(pod.containers.next_wake(&pod.clock), secs(1));
    }

    #[test]
    fn a_signal_is_exit_code_128_plus_its_number() {
        let mut pod = Pod::new("Never", &["a"]);
        pod.turn();
        let pid = pod.procs.pid_of("a");
        pod.procs.ended.push_back((pid, libc::SIGKILL));
        pod.turn();
        match pod.state(0) {
            ContainerState::Terminated {
                exit_code,
                reason,
                message,
                ..
            } => {
                assert_eq!(*exit_code, 137);
                assert_eq!(reason, "Error");
                assert_eq!(message, "killed by signal 9");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_start_error_is_exit_code_128_and_follows_the_policy() {
        let mut never = Pod::new("Never", &["a"]);
        never.procs.unstartable.insert("a".into());
        never.turn();
        match never.state(0) {
            ContainerState::Terminated {
                exit_code,
                reason,
                message,
                ..
            } => {
                assert_eq!((*exit_code, reason.as_str()), (128, "StartError"));
                assert!(message.contains("not found"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(never.status.phase, Phase::Failed);

        // With a policy that restarts, it is retried after the back-off, counted as restarts.
        let mut always = Pod::new("OnFailure", &["a"]);
        always.procs.unstartable.insert("a".into());
        always.turn();
        assert_eq!(always.announced(0), Some(BASE));
        assert_eq!(always.status.containers[0].last_exit_code, Some(128));
        always.after(BASE);
        assert_eq!(always.restarts(0), 1);
        assert_eq!(always.announced(0), Some(BASE * 2));
        always.procs.unstartable.clear();
        always.after(BASE * 2);
        assert_eq!(always.restarts(0), 2);
        assert!(matches!(always.state(0), ContainerState::Running { .. }));
    }

    #[test]
    fn children_that_are_not_containers_are_reaped_and_ignored() {
        let mut pod = Pod::new("Always", &["a"]);
        pod.turn();
        // The infra process (PID 1 here) and an orphan handed to the subreaper.
        pod.procs.ended.extend([(1, libc::SIGKILL), (4242, 0)]);
        pod.turn();
        assert!(pod.procs.ended.is_empty());
        assert!(matches!(pod.state(0), ContainerState::Running { .. }));
        assert_eq!(pod.procs.starts("a"), 1);
    }

    #[test]
    fn stop_terms_then_kills_after_the_grace_period_and_restarts_nothing() {
        let mut pod = Pod::new("Always", &["polite", "stubborn", "crashed"]);
        pod.turn();
        let (polite, stubborn) = (pod.procs.pid_of("polite"), pod.procs.pid_of("stubborn"));
        pod.procs.stubborn.insert(stubborn);
        // One container is in its back-off when the pod stops: it is not started again.
        pod.procs.exit("crashed", 1);
        pod.turn();
        let before = pod.clock.now();
        pod.containers
            .stop(&mut pod.procs, &pod.clock, &mut pod.status, secs(1));
        assert_eq!(
            pod.procs.killed,
            [
                (polite, libc::SIGTERM),
                (stubborn, libc::SIGTERM),
                (stubborn, libc::SIGKILL)
            ]
        );
        assert!(pod.clock.now() - before >= secs(1), "the grace period");
        assert!(pod.clock.now() - before < secs(2));
        assert!(matches!(
            pod.state(0),
            ContainerState::Terminated { exit_code: 143, .. }
        ));
        assert!(matches!(
            pod.state(1),
            ContainerState::Terminated { exit_code: 137, .. }
        ));
        pod.clock.advance(MAX_BACKOFF);
        pod.containers
            .start_due(&mut pod.procs, &pod.clock, &mut pod.status);
        assert_eq!(pod.procs.spawned.len(), 3, "nothing started after stop");
    }

    #[test]
    fn stop_without_a_grace_period_kills_at_once() {
        let mut pod = Pod::new("Always", &["polite"]);
        pod.turn();
        let polite = pod.procs.pid_of("polite");
        pod.containers
            .stop(&mut pod.procs, &pod.clock, &mut pod.status, secs(0));
        assert_eq!(pod.procs.killed, [(polite, libc::SIGKILL)]);
    }
}
