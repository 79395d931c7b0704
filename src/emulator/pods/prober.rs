//! What kubelet's prober decides, apart from running the probes: when each probe of each
//! container is due, what a run of results means (thresholds), and what follows: a startup
//! probe gates the other two until it succeeds; a failed liveness or startup probe gets the
//! container killed (then its restart policy decides); readiness sets the container's Ready.
//!
//! Like [`super::lifecycle`], it takes a clock, so that the decisions run in unit tests without
//! waiting; the supervisor runs the probes (see [`super::probe`]) and reports the results.

use std::time::{Duration, Instant};

use crate::emulator::manifest::{ContainerSpec, Probe};

/// Which of a container's probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Startup,
    Liveness,
    Readiness,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Startup => "startup",
            Kind::Liveness => "liveness",
            Kind::Readiness => "readiness",
        }
    }
}

/// One probe's counters.
struct State {
    probe: Probe,
    next_at: Instant,
    successes: u32,
    failures: u32,
}

impl State {
    fn new(probe: &Probe, started: Instant) -> State {
        State {
            probe: probe.clone(),
            next_at: started + Duration::from_secs(probe.initial_delay_seconds.into()),
            successes: 0,
            failures: 0,
        }
    }

    /// Counts a result; Some(true) once the success threshold is reached, Some(false) once
    /// the failure threshold is.
    fn record(&mut self, ok: bool, now: Instant) -> Option<bool> {
        self.next_at = now + Duration::from_secs(self.probe.period_seconds.into());
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= self.probe.success_threshold).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= self.probe.failure_threshold).then_some(false)
        }
    }
}

/// The probes of one container, for the life of one of its processes.
struct Container {
    spec: ContainerSpec,
    /// None while the container is not running.
    running: Option<Running>,
}

struct Running {
    startup: Option<State>,
    liveness: Option<State>,
    readiness: Option<State>,
    /// The startup probe succeeded, or there is none.
    started: bool,
    ready: bool,
}

/// What the supervisor must do after a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Kill the container (then its restart policy decides), with this grace period if the
    /// probe sets its own.
    Kill { grace: Option<u64> },
}

/// The probes of a pod's containers.
pub struct Prober {
    containers: Vec<Container>,
}

impl Prober {
    pub fn new(containers: &[ContainerSpec]) -> Prober {
        Prober {
            containers: containers
                .iter()
                .map(|c| Container {
                    spec: c.clone(),
                    running: None,
                })
                .collect(),
        }
    }

    /// Container `i` (re)started at `now`: its probes start over, after their initial delays.
    pub fn started(&mut self, i: usize, now: Instant) {
        let c = &mut self.containers[i];
        let s = |p: &Option<Probe>| p.as_ref().map(|p| State::new(p, now));
        let startup = s(&c.spec.startup_probe);
        c.running = Some(Running {
            started: startup.is_none(),
            ready: c.spec.readiness_probe.is_none() && startup.is_none(),
            startup,
            liveness: s(&c.spec.liveness_probe),
            readiness: s(&c.spec.readiness_probe),
        });
    }

    /// Container `i` ended: no probes until it starts again.
    pub fn stopped(&mut self, i: usize) {
        self.containers[i].running = None;
    }

    /// Whether container `i` runs and its startup probe (if any) has succeeded.
    pub fn is_started(&self, i: usize) -> bool {
        self.containers[i]
            .running
            .as_ref()
            .is_some_and(|r| r.started)
    }

    pub fn is_ready(&self, i: usize) -> bool {
        self.containers[i].running.as_ref().is_some_and(|r| r.ready)
    }

    /// The probes due at `now`: the startup probe until it succeeds, then liveness and
    /// readiness.
    pub fn due(&self, now: Instant) -> Vec<(usize, Kind, Probe)> {
        let mut out = Vec::new();
        for (i, c) in self.containers.iter().enumerate() {
            let Some(r) = &c.running else { continue };
            let mut take = |kind: Kind, s: &Option<State>| {
                if let Some(s) = s.as_ref().filter(|s| s.next_at <= now) {
                    out.push((i, kind, s.probe.clone()));
                }
            };
            if !r.started {
                take(Kind::Startup, &r.startup);
                continue;
            }
            take(Kind::Liveness, &r.liveness);
            take(Kind::Readiness, &r.readiness);
        }
        out
    }

    /// How long until the next probe is due, if any is.
    pub fn next_wake(&self, now: Instant) -> Option<Duration> {
        self.containers
            .iter()
            .filter_map(|c| c.running.as_ref())
            .flat_map(|r| {
                if r.started {
                    [None, r.liveness.as_ref(), r.readiness.as_ref()]
                } else {
                    [r.startup.as_ref(), None, None]
                }
            })
            .flatten()
            .map(|s| s.next_at.saturating_duration_since(now))
            .min()
    }

