//! Send + receive of one text message: Sotto's engine with its encrypted persistence,
//! against raw openmls in memory on the same ciphersuite. Criterion reports each; then an
//! interleaved run in the same process prints one JSON line per suite with the ratio.
#![allow(clippy::unwrap_used, reason = "benchmark: a failure aborts the run")]

use criterion::{Criterion, criterion_group};
use sotto_bench::{EnginePair, MemoryPair};
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
        let mut stored = EnginePair::new(code);
        g.bench_function("sotto_engine_sqlcipher", |b| {
            b.iter(|| stored.send_receive(black_box(TEXT)))
        });
        g.finish();
    }
}

/// Medians over `rounds` alternations of `base` and `engine`, each returning the time it
/// measured per message, in ns.
fn interleaved(
    rounds: usize,
    mut base: impl FnMut() -> f64,
    mut engine: impl FnMut() -> f64,
) -> (f64, f64) {
    let (mut b, mut e): (Vec<f64>, Vec<f64>) = (0..rounds).map(|_| (base(), engine())).unzip();
    b.sort_by(f64::total_cmp);
    e.sort_by(f64::total_cmp);
    (b[b.len() / 2], e[e.len() / 2])
}

/// Runs `f` `n` times and returns the time per run, in ns.
fn per_run(n: usize, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    (0..n).for_each(|_| f());
    t.elapsed().as_nanos() as f64 / n as f64
}

fn report(bench: &str, suite: &str, goal: f64, (b, e): (f64, f64)) {
    println!(
        "{}",
        serde_json::json!({
            "bench": bench,
            "suite": suite,
            "openmls_in_memory_ns": b.round(),
            "sotto_engine_sqlcipher_ns": e.round(),
            "ratio": (e / b * 100.0).round() / 100.0,
            "goal_ratio": goal,
        })
    );
}

/// Alternates baseline and engine in rounds so that machine noise hits both alike, and
/// prints one JSON line per measurement.
fn ratios() {
    for (name, code) in suites() {
        let suite = ciphersuite(code).unwrap();
        let mut memory = MemoryPair::new(suite);
        let mut stored = EnginePair::new(code);
        let per_message = interleaved(
            30,
            || per_run(50, || memory.send_receive(TEXT)),
            || per_run(50, || stored.send_receive(TEXT)),
        );
        report("send_receive", name, 2.0, per_message);

        // Receiving a queue of 100 messages: only the receive side is timed.
        let mut memory = MemoryPair::new(suite);
        let mut stored = EnginePair::new(code);
        let batch = interleaved(
            15,
            || {
                let wires: Vec<_> = (0..100).map(|_| memory.send(TEXT)).collect();
                per_run(1, || memory.receive(&wires)) / 100.0
            },
            || {
                let wires: Vec<_> = (0..100).map(|_| stored.send(TEXT)).collect();
                per_run(1, || stored.receive(&wires)) / 100.0
            },
        );
        report("receive_batch_of_100", name, 1.3, batch);

        // Where a lone message's time goes: the pages each side's commit writes.
        let (sender, receiver, secrets) = EnginePair::new(code).pages_written_per_message(20);
        println!(
            "{}",
            serde_json::json!({
                "bench": "pages_written_per_message",
                "suite": name,
                "sender": sender,
                "receiver": receiver,
                "message_secrets_bytes": secrets,
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
