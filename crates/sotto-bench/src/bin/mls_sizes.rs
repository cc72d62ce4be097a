//! Prints, as JSON lines, the wire sizes of a KeyPackage and of the Welcome and commit that
//! create a group of N members in one add, for N in 10, 100 and 1,000, on both ciphersuites.
//! Usage: `cargo run --release -p sotto-bench --bin mls_sizes [N...]`.
#![allow(
    clippy::unwrap_used,
    reason = "benchmark driver: a failure aborts the run"
)]

use openmls_libcrux_crypto::Provider;
use sotto_bench::device;
use sotto_core::group;
use sotto_core::suite::{X25519, XWING, ciphersuite};
use std::time::Instant;

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 100, 1000]
    } else {
        sizes
    };
    for (name, code) in [("xwing", XWING), ("x25519", X25519)] {
        let suite = ciphersuite(code).unwrap();
        let creator = Provider::new().unwrap();
        let alice = device("alice");
        let one = group::new_key_packages(&creator, &alice, suite, 1, false).unwrap();
        println!(
            "{}",
            serde_json::json!({ "suite": name, "key_package_bytes": one.one_time[0].len() })
        );
        for &n in &sizes {
            let members = Provider::new().unwrap();
            let kps: Vec<_> = (1..n)
                .map(|i| {
                    let d = device(&format!("user{i}"));
                    let kp = group::new_key_packages(&members, &d, suite, 1, false).unwrap();
                    group::verify_key_package(
                        &creator,
                        &kp.one_time[0],
                        d.addr(),
                        &d.public(),
                        suite,
                    )
                    .unwrap()
                })
                .collect();
            let mut g = group::create(&creator, &alice, suite).unwrap();
            let t = Instant::now();
            let out = group::add(&creator, &alice, &mut g, &kps, 0).unwrap();
            let add_ms = t.elapsed().as_secs_f64() * 1000.0;
            group::merge_pending(&creator, &mut g).unwrap();
            println!(
                "{}",
                serde_json::json!({
                    "suite": name,
                    "group_size": n,
                    "add_commit_bytes": out.commit.len(),
                    "welcome_bytes": out.welcome.map_or(0, |w| w.len()),
                    "add_ms": (add_ms * 10.0).round() / 10.0,
                })
            );
        }
    }
}
