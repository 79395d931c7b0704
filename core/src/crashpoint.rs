//! Crash points: named steps of ADD and DEL where a test can kill the plugin, to prove that the
//! runtime's DEL that follows leaves nothing behind, whichever step the crash hit.
//!
//! `FLATNET_CNI_CRASH_AT=<point>` makes the plugin SIGKILL itself when it reaches that point, as
//! an OOM kill or a node reboot would; `<point>:panic` panics there instead (the panic hook's
//! test). A dual-stack call passes the per-family steps once per family: `<point>#2` arms the
//! second time the point is reached. It exists for the tests and the soak (`scripts/soak.sh`); a runtime never sets it.
//! Unit tests of the store crash in-process instead, by unwinding at the Nth point reached
//! (see [`tests_support`]), which leaves the files exactly as a kill would.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// The variable that arms a crash point.
pub const ENV: &str = "FLATNET_CNI_CRASH_AT";

/// Every point an ADD passes on a fresh store, in order.
pub const ADD_POINTS: &[&str] = &[
    "store:write-version",
    "store:write-index",
    "store:index",
    "store:write-owner",
    "store:claimed",
    "store:write-last",
    "add:reserved",
    "add:veth",
    "add:host-up",
    "add:pod-address",
    "add:pod-up",
    "add:pod-neighbour",
    "add:pod-gateway-route",
    "add:pod-default-route",
    "add:host-route",
];

/// Every point a DEL of a wired pod passes, in order.
pub const DEL_POINTS: &[&str] = &["del:retired", "store:address-freed", "del:released"];

/// Every point the sweeper a DEL forks passes (see `plugin::leftovers`), in order. The sweeper
/// inherits the variable, so arming one of these kills the sweeper, not the DEL.
pub const SWEEP_POINTS: &[&str] = &["sweep:started", "sweep:deleted"];

/// Every point a dual-stack ADD passes on a fresh store, in order, with `#2` for the second
/// family's pass of a per-family step.
pub const DUAL_ADD_POINTS: &[&str] = &[
    "store:write-version",
    "store:write-index",
    "store:index",
    "store:write-owner",
    "store:claimed",
    "store:write-owner#2",
    "store:claimed#2",
    "store:write-last",
    "store:write-last#2",
    "add:reserved",
    "add:veth",
    "add:host-up",
    "add:pod-address",
    "add:pod-address#2",
    "add:pod-up",
    "add:pod-neighbour",
    "add:pod-gateway-route",
    "add:pod-default-route",
    "add:pod-neighbour#2",
    "add:pod-gateway-route#2",
    "add:pod-default-route#2",
    "add:host-route",
    "add:host-route#2",
];

/// Every point a DEL of a wired dual-stack pod passes, in order.
pub const DUAL_DEL_POINTS: &[&str] = &[
    "del:retired",
    "store:address-freed",
    "store:address-freed#2",
    "del:released",
];

/// Marks one step. Does nothing unless the step is armed.
pub fn hit(point: &'static str) {
    debug_assert!(
        ADD_POINTS.contains(&point) || DEL_POINTS.contains(&point) || SWEEP_POINTS.contains(&point),
        "unlisted crash point {point}"
    );
    #[cfg(test)]
    tests_support::count(point);
    let Some(Armed {
        point: armed,
        nth,
        panic,
    }) = armed()
    else {
        return;
    };
    if armed != point {
        return;
    }
    // Only the armed point counts, and a plugin process reaches it from one thread at a time.
    static REACHED: AtomicU32 = AtomicU32::new(0);
    if REACHED.fetch_add(1, Ordering::Relaxed) + 1 != *nth {
        return;
    }
    if *panic {
        panic!("crash point {point} reached with {ENV} set to panic there");
    }
    // SAFETY: kill on our own pid; SIGKILL cannot be caught, so nothing after it runs.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    unreachable!("SIGKILL did not end the process");
}

/// The point `ENV` arms: `<point>[#<nth>][:panic]`.
struct Armed {
    point: String,
    nth: u32,
    panic: bool,
}

fn armed() -> &'static Option<Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED.get_or_init(|| {
        let v = std::env::var(ENV).ok()?;
        let (v, panic) = match v.strip_suffix(":panic") {
            Some(p) => (p, true),
            None => (v.as_str(), false),
        };
        let (point, nth) = match v.split_once('#') {
            Some((p, n)) => (p, n.parse().ok()?),
            None => (v, 1),
        };
        Some(Armed {
            point: point.to_string(),
            nth,
            panic,
        })
    })
}

/// In-process crashes for unit tests: unwinding out of the store at the Nth point reached
/// leaves its files as SIGKILL would (the store has no Drop that writes).
#[cfg(test)]
pub mod tests_support {
    use std::cell::Cell;

    thread_local! {
        static COUNTDOWN: Cell<Option<u32>> = const { Cell::new(None) };
    }

    /// The payload of an injected crash, told apart from a real panic.
    pub struct Crashed(pub &'static str);

    /// Arms a crash at the `n`th point (0-based) this thread reaches; `None` disarms.
    pub fn crash_after(n: Option<u32>) {
        COUNTDOWN.with(|c| c.set(n));
    }

    pub(super) fn count(point: &'static str) {
        COUNTDOWN.with(|c| match c.get() {
            Some(0) => {
                c.set(None);
                std::panic::resume_unwind(Box::new(Crashed(point)));
            }
            Some(n) => c.set(Some(n - 1)),
            None => {}
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dual_stack_point_is_a_listed_point() {
        for p in DUAL_ADD_POINTS.iter().chain(DUAL_DEL_POINTS) {
            let base = p.split('#').next().unwrap();
            assert!(
                ADD_POINTS.contains(&base) || DEL_POINTS.contains(&base),
                "{p}"
            );
        }
    }
}
