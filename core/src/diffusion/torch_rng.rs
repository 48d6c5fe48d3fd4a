//! PyTorch's CPU random generator (`torch.Generator()`), for the pipeline's noise: the
//! same seed gives the same `torch.randn` values, so a seed gives the picture diffusers
//! gives on the CPU.
//!
//! What torch does, read in its source (aten/src/ATen/core/MT19937RNGEngine.h,
//! DistributionsHelper.h, TransformationHelper.h, native/cpu/DistributionTemplates.h;
//! torch 2.15) and checked against it:
//! - the engine is the 32-bit Mersenne Twister; `manual_seed(s)` runs the standard
//!   mt19937 initialisation from `s & 0xffff_ffff` (seeds 7 and 2^32 + 7 are the same) and
//!   clears the cached normal value;
//! - `torch.randn(shape)` in float32 with at least 16 elements draws one uniform
//!   `(u32 & (2^24 - 1)) / 2^24` per element, then turns each block of 16 into normals by
//!   Box-Muller, pairing elements `j` and `j + 8`; when the count is not a multiple of 16
//!   the last 16 elements are redone from 16 fresh uniforms;
//! - with fewer than 16 elements it draws each value in double precision, Box-Muller on
//!   two 53-bit uniforms (two engine outputs each), returning the cosine branch and caching
//!   the sine branch in the generator for the next such value (the cache survives
//!   draws of 16 or more, which don't touch it).
//!
//! The 16-element Box-Muller is where the last bit is at stake: on x86-64 with AVX2 (or
//! AVX-512, which runs the same kernel) torch computes it with the Cephes-derived float
//! `log`/`sincos` polynomials of `avx_mathfun.h`, compiled with fused multiply-adds.
//! [`cephes_ln`] and [`cephes_sincos`] evaluate the same polynomials in the same order,
//! with [`f32::mul_add`] wherever the compiled kernel fuses (found by comparing
//! against torch: every product whose only use is an addition). They agree with torch
//! on that kernel bit for bit (all of 4 x 2^20 values checked, and the fixture test
//! below). torch's portable kernel (no AVX2, e.g. ARM, or `ATEN_CPU_CAPABILITY=default`)
//! computes the same formula with the C library's `log`/`cos`/`sin` and a slightly
//! different rounding of the angle, and differs from these values in the last bits
//! (measured on x86-64 against `ATEN_CPU_CAPABILITY=default`: max abs diff 2.3e-6 over
//! 4 x 2^20 values, 38% of them not bit-equal).

/// Words of Mersenne Twister state.
const N: usize = 624;
/// The twist's middle offset.
const M: usize = 397;
const MATRIX_A: u32 = 0x9908_b0df;
const UPPER_MASK: u32 = 0x8000_0000;
const LOWER_MASK: u32 = 0x7fff_ffff;

/// `torch.Generator()` on the CPU: the mt19937 engine and the cached second value of
/// the double-precision Box-Muller.
#[derive(Clone)]
pub(crate) struct TorchGenerator {
    state: [u32; N],
    /// Index of the next state word to temper; `N` means the state must be regenerated.
    next: usize,
    cached_normal: Option<f64>,
}

