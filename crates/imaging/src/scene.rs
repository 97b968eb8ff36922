//! The procedural "anime sky" scene the built-in renderer denoises towards.
//!
//! A [`Scene`] is drawn once per request from a seeded generator and a few prompt keywords:
//! a sky gradient, a sun or moon with a glow, flat-bottomed cel-shaded clouds, layered hill
//! ridges or a sea, stars at night and falling sakura petals. [`Scene::paint`] rasterises it for
//! one video frame (the camera pans and clouds and petals drift from frame to frame).

use std::f32::consts::TAU;

use crate::math::{Rgb, SplitMix64, cell_hash, cos, f32_from, hsv, luma, mix, sin, smoothstep, unit};

/// Time of day, which picks the palette.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimeOfDay {
    Day,
    Sunset,
    Night,
}

#[derive(Debug, Clone)]
struct Sun {
    x: f32,
    y: f32,
    r: f32,
    core: Rgb,
    glow: Rgb,
    /// A crescent moon instead of a sun disc.
    moon: bool,
}

#[derive(Debug, Clone)]
struct Cloud {
    x: f32,
    y: f32,
    /// Puffs as (dx, dy, radius) relative to the cloud centre.
    puffs: Vec<[f32; 3]>,
    /// Flat bottom, relative to `y`.
    base: f32,
    /// Top of the highest puff, relative to `y` (negative).
    top: f32,
    /// Half width of the bounding box.
    half_w: f32,
    lit: Rgb,
    shadow: Rgb,
    parallax: f32,
}

#[derive(Debug, Clone)]
struct Ridge {
    base: f32,
    amp: f32,
    /// (frequency, phase, weight)
    waves: [[f32; 3]; 3],
    top: Rgb,
    bottom: Rgb,
    parallax: f32,
}

#[derive(Debug, Clone)]
struct Sea {
    far: Rgb,
    near: Rgb,
    glint: Rgb,
}

#[derive(Debug, Clone)]
struct Petals {
    cell: f32,
    /// Probability (out of 256) that a cell holds a petal.
    density: u64,
    color: Rgb,
    key: u64,
}

/// A procedural scene; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Scene {
    top: Rgb,
    horizon: Rgb,
    horizon_y: f32,
    sun: Option<Sun>,
    clouds: Vec<Cloud>,
    ridges: Vec<Ridge>,
    sea: Option<Sea>,
    stars: Option<u64>,
    petals: Option<Petals>,
    /// Camera pan per video frame, in picture heights.
    pan: f32,
    aspect: f32,
}

fn mentions(text: &str, words: &[&str]) -> bool {
    words.iter().any(|w| text.contains(w))
}

fn scale(c: Rgb, k: f32) -> Rgb {
    [c[0] * k, c[1] * k, c[2] * k]
}

