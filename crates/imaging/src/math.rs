//! Small deterministic numeric helpers shared by the renderer.
//!
//! Everything here uses only IEEE-754 basic operations (`+ - * /`, `sqrt`, `floor`), which are
//! exactly rounded on every platform, so the renderer's output does not depend on the platform's
//! `libm` (whose `sin`/`exp` may differ in the last bit between systems).

use std::f32::consts::{FRAC_PI_2, PI, TAU};

/// An RGB colour with components nominally in `0.0..=1.0`.
pub(crate) type Rgb = [f32; 3];

/// Deterministic sine: range reduction to `[-π/2, π/2]` followed by a degree-9 Taylor polynomial
/// (absolute error below 4e-6, plenty for procedural shapes).
pub(crate) fn sin(x: f32) -> f32 {
    let k = ((x + PI) / TAU).floor();
    let mut r = x + PI - k * TAU - PI;
    if r > FRAC_PI_2 {
        r = PI - r;
    } else if r < -FRAC_PI_2 {
        r = -PI - r;
    }
    let r2 = r * r;
    r * (1.0 + r2 * (-1.0 / 6.0 + r2 * (1.0 / 120.0 + r2 * (-1.0 / 5040.0 + r2 / 362_880.0))))
}

/// Deterministic cosine, `sin(x + π/2)`.
pub(crate) fn cos(x: f32) -> f32 {
    sin(x + FRAC_PI_2)
}

/// Hermite smooth step of `x` between `e0` and `e1` (0 below `e0`, 1 above `e1`).
pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Linear interpolation between two colours.
pub(crate) fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t, a[2] + (b[2] - a[2]) * t]
}

/// HSV to RGB; `h` in degrees (any value, wrapped), `s` and `v` in `0..=1`.
pub(crate) fn hsv(hue: f32, sat: f32, val: f32) -> Rgb {
    let pos = (hue / 60.0).rem_euclid(6.0);
    let sector = pos.floor();
    let frac = pos - sector;
    let low = val * (1.0 - sat);
    let falling = val * (1.0 - sat * frac);
    let rising = val * (1.0 - sat * (1.0 - frac));
    // `sector` is an integral value in 0.0..6.0 (rem_euclid may round up to exactly 6.0).
    if sector < 1.0 {
        [val, rising, low]
    } else if sector < 2.0 {
        [falling, val, low]
    } else if sector < 3.0 {
        [low, val, rising]
    } else if sector < 4.0 {
        [low, falling, val]
    } else if sector < 5.0 {
        [rising, low, val]
    } else {
        [val, low, falling]
    }
}

/// Rec. 601 luma of a colour.
pub(crate) fn luma(c: Rgb) -> f32 {
    0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]
}

/// `u32` to `f32`; every value used here (pixel coordinates, counts) is far below 2^24, where
/// the conversion is exact.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn f32_from(x: u32) -> f32 {
    x as f32
}

/// Quantise a nominal `0..=1` value to a byte, clamping out-of-range values.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub(crate) fn to_u8(v: f32) -> u8 {
    // After the clamp the value is in 0.5..=255.5, so the truncating cast is a rounding.
    (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8
}

/// `SplitMix64` finaliser: a fast, well-mixing 64-bit hash.
pub(crate) fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a grid cell given by integral float coordinates (used for sparse stars and petals).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub(crate) fn cell_hash(key: u64, gx: f32, gy: f32) -> u64 {
    // Float-to-int casts saturate, so any input maps to some cell; only the bit pattern matters.
    let gx = gx as i32 as u32;
    let gy = gy as i32 as u32;
    mix64(key ^ (u64::from(gx) << 32) ^ u64::from(gy))
}

/// Top 24 bits of a hash as a uniform float in `0.0..1.0`.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn unit(bits: u64) -> f32 {
    // 24 bits fit the f32 mantissa exactly.
    ((bits >> 40) as f32) * (1.0 / 16_777_216.0)
}

/// `SplitMix64` generator used to draw scene parameters in a fixed order.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.state)
    }

    /// Uniform float in `0.0..1.0`.
    pub(crate) fn next_f32(&mut self) -> f32 {
        unit(self.next_u64())
    }

    /// Uniform float in `lo..hi`.
    pub(crate) fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.next_f32()
    }

    /// Uniform integer in `lo..=hi`.
    pub(crate) fn int(&mut self, lo: u32, hi: u32) -> u32 {
        let span = u64::from(hi - lo) + 1;
        // The remainder is below `span`, which fits in u32.
        lo + u32::try_from(self.next_u64() % span).unwrap_or(0)
    }

    /// `true` with probability `p`.
    pub(crate) fn chance(&mut self, p: f32) -> bool {
        self.next_f32() < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_matches_std_closely() {
        let mut x = -40.0_f32;
        while x < 40.0 {
            assert!((sin(x) - x.sin()).abs() < 1e-4, "sin({x})");
            assert!((cos(x) - x.cos()).abs() < 1e-4, "cos({x})");
            x += 0.013;
        }
    }

    fn close(a: Rgb, b: Rgb) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
    }

    #[test]
    fn hsv_primaries() {
        assert!(close(hsv(0.0, 1.0, 1.0), [1.0, 0.0, 0.0]));
        assert!(close(hsv(120.0, 1.0, 1.0), [0.0, 1.0, 0.0]));
        assert!(close(hsv(240.0, 1.0, 1.0), [0.0, 0.0, 1.0]));
        assert!(close(hsv(360.0, 1.0, 1.0), [1.0, 0.0, 0.0]));
        assert!(close(hsv(-120.0, 1.0, 1.0), [0.0, 0.0, 1.0]));
        assert!(close(hsv(30.0, 0.5, 0.8), [0.8, 0.6, 0.4]));
    }

    #[test]
    fn to_u8_clamps_and_rounds() {
        assert_eq!(to_u8(-3.0), 0);
        assert_eq!(to_u8(0.0), 0);
        assert_eq!(to_u8(0.5), 128);
        assert_eq!(to_u8(1.0), 255);
        assert_eq!(to_u8(7.0), 255);
        assert_eq!(to_u8(f32::NAN), 0);
    }
}
