//! The LM head's two big products in a training step, through the `gemm` crate alone,
//! by blocks of rows (benches/RESULTS.md "Eleventh pass"): the logits as `xb W^T`
//! (row-major result: the crate transposes the problem and packs all of `W` per call),
//! as `W xb^T` (`W` read unpacked; the result `[v, rows]`, transposed by the caller),
//! and the hidden gradient `dz W`. h 512, v 32000, 1020 rows (the small config).
//!
//! Run: cargo run --release -p anneal-benches --bin head_gemm -- [rows per block ...]

use std::time::Instant;

/// `dst (m x n, strides cs, rs) = lhs (m x k) x rhs (k x n)` on both threads.
#[allow(clippy::too_many_arguments)]
fn mm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    (dcs, drs): (isize, isize),
    lhs: &[f32],
    (lcs, lrs): (isize, isize),
    rhs: &[f32],
    (rcs, rrs): (isize, isize),
) {
    assert!(dst.len() >= m * n && lhs.len() >= m * k && rhs.len() >= k * n);
    // SAFETY: every operand is a dense matrix of the stated shape inside its slice (the
    // strides below index rows and columns of those shapes only, checked above).
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dcs,
            drs,
            false,
            lhs.as_ptr(),
            lcs,
            lrs,
            rhs.as_ptr(),
            rcs,
            rrs,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(2),
        )
    }
}

fn main() {
    let (h, v, total) = (512usize, 32000usize, 1020usize);
    let blocks: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let blocks = if blocks.is_empty() { vec![1020, 256, 131, 64] } else { blocks };
    let w: Vec<f32> = (0..v * h).map(|i| (i % 97) as f32 * 1e-3).collect();
    let xs: Vec<f32> = (0..total * h).map(|i| (i % 89) as f32 * 1e-3).collect();
    let mut dh = vec![0f32; total * h];
    println!("| rows per block | xb W^T s | W xb^T s (unpacked W, no transpose) | dz W s |");
    println!("|---:|---:|---:|---:|");
    for block in blocks.into_iter().filter(|&b| b >= 1) {
        let mut z = vec![0f32; block * v];
        let mut t = [0f64; 3];
        const PASSES: usize = 3;
        for _ in 0..PASSES {
            for r0 in (0..total).step_by(block) {
                let rows = block.min(total - r0);
                let xb = &xs[r0 * h..];
                // z [rows, v] = xb W^T: W^T is column j = row j of W.
                let s = Instant::now();
                mm((rows, v, h), &mut z, (1, v as isize), xb, (1, h as isize), &w, (h as isize, 1));
                t[0] += s.elapsed().as_secs_f64();
                // zt [v, rows] = W xb^T.
                let s = Instant::now();
                mm((v, rows, h), &mut z, (1, rows as isize), &w, (1, h as isize), xb, (h as isize, 1));
                t[1] += s.elapsed().as_secs_f64();
                // dh [rows, h] = z W.
                let s = Instant::now();
                mm((rows, h, v), &mut dh[r0 * h..], (1, h as isize), &z, (1, v as isize), &w, (1, h as isize));
                t[2] += s.elapsed().as_secs_f64();
            }
        }
        let p = PASSES as f64;
        println!("| {block} | {:.3} | {:.3} | {:.3} |", t[0] / p, t[1] / p, t[2] / p);
    }
}
