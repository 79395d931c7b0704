//! How many pods each ReplicaSet of a Deployment should have, one step at a time: the
//! Deployment controller's arithmetic (kube-controller-manager's `rolloutRolling` and
//! `rolloutRecreate`), apart from the objects, so that it is tested without a cluster.

/// What a ReplicaSet wants and has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// `spec.replicas`.
    pub replicas: u32,
    /// Its pods that exist.
    pub pods: u32,
    /// Its pods that are Ready (available: the emulator has no minReadySeconds).
    pub ready: u32,
}

/// One step of a rolling update towards `replicas` pods of `new`: first the new ReplicaSet
/// grows while the total stays within `replicas + max_surge`; once it cannot, old ones shrink
/// while at least `replicas - max_unavailable` pods stay ready (unready old pods go first,
/// as they cost no availability). Returns the new `spec.replicas` of `new` and of each of
/// `old` (oldest first), or None if nothing changes.
pub fn rolling(
    replicas: u32,
    max_surge: u32,
    max_unavailable: u32,
    new: Counts,
    old: &[Counts],
) -> Option<(u32, Vec<u32>)> {
    // Both zero would never make progress; Kubernetes then allows one unavailable.
    let max_unavailable = if max_surge == 0 && max_unavailable == 0 {
        1
    } else {
        max_unavailable
    };
    let mut old_replicas: Vec<u32> = old.iter().map(|o| o.replicas).collect();
    let total: u32 = new.replicas + old_replicas.iter().sum::<u32>();
    // The new ReplicaSet first.
    let new_replicas = if new.replicas > replicas {
        replicas
    } else {
        let room = (replicas + max_surge).saturating_sub(total);
        new.replicas + room.min(replicas - new.replicas)
    };
    if new_replicas != new.replicas {
        return Some((new_replicas, old_replicas));
    }
    // Then the old ones, as far as availability allows.
    let min_available = replicas.saturating_sub(max_unavailable);
    let new_unavailable = new.replicas.saturating_sub(new.ready);
    let mut budget = i64::from(total) - i64::from(min_available) - i64::from(new_unavailable);
    if budget <= 0 {
        return None;
    }
    let mut changed = false;
    for (r, o) in old_replicas.iter_mut().zip(old) {
        let unhealthy = r.saturating_sub(o.ready);
        let down = i64::from(unhealthy).min(budget);
        if down > 0 {
            *r -= down as u32;
            budget -= down;
            changed = true;
        }
    }
    let available: u32 = new.ready + old.iter().map(|o| o.ready).sum::<u32>();
    let mut down_total = available.saturating_sub(min_available);
    for r in &mut old_replicas {
        let down = (*r).min(down_total);
        if down > 0 {
            *r -= down;
            down_total -= down;
            changed = true;
        }
    }
    changed.then_some((new.replicas, old_replicas))
}

/// One step of a Recreate: every old pod goes first; only once none is left does the new
/// ReplicaSet grow to `replicas`.
pub fn recreate(replicas: u32, new: Counts, old: &[Counts]) -> Option<(u32, Vec<u32>)> {
    if old.iter().any(|o| o.replicas > 0) {
        return Some((new.replicas.min(replicas), vec![0; old.len()]));
    }
    if old.iter().any(|o| o.pods > 0) || new.replicas == replicas {
        return None;
    }
    Some((replicas, vec![0; old.len()]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(replicas: u32, pods: u32, ready: u32) -> Counts {
        Counts {
            replicas,
            pods,
            ready,
        }
    }

    #[test]
    fn a_new_deployment_scales_its_replicaset_up_at_once() {
        assert_eq!(rolling(3, 1, 0, c(0, 0, 0), &[]), Some((3, vec![])));
        assert_eq!(rolling(3, 1, 0, c(3, 3, 3), &[]), None);
    }

    #[test]
    fn scaling_changes_the_current_replicaset() {
        assert_eq!(rolling(5, 2, 1, c(3, 3, 3), &[]), Some((5, vec![])));
        assert_eq!(rolling(1, 1, 0, c(3, 3, 3), &[]), Some((1, vec![])));
    }

    /// 3 replicas, 25 %: maxSurge 1, maxUnavailable 0. Each step, as the controller would
    /// take it, keeps at least 3 ready pods and at most 4 pods.
    #[test]
    fn a_rolling_update_never_goes_below_the_minimum_available() {
        let (mut new, mut old) = (c(0, 0, 0), c(3, 3, 3));
        let mut steps = 0;
        loop {
            // The ReplicaSet controller's part: pods follow replicas; new pods turn ready
            // one step later.
            let ready_before = new.ready + old.ready;
            assert!(
                ready_before >= 3 || steps == 0,
                "step {steps}: {new:?} {old:?}"
            );
            assert!(new.pods + old.pods <= 4, "step {steps}: {new:?} {old:?}");
            match rolling(3, 1, 0, new, &[old]) {
                None if new.ready == 3 && old.pods == 0 => break,
                None => {}
                Some((n, o)) => {
                    new.replicas = n;
                    old.replicas = o[0];
                }
            }
            new.ready = new.pods.min(new.replicas);
            new.pods = new.replicas;
            old.pods = old.replicas;
            old.ready = old.ready.min(old.pods);
            steps += 1;
            assert!(steps < 20, "no progress: {new:?} {old:?}");
        }
        assert_eq!((new.replicas, old.replicas), (3, 0));
    }

    #[test]
    fn unready_old_pods_go_first_and_cost_no_availability() {
        // New at 1 (ready); old at 3 with one pod unready: budget 4-3-0 = 1.
        assert_eq!(
            rolling(3, 1, 0, c(1, 1, 1), &[c(3, 3, 2)]),
            Some((1, vec![2]))
        );
        // Both zero: one unavailable is allowed.
        assert_eq!(
            rolling(2, 0, 0, c(0, 0, 0), &[c(2, 2, 2)]),
            Some((0, vec![1]))
        );
    }

    #[test]
    fn recreate_waits_for_the_old_pods() {
        assert_eq!(recreate(2, c(0, 0, 0), &[c(2, 2, 2)]), Some((0, vec![0])));
        assert_eq!(recreate(2, c(0, 0, 0), &[c(0, 1, 0)]), None);
        assert_eq!(recreate(2, c(0, 0, 0), &[c(0, 0, 0)]), Some((2, vec![0])));
        assert_eq!(recreate(2, c(2, 2, 2), &[c(0, 0, 0)]), None);
    }
}