impl TorchGenerator {
    /// `torch.Generator().manual_seed(seed)`.
    pub(crate) fn manual_seed(seed: u64) -> Self {
        let mut state = [0u32; N];
        state[0] = seed as u32; // torch keeps the low 32 bits
        for j in 1..N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, next: N, cached_normal: None }
    }

    /// The engine's next 32-bit output.
    pub(crate) fn next_u32(&mut self) -> u32 {
        if self.next == N {
            self.twist();
        }
        let mut y = self.state[self.next];
        self.next += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    /// Regenerates all `N` words in place (each word reads words already regenerated
    /// ahead of it, as the reference algorithm does).
    fn twist(&mut self) {
        let s = &mut self.state;
        for k in 0..N {
            let y = (s[k] & UPPER_MASK) | (s[(k + 1) % N] & LOWER_MASK);
            let mag = if y & 1 == 0 { 0 } else { MATRIX_A };
            s[k] = s[(k + M) % N] ^ (y >> 1) ^ mag;
        }
        self.next = 0;
    }

    /// torch's `random64()`: the first output is the high word.
    fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        (hi << 32) | self.next_u32() as u64
    }

    /// A float32 uniform in `[0, 1)` from the low 24 bits of one output.
    fn uniform_f32(&mut self) -> f32 {
        (self.next_u32() & 0x00ff_ffff) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// A float64 uniform in `[0, 1)` from the low 53 bits of `next_u64`.
    fn uniform_f64(&mut self) -> f64 {
        (self.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// One standard normal of the double-precision path (`at::normal_distribution<double>`).
    fn normal_f64(&mut self) -> f64 {
        if let Some(v) = self.cached_normal.take() {
            return v;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let radius = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(radius * theta.sin());
        radius * theta.cos()
    }

    /// Fills `out` as `torch.randn(out.len(), generator=self)` in float32 would (any
    /// contiguous shape with that many elements gives the same values in row-major order).
    pub(crate) fn fill_randn(&mut self, out: &mut [f32]) {
        let n = out.len();
        if n < 16 {
            for v in out.iter_mut() {
                *v = self.normal_f64() as f32;
            }
            return;
        }
        for v in out.iter_mut() {
            *v = self.uniform_f32();
        }
        for block in out.chunks_exact_mut(16) {
            box_muller_16(block);
        }
        if !n.is_multiple_of(16) {
            let tail = &mut out[n - 16..];
            for v in tail.iter_mut() {
                *v = self.uniform_f32();
            }
            box_muller_16(tail);
        }
    }
}

/// 16 uniforms in `[0, 1)` to 16 standard normals in place: element `j < 8` takes the
/// cosine branch of the pair (`1 - u[j]`, `u[j + 8]`) and element `j + 8` its sine branch.
fn box_muller_16(block: &mut [f32]) {
    debug_assert_eq!(block.len(), 16);
    // 2 pi computed in double and rounded to float, as torch writes it.
    const TWO_PI: f32 = (2.0 * std::f64::consts::PI) as f32;
    for j in 0..8 {
        let u1 = 1.0 - block[j]; // (0, 1]: a finite log
        let radius = (-2.0 * cephes_ln(u1)).sqrt();
        let (sin, cos) = cephes_sincos(TWO_PI * block[j + 8]);
        block[j] = radius * cos;
        block[j + 8] = radius * sin;
    }
}

/// Natural log for `x` in `(0, 1]` (normal floats): Cephes' `logf`. Writes
/// `x = m 2^e` with `m` in `[sqrt(1/2), sqrt(2))`, then `ln x = e ln 2 + ln m` with `ln(1 + f)`,
/// `f = m - 1`, a degree-9 polynomial; `ln 2` is split in two parts for precision.
fn cephes_ln(x: f32) -> f32 {
    debug_assert!(x.is_normal() && x > 0.0);
    // The C source's literals are doubles rounded to float: written here as the same
    // doubles, then cast.
    const SQRT_HALF: f32 = std::f64::consts::FRAC_1_SQRT_2 as f32;
    const P: [f32; 9] = [
        7.037_683_629_2e-2_f64 as f32,
        -1.151_461_031_0e-1_f64 as f32,
        1.167_699_874_0e-1_f64 as f32,
        -1.242_014_084_6e-1_f64 as f32,
        1.424_932_278_7e-1_f64 as f32,
        -1.666_805_766_5e-1_f64 as f32,
        2.000_071_476_5e-1_f64 as f32,
        -2.499_999_399_3e-1_f64 as f32,
        3.333_333_117_4e-1_f64 as f32,
    ];
    const LN2_LO: f32 = -2.121_944_40e-4_f64 as f32;
    const LN2_HI: f32 = 355.0 / 512.0; // 0.693359375: e * LN2_HI is exact
    let bits = x.to_bits();
    // The mantissa as a float in [0.5, 1) and the matching exponent.
    let mut e = ((bits >> 23) as i32 - 126) as f32;
    let m = f32::from_bits((bits & !0x7f80_0000) | 0x3f00_0000);
    let f = if m < SQRT_HALF {
        e -= 1.0;
        (m - 1.0) + m
    } else {
        m - 1.0
    };
    let z = f * f;
    let mut y = P[0];
    for &p in &P[1..] {
        y = y.mul_add(f, p);
    }
    let y = (y * f).mul_add(z, e * LN2_LO);
    let y = (-z).mul_add(0.5, y);
    e.mul_add(LN2_HI, f + y)
}

/// `(sin x, cos x)` for `x` in `[0, 2 pi)`: Cephes' `sinf`/`cosf`. Reduces `x` by a
/// multiple `j` of `pi / 4` (`j` even, `pi / 4` split in three parts), evaluates the sine
/// and cosine polynomials on the remainder, and picks and signs them by `j`'s octant.
fn cephes_sincos(x: f32) -> (f32, f32) {
    debug_assert!(x >= 0.0);
    const FOUR_OVER_PI: f32 = 1.273_239_544_735_16_f64 as f32;
    const PI4_A: f32 = -0.785_156_25;
    const PI4_B: f32 = -2.418_756_484_985_351_6e-4_f64 as f32;
    const PI4_C: f32 = -3.774_894_977_445_941e-8_f64 as f32;
    const SIN: [f32; 3] =
        [-1.951_529_589_1e-4_f64 as f32, 8.332_160_873_6e-3_f64 as f32, -1.666_665_461_1e-1_f64 as f32];
    const COS: [f32; 3] = [
        2.443_315_711_809_948e-5_f64 as f32,
        -1.388_731_625_493_765e-3_f64 as f32,
        4.166_664_568_298_827e-2_f64 as f32,
    ];
    let j = (((x * FOUR_OVER_PI) as i32) + 1) & !1;
    let y = j as f32;
    let r = y.mul_add(PI4_C, y.mul_add(PI4_B, y.mul_add(PI4_A, x)));
    let z = r * r;
    let c = COS[0].mul_add(z, COS[1]).mul_add(z, COS[2]);
    let c = (c * z).mul_add(z, -(z * 0.5)) + 1.0;
    let s = SIN[0].mul_add(z, SIN[1]).mul_add(z, SIN[2]);
    let s = (s * z).mul_add(r, r);
    let (mut sin, mut cos) = if j & 2 == 0 { (s, c) } else { (c, s) };
    if j & 4 != 0 {
        sin = -sin;
    }
    if (j - 2) & 4 == 0 {
        cos = -cos;
    }
    (sin, cos)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_engine_is_the_standard_mt19937() {
        // The C++ standard's check: the 10000th output of a default-seeded mt19937.
        let mut g = TorchGenerator::manual_seed(5489);
        let v = (0..10_000).map(|_| g.next_u32()).last().unwrap();
        assert_eq!(v, 4_123_659_995);
    }

    /// Against `tests/fixtures/sd-refs/torch_randn.safetensors`
    /// (tests/fixtures/make_torch_randn_refs.py): fresh generators of several seeds and
    /// sizes, and runs of consecutive draws from one generator.
    #[test]
    fn randn_matches_torch_for_every_size_and_sequence() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/sd-refs/torch_randn.safetensors");
        let refs = candle_core::safetensors::load(path, &candle_core::Device::Cpu).unwrap();
        let want = |name: &str| -> Vec<f32> { refs[name].to_vec1().unwrap() };
        let (mut worst, mut unequal, mut total) = (0f32, 0usize, 0usize);
        let mut compare = |name: &str, got: &[f32], want: &[f32]| {
            assert_eq!(got.len(), want.len(), "{name}");
            let mut d = 0f32;
            for (g, w) in got.iter().zip(want) {
                d = d.max((g - w).abs());
                unequal += usize::from(g.to_bits() != w.to_bits());
            }
            assert!(d <= 1e-6, "{name}: max abs diff {d}");
            worst = worst.max(d);
            total += got.len();
        };
        let seeds = [0u64, 1, 7, 42, (1 << 32) + 7, (1 << 63) + 12345];
        for seed in seeds {
            for n in [1, 2, 3, 15, 16, 17, 31, 32, 33, 64, 256, 384] {
                let name = format!("fresh.seed{seed}.n{n}");
                let mut got = vec![0f32; n];
                TorchGenerator::manual_seed(seed).fill_randn(&mut got);
                compare(&name, &got, &want(&name));
            }
            let mut g = TorchGenerator::manual_seed(seed);
            for k in 0.. {
                let name = format!("sequence.seed{seed}.{k}");
                if !refs.contains_key(&name) {
                    assert!(k > 10, "{name} missing");
                    break;
                }
                let w = want(&name);
                let mut got = vec![0f32; w.len()];
                g.fill_randn(&mut got);
                compare(&name, &got, &w);
            }
        }
        eprintln!("torch.randn: {total} values, max abs diff {worst:e}, {unequal} not bit-equal");
    }
}