impl Scene {
    /// Draws a scene from `seed` (derived from the request hash) for a picture of the given
    /// aspect ratio. Keywords in the prompt force features (e.g. "night", "sunset", "sea",
    /// "sakura", also in Japanese); keywords in the negative prompt remove them ("clouds",
    /// "sun", "moon", "mountains", "stars", "petals").
    #[allow(clippy::too_many_lines)]
    pub(crate) fn new(seed: u64, prompt: &str, negative: &str, aspect: f32) -> Self {
        let prompt = prompt.to_lowercase();
        let negative = negative.to_lowercase();
        let mut rng = SplitMix64::new(seed);

        let time = if mentions(&prompt, &["night", "moon", "star", "夜", "月", "星"]) {
            TimeOfDay::Night
        } else if mentions(
            &prompt,
            &["sunset", "dusk", "evening", "sunrise", "dawn", "twilight", "夕", "黄昏", "朝焼け"],
        ) {
            TimeOfDay::Sunset
        } else if mentions(&prompt, &["day", "noon", "blue sky", "summer", "昼", "青空", "夏"]) {
            TimeOfDay::Day
        } else {
            match rng.int(0, 9) {
                0..=4 => TimeOfDay::Day,
                5..=7 => TimeOfDay::Sunset,
                _ => TimeOfDay::Night,
            }
        };
        let hue = rng.range(-18.0, 18.0);
        let horizon_y = rng.range(0.56, 0.72);

        let (top, horizon) = match time {
            TimeOfDay::Day => (
                hsv(212.0 + hue, rng.range(0.65, 0.85), rng.range(0.78, 0.92)),
                hsv(196.0 + hue * 0.5, rng.range(0.12, 0.3), 1.0),
            ),
            TimeOfDay::Sunset => (
                hsv(262.0 + hue, rng.range(0.5, 0.7), rng.range(0.42, 0.58)),
                hsv(28.0 + hue * 0.6, rng.range(0.6, 0.8), 1.0),
            ),
            TimeOfDay::Night => (
                hsv(228.0 + hue, 0.8, rng.range(0.08, 0.14)),
                hsv(256.0 + hue, rng.range(0.45, 0.6), rng.range(0.58, 0.68)),
            ),
        };

        let no_sun = mentions(&negative, &["sun", "moon", "太陽", "月"]);
        let sun_draw =
            (rng.range(0.15, (aspect - 0.15).max(0.16)), rng.range(0.0, 1.0), rng.range(0.04, 0.075));
        let sun = (!no_sun).then(|| {
            let y = match time {
                TimeOfDay::Sunset => horizon_y - 0.06 - 0.14 * sun_draw.1,
                _ => 0.12 + (horizon_y - 0.3) * sun_draw.1,
            };
            let (core, glow) = match time {
                TimeOfDay::Day => (hsv(50.0, 0.08, 1.0), hsv(45.0, 0.25, 0.55)),
                TimeOfDay::Sunset => (hsv(42.0, 0.35, 1.0), hsv(20.0, 0.7, 0.8)),
                TimeOfDay::Night => (hsv(52.0, 0.12, 0.97), hsv(230.0, 0.3, 0.35)),
            };
            Sun {
                x: sun_draw.0,
                y,
                r: if time == TimeOfDay::Night { sun_draw.2 * 1.3 } else { sun_draw.2 },
                core,
                glow,
                moon: time == TimeOfDay::Night,
            }
        });

        let no_clouds = mentions(&negative, &["cloud", "雲"]);
        let cloud_count = rng.int(2, 6);
        let (lit, shadow) = match time {
            TimeOfDay::Day => (hsv(210.0, 0.03, 1.0), hsv(218.0 + hue, 0.22, 0.82)),
            TimeOfDay::Sunset => (hsv(30.0 + hue, 0.4, 1.0), hsv(300.0 + hue, 0.35, 0.58)),
            TimeOfDay::Night => (hsv(232.0, 0.2, 0.5), hsv(245.0, 0.4, 0.26)),
        };
        let mut clouds = Vec::new();
        for _ in 0..cloud_count {
            let size = rng.range(0.07, 0.16);
            let cloud_x = rng.range(-0.1, aspect + 0.1);
            let cloud_y = rng.range(0.1, horizon_y - 0.12);
            let n = rng.int(4, 7);
            let mut puffs = Vec::new();
            let mut top_rel = 0.0_f32;
            let mut half_w = 0.0_f32;
            for i in 0..n {
                // Spread puffs left to right, higher in the middle.
                let t = (f32_from(i) + 0.5) / f32_from(n) * 2.0 - 1.0;
                let r = size * rng.range(0.45, 0.8) * (1.0 - 0.35 * t * t);
                let dx = t * size * 1.6 + rng.range(-0.2, 0.2) * size;
                let dy = -r * rng.range(0.2, 0.6);
                top_rel = top_rel.min(dy - r);
                half_w = half_w.max(dx.abs() + r);
                puffs.push([dx, dy, r]);
            }
            let c = Cloud {
                x: cloud_x,
                y: cloud_y,
                puffs,
                base: size * 0.25,
                top: top_rel,
                half_w,
                lit,
                shadow,
                parallax: rng.range(0.3, 0.7),
            };
            if !no_clouds {
                clouds.push(c);
            }
        }

        let wants_sea =
            mentions(&prompt, &["sea", "ocean", "beach", "lake", "water", "shore", "海", "湖", "浜"]);
        let sea_roll = rng.chance(0.3);
        let sea = (wants_sea || sea_roll).then(|| match time {
            TimeOfDay::Day => Sea {
                far: mix(horizon, hsv(200.0 + hue, 0.6, 0.8), 0.6),
                near: hsv(215.0 + hue, 0.85, 0.5),
                glint: [1.0, 1.0, 1.0],
            },
            TimeOfDay::Sunset => Sea {
                far: mix(horizon, hsv(300.0, 0.4, 0.6), 0.4),
                near: hsv(258.0 + hue, 0.6, 0.3),
                glint: hsv(35.0, 0.5, 1.0),
            },
            TimeOfDay::Night => {
                Sea { far: mix(horizon, top, 0.3), near: hsv(232.0, 0.75, 0.1), glint: hsv(50.0, 0.2, 0.9) }
            }
        });

        let no_ridges = mentions(&negative, &["mountain", "hill", "ridge", "山", "丘"]);
        let layers: u32 = if sea.is_some() { 1 } else { 3 };
        let mut ridges = Vec::new();
        for layer in 0..layers {
            let near = f32_from(layer) / 2.0; // 0 far .. 1 near
            let base =
                if sea.is_some() { horizon_y + 0.005 } else { horizon_y + 0.03 + near * (0.9 - horizon_y) };
            let amp =
                if sea.is_some() { rng.range(0.04, 0.1) } else { rng.range(0.08, 0.2) * (1.0 - 0.4 * near) };
            let mut waves = [[0.0; 3]; 3];
            for (i, w) in waves.iter_mut().enumerate() {
                let octave = [1.0, 2.3, 5.1][i];
                *w = [rng.range(2.0, 4.5) * octave, rng.range(0.0, TAU), [0.6, 0.28, 0.12][i]];
            }
            let (near_top, near_bottom) = match time {
                TimeOfDay::Day => (hsv(135.0 + hue * 2.0, 0.55, 0.62), hsv(150.0 + hue * 2.0, 0.7, 0.32)),
                TimeOfDay::Sunset => (hsv(285.0 + hue, 0.45, 0.33), hsv(270.0, 0.5, 0.16)),
                TimeOfDay::Night => (hsv(238.0, 0.5, 0.16), hsv(240.0, 0.5, 0.05)),
            };
            // Aerial perspective: far ridges fade towards the horizon colour.
            let haze = 0.65 * (1.0 - near);
            let r = Ridge {
                base,
                amp,
                waves,
                top: mix(near_top, horizon, haze),
                bottom: mix(near_bottom, horizon, haze * 0.8),
                parallax: 0.25 + 0.75 * near,
            };
            if !no_ridges {
                ridges.push(r);
            }
        }

        let no_stars = mentions(&negative, &["star", "星"]);
        let stars = (time == TimeOfDay::Night && !no_stars).then(|| rng.next_u64());

        let wants_petals = mentions(&prompt, &["sakura", "cherry", "blossom", "petal", "桜", "花びら"]);
        let petal_roll = rng.chance(0.2);
        let petal_key = rng.next_u64();
        let no_petals = mentions(&negative, &["petal", "sakura", "blossom", "桜"]);
        let petals = ((wants_petals || petal_roll) && !no_petals).then(|| Petals {
            cell: 0.07,
            density: 40,
            color: if time == TimeOfDay::Night { hsv(335.0, 0.25, 0.75) } else { hsv(340.0, 0.28, 1.0) },
            key: petal_key,
        });

        Self {
            top,
            horizon,
            horizon_y,
            sun,
            clouds,
            ridges,
            sea,
            stars,
            petals,
            pan: rng.range(0.004, 0.009),
            aspect,
        }
    }

