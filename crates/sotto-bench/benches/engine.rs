//! Send + receive of one text message: Sotto's engine with its encrypted persistence,
//! against raw openmls in memory on the same ciphersuite. Criterion reports each; then an
//! interleaved run in the same process prints one JSON line per suite with the ratio.
#![allow(clippy::unwrap_used, reason = "benchmark: a failure aborts the run")]

use criterion::{Criterion, criterion_group};
use sotto_bench::{MemoryPair, StorePair};
use sotto_core::suite::{X25519, XWING, ciphersuite};
use std::hint::black_box;
use std::time::Instant;

const TEXT: &str = "a typical chat message of about sixty bytes, give or take";

fn suites() -> [(&'static str, u16); 2] {
    [("xwing", XWING), ("x25519", X25519)]
}

fn send_receive(c: &mut Criterion) {
    for (name, code) in suites() {
        let suite = ciphersuite(code).unwrap();
        let mut g = c.benchmark_group(format!("send_receive/{name}"));
        let mut memory = MemoryPair::new(suite);
        g.bench_function("openmls_in_memory", |b| {
            b.iter(|| memory.send_receive(black_box(TEXT)))
        });
        let mut stored = StorePair::new(suite);
        g.bench_function("sotto_engine_sqlcipher", |b| {
            b.iter(|| stored.send_receive(black_box(TEXT)))
        });
        g.finish();
    }
}

/// Alternates baseline and engine in rounds so that machine noise hits both alike.
fn ratios() {
    for (name, code) in suites() {
        let suite = ciphersuite(code).unwrap();
        let mut memory = MemoryPair::new(suite);
        let mut stored = StorePair::new(suite);
        let (mut base, mut engine) = (Vec::new(), Vec::new());
        for _ in 0..30 {
            let t = Instant::now();
            for _ in 0..50 {
                memory.send_receive(TEXT);
            }
            base.push(t.elapsed().as_nanos() as f64 / 50.0);
            let t = Instant::now();
            for _ in 0..50 {
                stored.send_receive(TEXT);
            }
            engine.push(t.elapsed().as_nanos() as f64 / 50.0);
        }
        base.sort_by(f64::total_cmp);
        engine.sort_by(f64::total_cmp);
        let (b, e) = (base[base.len() / 2], engine[engine.len() / 2]);
        println!(
            "{}",
            serde_json::json!({
                "bench": "send_receive",
                "suite": name,
                "openmls_in_memory_ns": b.round(),
                "sotto_engine_sqlcipher_ns": e.round(),
                "ratio": (e / b * 100.0).round() / 100.0,
                "goal_ratio": 1.5,
            })
        );
    }
}

criterion_group!(benches, send_receive);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    ratios();
}
