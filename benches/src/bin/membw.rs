//! Memory read bandwidth of this machine: the roof for decoding, which streams every
//! weight once per token.
//!
//! Run:    cargo run --release -p anneal-benches --bin membw [-- <MiB, default 1024>]
//! Output: one JSON line per thread count (1 and 2): the best of 5 passes of a sum over
//!         a buffer far larger than the L3 cache (32 MiB here), in GB/s (1e9 bytes/s).

use std::time::Instant;

use serde_json::json;

/// The sum, with AVX2 when the CPU has it (as the decoding kernel does).
fn sum(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above); `sum_avx2` only indexes slices.
        #[allow(unsafe_code)]
        return unsafe { sum_avx2(xs) };
    }
    sum_portable(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_avx2(xs: &[f32]) -> f32 {
    sum_portable(xs)
}

/// Sum with 16 independent partial sums, so the loop is bound by memory, not by adds.
#[inline(always)]
fn sum_portable(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    for c in xs.chunks_exact(16) {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum()
}

fn main() {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let mib: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    let n = mib * 1024 * 1024 / 4;
    let data: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    for threads in [1usize, 2] {
        let mut best = f64::INFINITY;
        for _ in 0..5 {
            let t = Instant::now();
            let part = n.div_ceil(threads);
            let total: f32 = std::thread::scope(|s| {
                let handles: Vec<_> = data.chunks(part).map(|c| s.spawn(move || sum(c))).collect();
                handles.into_iter().map(|h| h.join().unwrap_or(0.0)).sum()
            });
            std::hint::black_box(total);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let gbps = (n * 4) as f64 / best / 1e9;
        println!(
            "{}",
            json!({"impl": "membw", "threads": threads, "mib": mib, "read_gb_per_s": (gbps * 10.0).round() / 10.0})
        );
    }
}