    /// Rasterises frame `frame` into `out` (interleaved RGB, `width * height * 3` floats).
    pub(crate) fn paint(&self, frame: u32, width: u32, height: u32, out: &mut [f32]) {
        let w = width as usize;
        let inv = 1.0 / f32_from(height);
        let shift = self.pan * f32_from(frame);

        // Ridge lines depend on the column only: compute them once per frame.
        let ridge_lines: Vec<Vec<f32>> = self
            .ridges
            .iter()
            .map(|r| {
                (0..width)
                    .map(|x| {
                        let u = (f32_from(x) + 0.5) * inv + shift * r.parallax;
                        let wave: f32 = r.waves.iter().map(|[f, p, k]| k * sin(u * f + p)).sum();
                        r.base - r.amp * (0.6 + 0.4 * wave)
                    })
                    .collect()
            })
            .collect();
        // Cloud positions for this frame, wrapped around so a long pan never empties the sky.
        let span = self.aspect + 0.6;
        let cloud_x: Vec<f32> =
            self.clouds.iter().map(|c| (c.x + 0.3 - shift * c.parallax).rem_euclid(span) - 0.3).collect();

        for (y, row) in out.chunks_exact_mut(w * 3).enumerate().take(height as usize) {
            let py = (f32_from(u32::try_from(y).unwrap_or(0)) + 0.5) * inv;
            let t = smoothstep(0.0, self.horizon_y, py);
            let sky = mix(self.top, self.horizon, t * t * (0.6 + 0.4 * t));
            for (x, px_out) in row.chunks_exact_mut(3).enumerate() {
                let px = (f32_from(u32::try_from(x).unwrap_or(0)) + 0.5) * inv;
                let mut c = sky;
                if let Some(key) = self.stars {
                    c = self.star(c, key, px + shift * 0.1, py);
                }
                if let Some(sun) = &self.sun {
                    c = paint_sun(c, sun, px, py);
                }
                for (cloud, &cx) in self.clouds.iter().zip(&cloud_x) {
                    c = paint_cloud(c, cloud, cx, px, py);
                }
                let mut ridges = self.ridges.iter().zip(&ridge_lines);
                // With a sea, the single ridge is an island range on the horizon, behind the water.
                if self.sea.is_some() {
                    for (ridge, line) in ridges.by_ref() {
                        c = paint_ridge(c, ridge, line[x], py, inv);
                    }
                }
                if let Some(sea) = &self.sea {
                    c = self.paint_sea(c, sea, px, py, shift, inv);
                }
                for (ridge, line) in ridges {
                    c = paint_ridge(c, ridge, line[x], py, inv);
                }
                if let Some(petals) = &self.petals {
                    c = paint_petal(c, petals, px + shift * 1.4, py - shift * 1.1);
                }
                // Soft vignette.
                let vx = px / self.aspect - 0.5;
                let vy = py - 0.5;
                let v = 1.0 - 0.35 * (vx * vx + vy * vy);
                px_out.copy_from_slice(&scale(c, v));
            }
        }
    }

