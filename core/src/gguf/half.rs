//! IEEE half (f16) and bfloat16 conversions, rounding to nearest even as GGML does
//! (`GGML_FP32_TO_FP16`, `ggml_compute_fp32_to_bf16`).

/// f32 -> IEEE binary16 bits, round to nearest even; overflow gives infinity, NaN stays NaN.
pub fn f32_to_f16(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    let exp = ((b >> 23) & 0xff) as i32;
    let man = b & 0x7f_ffff;
    if exp == 0xff {
        let nan = if man != 0 { 0x200 | (man >> 13) as u16 } else { 0 };
        return sign | 0x7c00 | nan;
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // A subnormal half (or zero): the implicit bit joins the mantissa.
        if e < -10 {
            return sign;
        }
        let m = man | 0x80_0000;
        let shift = (14 - e) as u32;
        let half = 1u32 << (shift - 1);
        let kept = m >> shift;
        let rest = m & ((1 << shift) - 1);
        let r = if rest > half || (rest == half && kept & 1 == 1) { kept + 1 } else { kept };
        return sign | r as u16;
    }
    let kept = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    // A carry out of the mantissa moves into the exponent (up to infinity), as it should.
    let r = if rest > 0x1000 || (rest == 0x1000 && kept & 1 == 1) { kept + 1 } else { kept };
    sign | r as u16
}

/// IEEE binary16 bits -> f32 (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h & 0x8000) << 16;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    let bits = match exp {
        0 if man == 0 => sign,
        0 => {
            // Subnormal: shift the mantissa up until its leading bit is the implicit one.
            let mut e = 127 - 15 + 1;
            let mut m = man;
            while m & 0x400 == 0 {
                m <<= 1;
                e -= 1;
            }
            sign | (e << 23) | ((m & 0x3ff) << 13)
        }
        0x1f => sign | 0x7f80_0000 | (man << 13),
        _ => sign | ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

/// f32 -> bfloat16 bits, round to nearest even; a NaN stays a (quiet) NaN.
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 64) as u16;
    }
    ((b + (0x7fff + ((b >> 16) & 1))) >> 16) as u16
}

/// bfloat16 bits -> f32 (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// Every f16 bit pattern converts to f32 and back unchanged (NaNs stay NaN), and
    /// agrees with candle's `half` crate in both directions on many f32 values,
    /// ties and subnormals included.
    #[test]
    fn f16_and_bf16_agree_with_the_half_crate() {
        for h in 0..=u16::MAX {
            let x = f16_to_f32(h);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
            } else {
                assert_eq!(f32_to_f16(x), h, "{h:#x} -> {x}");
            }
            let y = bf16_to_f32(h);
            if !y.is_nan() {
                assert_eq!(f32_to_bf16(y), h);
            }
        }
        let mut xs: Vec<f32> = vec![0.0, -0.0, 1.0, 65504.0, 65520.0, 1e6, -1e-8, 2.98e-8, 5.96e-8, 6.1e-5];
        let mut s = 0x1234_5678u32;
        for _ in 0..20000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s);
            if x.is_finite() {
                xs.push(x);
                // Values in the f16 range, with low bits that hit ties.
                xs.push(((s % 200_000) as f32 - 100_000.0) * 1e-3 + f32::from_bits(s & 0x1fff) * 1e-40);
                xs.push(f16_to_f32((s & 0xffff) as u16) + f16_to_f32(1) / 2.0);
            }
        }
        // candle rounds through the `half` crate; its f32 of the rounded value is exact.
        let t = Tensor::new(xs.as_slice(), &Device::Cpu).unwrap();
        let round = |d: DType| -> Vec<f32> { t.to_dtype(d).unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap() };
        let (h, b) = (round(DType::F16), round(DType::BF16));
        for (i, &x) in xs.iter().enumerate() {
            assert_eq!(f16_to_f32(f32_to_f16(x)).to_bits(), h[i].to_bits(), "f16 of {x:e}");
            assert_eq!(bf16_to_f32(f32_to_bf16(x)).to_bits(), b[i].to_bits(), "bf16 of {x:e}");
        }
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7c00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
    }
}
