//! The bf16 training gemm against the f32 one on a training step's shapes: seconds per
//! product and GFLOP/s, best of `ROUNDS`.
//!
//!   cargo run --release -p anneal-benches --bin bf16_gemm [ROUNDS]

use std::time::Instant;

use anneal::bench_kernels::matmul;

fn main() -> anneal::Result<()> {
    let rounds: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5);
    // (m, n, k, b transposed): small's linear layers (x W^T), their input gradient
    // (dy W) and weight gradient (dy^T x), and tiny's.
    let shapes = [
        ("small q/o x W^T", 1024, 512, 512, true),
        ("small up x W^T", 1024, 1376, 512, true),
        ("small down x W^T", 1024, 512, 1376, true),
        ("small dx = dy W", 1024, 512, 1376, false),
        ("small dW = dy^T x", 512, 1376, 1024, false),
        ("tiny fc x W^T", 1024, 1024, 256, true),
    ];
    println!("{:<20} {:>10} {:>10} {:>8} {:>8} {:>7}", "product", "f32 ms", "bf16 ms", "f32 GF", "bf16 GF", "ratio");
    for (name, m, n, k, bt) in shapes {
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5).collect();
        let mut out = vec![0f32; m * n];
        let mut time = |f: &dyn Fn(&mut [f32]) -> anneal::Result<()>| -> anneal::Result<f64> {
            let mut best = f64::MAX;
            for _ in 0..rounds {
                let t = Instant::now();
                f(&mut out)?;
                best = best.min(t.elapsed().as_secs_f64());
            }
            Ok(best)
        };
        let f = time(&|o| matmul((m, n, k), (&a, &b, bt), false, o))?;
        let h = time(&|o| matmul((m, n, k), (&a, &b, bt), true, o))?;
        let gf = |s: f64| 2.0 * (m * n * k) as f64 / s / 1e9;
        println!("{name:<20} {:>10.3} {:>10.3} {:>8.1} {:>8.1} {:>7.2}", f * 1e3, h * 1e3, gf(f), gf(h), f / h);
    }
    Ok(())
}