    fn star(&self, c: Rgb, key: u64, px: f32, py: f32) -> Rgb {
        if py > self.horizon_y {
            return c;
        }
        let cell = 0.012;
        let gx = (px / cell).floor();
        let gy = (py / cell).floor();
        let h = cell_hash(key, gx, gy);
        if h & 0xFF >= 10 {
            return c;
        }
        let sx = (gx + 0.2 + 0.6 * unit(h.rotate_left(17))) * cell;
        let sy = (gy + 0.2 + 0.6 * unit(h.rotate_left(41))) * cell;
        let d2 = ((px - sx) * (px - sx) + (py - sy) * (py - sy)) / (cell * cell);
        let k = (1.0 - smoothstep(0.0, 0.12, d2)) * (0.5 + 0.5 * unit(h.rotate_left(3)));
        let fade = 1.0 - smoothstep(self.horizon_y * 0.5, self.horizon_y, py);
        mix(c, [1.0, 0.97, 0.9], k * fade)
    }

    fn paint_sea(&self, c: Rgb, sea: &Sea, px: f32, py: f32, shift: f32, inv: f32) -> Rgb {
        if py <= self.horizon_y {
            return c;
        }
        let d = ((py - self.horizon_y) / (1.0 - self.horizon_y)).clamp(0.0, 1.0);
        let mut water = mix(sea.far, sea.near, d.sqrt());
        // Horizontal wave bands, tighter towards the horizon (perspective).
        let band = sin((py - self.horizon_y).sqrt() * 180.0 + sin(px * 9.0 + shift * 6.0) * 1.5);
        water = mix(water, sea.far, 0.07 * smoothstep(0.6, 1.0, band));
        if let Some(sun) = &self.sun {
            // Glints in a column under the sun.
            let dx = (px - sun.x).abs() / (sun.r * (1.5 + 4.0 * d));
            let column = 1.0 - smoothstep(0.4, 1.0, dx);
            let sparkle = smoothstep(0.7, 0.95, band * sin(px * 23.0 + py * 7.0));
            water = mix(water, sea.glint, column * sparkle * (1.0 - 0.5 * d));
        }
        // Anti-aliased shoreline on the horizon.
        let k = smoothstep(self.horizon_y - inv, self.horizon_y + inv, py);
        mix(c, water, k)
    }
}