    /// Records the result of probe `kind` of container `i`.
    pub fn record(&mut self, i: usize, kind: Kind, ok: bool, now: Instant) -> Option<Verdict> {
        let r = self.containers[i].running.as_mut()?;
        match kind {
            Kind::Startup => match r.startup.as_mut()?.record(ok, now)? {
                true => {
                    r.started = true;
                    r.ready = r.readiness.is_none();
                    // Liveness and readiness start counting from here, after their delays.
                    for s in [r.liveness.as_mut(), r.readiness.as_mut()]
                        .into_iter()
                        .flatten()
                    {
                        s.next_at = now + Duration::from_secs(s.probe.initial_delay_seconds.into());
                    }
                    None
                }
                false => Some(kill(r.startup.as_ref()?)),
            },
            Kind::Liveness => match r.liveness.as_mut()?.record(ok, now)? {
                true => None,
                false => Some(kill(r.liveness.as_ref()?)),
            },
            Kind::Readiness => {
                if let Some(ready) = r.readiness.as_mut()?.record(ok, now) {
                    r.ready = ready;
                }
                None
            }
        }
    }
}

fn kill(s: &State) -> Verdict {
    Verdict::Kill {
        grace: s.probe.termination_grace_period_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::manifest::ProbeAction;

    fn probe(period: u32, delay: u32, success: u32, failure: u32) -> Probe {
        Probe {
            action: ProbeAction::TcpSocket {
                host: None,
                port: 80,
            },
            initial_delay_seconds: delay,
            period_seconds: period,
            timeout_seconds: 1,
            success_threshold: success,
            failure_threshold: failure,
            termination_grace_period_seconds: None,
        }
    }

    fn container(
        startup: Option<Probe>,
        liveness: Option<Probe>,
        readiness: Option<Probe>,
    ) -> ContainerSpec {
        ContainerSpec {
            name: "c".into(),
            image: String::new(),
            argv: vec!["x".into()],
            env: vec![],
            working_dir: None,
            ports: vec![],
            mounts: vec![],
            resources: None,
            liveness_probe: liveness,
            readiness_probe: readiness,
            startup_probe: startup,
        }
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_container_without_probes_is_ready_once_running() {
        let t = Instant::now();
        let mut p = Prober::new(&[container(None, None, None)]);
        assert!(!p.is_ready(0));
        p.started(0, t);
        assert!(p.is_ready(0) && p.is_started(0));
        assert!(p.due(t).is_empty());
        assert_eq!(p.next_wake(t), None);
        p.stopped(0);
        assert!(!p.is_ready(0));
    }

    #[test]
    fn readiness_follows_its_thresholds() {
        let t = Instant::now();
        let mut p = Prober::new(&[container(None, None, Some(probe(1, 2, 2, 3)))]);
        p.started(0, t);
        assert!(!p.is_ready(0), "not ready before the first success");
        assert!(p.due(t).is_empty(), "initialDelaySeconds");
        assert_eq!(p.next_wake(t), Some(2 * S));
        assert_eq!(p.due(t + 2 * S).len(), 1);
        assert_eq!(p.record(0, Kind::Readiness, true, t + 2 * S), None);
        assert!(!p.is_ready(0), "successThreshold 2");
        p.record(0, Kind::Readiness, true, t + 3 * S);
        assert!(p.is_ready(0));
        p.record(0, Kind::Readiness, false, t + 4 * S);
        p.record(0, Kind::Readiness, false, t + 5 * S);
        assert!(p.is_ready(0), "failureThreshold 3");
        p.record(0, Kind::Readiness, false, t + 6 * S);
        assert!(!p.is_ready(0));
    }

    #[test]
    fn liveness_failures_kill_and_successes_reset_the_count() {
        let t = Instant::now();
        let mut p = Prober::new(&[container(None, Some(probe(1, 0, 1, 2)), None)]);
        p.started(0, t);
        assert_eq!(p.record(0, Kind::Liveness, false, t), None);
        assert_eq!(p.record(0, Kind::Liveness, true, t + S), None);
        assert_eq!(p.record(0, Kind::Liveness, false, t + 2 * S), None);
        assert_eq!(
            p.record(0, Kind::Liveness, false, t + 3 * S),
            Some(Verdict::Kill { grace: None })
        );
    }

    #[test]
    fn startup_gates_liveness_and_readiness() {
        let t = Instant::now();
        let mut p = Prober::new(&[container(
            Some(probe(1, 0, 1, 5)),
            Some(probe(1, 0, 1, 1)),
            Some(probe(1, 0, 1, 1)),
        )]);
        p.started(0, t);
        let kinds = |p: &Prober, at| p.due(at).into_iter().map(|d| d.1).collect::<Vec<_>>();
        assert_eq!(kinds(&p, t), [Kind::Startup]);
        p.record(0, Kind::Startup, false, t);
        assert_eq!(kinds(&p, t + S), [Kind::Startup], "still only startup");
        assert!(!p.is_started(0) && !p.is_ready(0));
        p.record(0, Kind::Startup, true, t + S);
        assert!(p.is_started(0) && !p.is_ready(0));
        assert_eq!(kinds(&p, t + S), [Kind::Liveness, Kind::Readiness]);
        p.record(0, Kind::Readiness, true, t + S);
        assert!(p.is_ready(0));
    }

    #[test]
    fn a_startup_probe_that_never_succeeds_kills() {
        let t = Instant::now();
        let mut p = Prober::new(&[container(Some(probe(1, 0, 1, 2)), None, None)]);
        p.started(0, t);
        assert_eq!(p.record(0, Kind::Startup, false, t), None);
        assert!(p.record(0, Kind::Startup, false, t + S).is_some());
        // A restart starts over.
        p.started(0, t + 10 * S);
        assert!(!p.is_started(0));
        assert_eq!(p.record(0, Kind::Startup, false, t + 10 * S), None);
    }
}
