//! The IPAM allocator alone, in process: the cost of one reserve + release (each under the
//! store's lock, as the plugin does it) with 100, 5,000 and 65,000 reservations already held.
//! It must stay flat: nothing on this path scans the store. Run for an IPv4 /16 and for a
//! dual-stack node (the /16 and an IPv6 /64): the /64's 2^64 addresses cost nothing either.
//!
//! Run: `cargo bench -p flatnet-core --bench allocator`. The store goes in $FLATNET_BENCH_DIR, default
//! /dev/shm: a tmpfs, as /run (the plugin's default dataDir) is on a normal host. On a disk
//! the figures are fsync's, not the allocator's.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use flatnet_core::cni::config::Attachment;
use flatnet_core::ipam::{FamilyPool, Store};

const SAMPLES: usize = 2_000;
const LOCK: Duration = Duration::from_secs(5);

fn owner(i: usize) -> Attachment {
    Attachment {
        container_id: format!("{i:064x}"),
        ifname: "eth0".into(),
    }
}

fn main() {
    for (name, cidrs) in [
        ("IPv4 /16", &["10.0.0.0/16"][..]),
        ("dual-stack /16 + /64", &["10.0.0.0/16", "fd00:10::/64"][..]),
    ] {
        let pools: Vec<FamilyPool> = cidrs
            .iter()
            .map(|c| FamilyPool::new(c.parse().unwrap()))
            .collect();
        run(name, &pools);
    }
}

fn run(name: &str, pool: &[FamilyPool]) {
    let base = std::env::var_os("FLATNET_BENCH_DIR").map_or("/dev/shm".into(), PathBuf::from);
    let dir = base.join(format!("flatnet-bench-allocator-{}", std::process::id()));
    let _cleanup = Cleanup(dir.clone());
    let store = Store::open(&dir).expect("open store");

    println!("allocator, {name}: reserve+release under the lock, {SAMPLES} samples per point");
    println!(
        "{:>14} {:>12} {:>12} {:>12}",
        "reservations", "p50 µs", "p90 µs", "p99 µs"
    );
    let mut held = 0;
    let mut p50s = Vec::new();
    for target in [100, 5_000, 65_000] {
        while held < target {
            store
                .lock(LOCK)
                .unwrap()
                .reserve(pool, &owner(held))
                .unwrap();
            held += 1;
        }
        let mut samples: Vec<Duration> = (0..SAMPLES)
            .map(|i| {
                let who = owner(1_000_000 + i);
                let t = Instant::now();
                store.lock(LOCK).unwrap().reserve(pool, &who).unwrap();
                store.lock(LOCK).unwrap().release(&who, &[]).unwrap();
                t.elapsed()
            })
            .collect();
        samples.sort();
        let q = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6;
        println!(
            "{target:>14} {:>12.1} {:>12.1} {:>12.1}",
            q(0.5),
            q(0.9),
            q(0.99)
        );
        p50s.push(q(0.5));
    }
    println!(
        "p50 at 65,000 / p50 at 100 = {:.2} (flat is about 1)",
        p50s[2] / p50s[0]
    );
}

struct Cleanup(PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