fn paint_sun(c: Rgb, sun: &Sun, px: f32, py: f32) -> Rgb {
    let dx = px - sun.x;
    let dy = py - sun.y;
    let d2 = dx * dx + dy * dy;
    let g2 = (sun.r * 3.0) * (sun.r * 3.0);
    let glow = g2 / (d2 + g2) * 0.9;
    let mut c = [
        (c[0] + sun.glow[0] * glow).min(1.0),
        (c[1] + sun.glow[1] * glow).min(1.0),
        (c[2] + sun.glow[2] * glow).min(1.0),
    ];
    let d = d2.sqrt();
    let mut disc = 1.0 - smoothstep(sun.r * 0.93, sun.r * 1.03, d);
    if sun.moon {
        // Crescent: carve out a disc shifted up-right.
        let ex = dx - sun.r * 0.55;
        let ey = dy + sun.r * 0.3;
        let e = (ex * ex + ey * ey).sqrt();
        disc *= smoothstep(sun.r * 0.83, sun.r * 0.93, e);
    }
    if disc > 0.0 {
        c = mix(c, sun.core, disc);
    }
    c
}

fn paint_cloud(c: Rgb, cloud: &Cloud, cx: f32, px: f32, py: f32) -> Rgb {
    let lx = px - cx;
    let ly = py - cloud.y;
    if lx.abs() > cloud.half_w || ly > cloud.base + 0.01 || ly < cloud.top - 0.01 {
        return c;
    }
    let mut cover = 0.0_f32;
    for &[dx, dy, r] in &cloud.puffs {
        let ex = lx - dx;
        let ey = ly - dy;
        let d = (ex * ex + ey * ey).sqrt();
        cover = cover.max(1.0 - smoothstep(r * 0.9, r, d));
    }
    if cover <= 0.0 {
        return c;
    }
    // Flat bottom, cel-shaded: lit top, two-tone shadow underneath.
    cover *= 1.0 - smoothstep(cloud.base - 0.004, cloud.base + 0.004, ly);
    let h = ((ly - cloud.top) / (cloud.base - cloud.top)).clamp(0.0, 1.0);
    let shade = smoothstep(0.56, 0.6, h) * 0.65 + smoothstep(0.6, 1.0, h) * 0.35;
    mix(c, mix(cloud.lit, cloud.shadow, shade), cover)
}

fn paint_ridge(c: Rgb, ridge: &Ridge, line: f32, py: f32, inv: f32) -> Rgb {
    if py < line - inv {
        return c;
    }
    let k = smoothstep(line - inv, line + inv, py);
    let depth = ((py - line) / 0.25).clamp(0.0, 1.0);
    let mut col = mix(ridge.top, ridge.bottom, depth);
    // Light rim along the crest.
    let rim = 1.0 - smoothstep(0.0, 3.0 * inv, py - line);
    col = mix(col, ridge.top, rim * 0.35 * (0.5 + luma(ridge.top)));
    mix(c, col, k)
}

fn paint_petal(c: Rgb, petals: &Petals, px: f32, py: f32) -> Rgb {
    let gx = (px / petals.cell).floor();
    let gy = (py / petals.cell).floor();
    let hash = cell_hash(petals.key, gx, gy);
    if hash & 0xFF >= petals.density {
        return c;
    }
    let cx = (gx + 0.25 + 0.5 * unit(hash.rotate_left(13))) * petals.cell;
    let cy = (gy + 0.25 + 0.5 * unit(hash.rotate_left(29))) * petals.cell;
    let angle = unit(hash.rotate_left(47)) * TAU;
    let (sin_a, cos_a) = (sin(angle), cos(angle));
    let dx = px - cx;
    let dy = py - cy;
    let along = (dx * cos_a + dy * sin_a) / (petals.cell * 0.16);
    let across = (dy * cos_a - dx * sin_a) / (petals.cell * 0.09);
    let dist2 = along * along + across * across;
    if dist2 >= 1.0 {
        return c;
    }
    let cover = 1.0 - smoothstep(0.6, 1.0, dist2);
    let tone = 0.85 + 0.15 * unit(hash.rotate_left(7));
    mix(c, scale(petals.color, tone), cover * 0.95)
}
