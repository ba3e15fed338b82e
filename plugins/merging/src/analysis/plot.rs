//! A small RGB raster for the analysis plots: filled rectangles, horizontal spans, lines,
//! bitmap text (`font.rs`) and a PNG encoder. Plots are simple enough that a plotting
//! library would be the larger part of the plugin.

use super::font;

pub(crate) type Rgb = [u8; 3];

pub(crate) const WHITE: Rgb = [255, 255, 255];
pub(crate) const BLACK: Rgb = [0, 0, 0];
pub(crate) const GREY: Rgb = [90, 90, 90];

/// An RGB image, row-major.
pub(crate) struct Canvas {
    pub width: usize,
    pub height: usize,
    px: Vec<Rgb>,
}

impl Canvas {
    pub(crate) fn new(width: usize, height: usize, background: Rgb) -> Canvas {
        Canvas {
            width,
            height,
            px: vec![background; width * height],
        }
    }

    pub(crate) fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            self.px[y as usize * self.width + x as usize] = c;
        }
    }

    /// Fill the rectangle [x0, x1) × [y0, y1) (clipped).
    pub(crate) fn fill(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        for y in y0.max(0)..y1.min(self.height as i64) {
            for x in x0.max(0)..x1.min(self.width as i64) {
                self.px[y as usize * self.width + x as usize] = c;
            }
        }
    }

    /// A line from (x0, y0) to (x1, y1), one pixel wide (Bresenham).
    pub(crate) fn line(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// The rectangle's outline.
    pub(crate) fn frame(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb) {
        self.line(x0, y0, x1, y0, c);
        self.line(x0, y1, x1, y1, c);
        self.line(x0, y0, x0, y1, c);
        self.line(x1, y0, x1, y1, c);
    }

    /// Text with its top-left corner at (x, y), each glyph pixel drawn `scale` × `scale`;
    /// characters outside printable ASCII are drawn as `?`.
    pub(crate) fn text(&mut self, x: i64, y: i64, s: &str, c: Rgb, scale: i64) {
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            let gx = x + i as i64 * font::WIDTH as i64 * scale;
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..font::WIDTH {
                    if bits >> col & 1 == 1 {
                        let (px, py) = (gx + col as i64 * scale, y + row as i64 * scale);
                        self.fill(px, py, px + scale, py + scale, c);
                    }
                }
            }
        }
    }

    /// Text turned a quarter anticlockwise (read bottom to top), its top-left corner at (x, y)
    /// in the turned frame's bounding box: the box is `HEIGHT` wide and `text_width` tall.
    pub(crate) fn text_up(&mut self, x: i64, y: i64, s: &str, c: Rgb) {
        let len = s.chars().count() as i64 * font::WIDTH as i64;
        for (i, ch) in s.chars().enumerate() {
            let rows = glyph(ch);
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..font::WIDTH {
                    if bits >> col & 1 == 1 {
                        let u = i as i64 * font::WIDTH as i64 + col as i64;
                        self.set(x + row as i64, y + len - 1 - u, c);
                    }
                }
            }
        }
    }

    /// The PNG file of the image (8-bit RGB).
    pub(crate) fn png(&self) -> Result<Vec<u8>, png::EncodingError> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.width as u32, self.height as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header()?;
            let data: Vec<u8> = self.px.iter().flatten().copied().collect();
            writer.write_image_data(&data)?;
            writer.finish()?;
        }
        Ok(out)
    }
}

/// The width in pixels of `s` at scale 1.
pub(crate) fn text_width(s: &str) -> i64 {
    s.chars().count() as i64 * font::WIDTH as i64
}

fn glyph(ch: char) -> &'static [u8; font::HEIGHT] {
    let code = ch as u32;
    let i = if (32..=126).contains(&code) {
        code - 32
    } else {
        u32::from(b'?') - 32
    };
    &font::GLYPHS[i as usize]
}

/// matplotlib's `GnBu` colormap (ColorBrewer's nine steps, linearly interpolated) at t ∈ [0, 1].
pub(crate) fn gnbu(t: f64) -> Rgb {
    const STEPS: [Rgb; 9] = [
        [0xf7, 0xfc, 0xf0],
        [0xe0, 0xf3, 0xdb],
        [0xcc, 0xeb, 0xc5],
        [0xa8, 0xdd, 0xb5],
        [0x7b, 0xcc, 0xc4],
        [0x4e, 0xb3, 0xd3],
        [0x2b, 0x8c, 0xbe],
        [0x08, 0x68, 0xac],
        [0x08, 0x40, 0x81],
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let pos = t * (STEPS.len() - 1) as f64;
    let i = (pos.floor() as usize).min(STEPS.len() - 2);
    let f = pos - i as f64;
    let mut c = [0u8; 3];
    for k in 0..3 {
        let (a, b) = (f64::from(STEPS[i][k]), f64::from(STEPS[i + 1][k]));
        c[k] = (a + (b - a) * f).round() as u8;
    }
    c
}

/// seaborn's `deep` palette, for one colour per model.
pub(crate) const DEEP: [Rgb; 10] = [
    [0x4c, 0x72, 0xb0],
    [0xdd, 0x84, 0x52],
    [0x55, 0xa8, 0x68],
    [0xc4, 0x4e, 0x52],
    [0x81, 0x72, 0xb3],
    [0x93, 0x78, 0x60],
    [0xda, 0x8b, 0xc3],
    [0x8c, 0x8c, 0x8c],
    [0xcc, 0xb9, 0x74],
    [0x64, 0xb5, 0xcd],
];

/// Relative luminance (seaborn picks dark or light annotation text by it).
pub(crate) fn luminance(c: Rgb) -> f64 {
    let lin = |v: u8| {
        let v = f64::from(v) / 255.0;
        if v <= 0.03928 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * lin(c[0]) + 0.7152 * lin(c[1]) + 0.0722 * lin(c[2])
}

/// About `n` round tick values covering [lo, hi].
pub(crate) fn ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater)
        || !lo.is_finite()
        || !hi.is_finite()
    {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

/// A tick label: few digits, scientific for very small or large magnitudes.
pub(crate) fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e4).contains(&a) {
        format!("{v:.1e}")
    } else {
        let s = format!("{v:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnbu_ends_and_middle() {
        assert_eq!(gnbu(0.0), [0xf7, 0xfc, 0xf0]);
        assert_eq!(gnbu(1.0), [0x08, 0x40, 0x81]);
        assert_eq!(gnbu(0.5), [0x7b, 0xcc, 0xc4]);
    }

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(
            ticks(0.0, 1.0, 5),
            vec![0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let t = ticks(-0.013, 0.052, 5);
        assert!(t.iter().all(|v| (-0.013..=0.052).contains(v)), "{t:?}");
        assert!(t.len() >= 3, "{t:?}");
        assert_eq!(tick_label(0.02), "0.02");
        assert_eq!(tick_label(-0.00002), "-2.0e-5");
    }

    #[test]
    fn text_and_png_round_trip() {
        let mut c = Canvas::new(40, 20, WHITE);
        c.text(1, 1, "Ab", BLACK, 1);
        let bytes = c.png().unwrap();
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (40, 20));
        assert!(buf.contains(&0) && buf.contains(&255));
    }
}
