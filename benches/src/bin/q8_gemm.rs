//! The decoding path's q8_0 products (`GeneratorOptions::quantize: "q8_0"`) on the small
//! config's shapes, for 1, 4, 8, 16 and 32 input rows (decoding one sequence, or a batch):
//! milliseconds per product and GOP/s (two operations per multiply-add), best of `ROUNDS`.
//!
//!   cargo run --release -p anneal-benches --bin q8_gemm [ROUNDS]

use std::time::Instant;

use anneal::bench_kernels::{q8_matmul, q8_weight};

fn main() -> anneal::Result<()> {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(20);
    // (name, out, in): small's attention projections, MLP and LM head.
    let shapes = [
        ("small q/k/v/o", 512, 512),
        ("small gate/up", 1376, 512),
        ("small down", 512, 1376),
        ("small head", 32000, 512),
    ];
    println!("{:<16} {:>5} {:>10} {:>8}", "product", "rows", "ms", "GOP/s");
    for (name, out_f, in_f) in shapes {
        let w: Vec<f32> = (0..out_f * in_f).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let w = q8_weight(out_f, in_f, &w)?;
        for n in [1usize, 4, 8, 16, 32] {
            let x: Vec<f32> = (0..n * in_f).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let mut best = f64::MAX;
            for _ in 0..rounds {
                let t = Instant::now();
                std::hint::black_box(q8_matmul(&w, &x, n)?);
                best = best.min(t.elapsed().as_secs_f64());
            }
            let gops = 2.0 * (n * out_f * in_f) as f64 / best / 1e9;
            println!("{name:<16} {n:>5} {:>10.3} {gops:>8.1}", best * 1e3);
        }
    }
    Ok(())
}
