//! Layer 0: a small chart renderer to PNG, for reports that want a picture without a
//! plotting stack: line and point series on a shared x axis (numbers or UTC times),
//! stacked panels (each with its own y axis), horizontal guides, vertical markers with
//! labels, ticks, a legend and a title. Text uses a built-in 5x7 bitmap font (ASCII;
//! other characters print as `?`): no font files, no system fonts. No anti-aliasing.
//! The only dependency is `image`, to encode the PNG.
//!
//! ```
//! use anneal::plot::{render_png, Chart, Marker, Panel, Series, XAxis, BLUE, RED};
//! let chart = Chart {
//!     title: "accuracy".into(),
//!     x_axis: XAxis { label: "step".into(), ..Default::default() },
//!     panels: vec![Panel {
//!         y_label: "accuracy".into(),
//!         y_range: Some((0.0, 1.0)),
//!         series: vec![Series::line("train", BLUE, vec![(0.0, 0.5), (1.0, 0.8), (2.0, 0.9)])],
//!         ..Default::default()
//!     }],
//!     markers: vec![Marker { x: 1.0, label: "v2".into(), color: RED, legend: "promoted".into() }],
//! };
//! let png = render_png(&chart, 640, 360).unwrap();
//! assert_eq!(&png[1..4], b"PNG");
//! ```
//!
//! Geometry ([`layout`]): each panel has a plotting area of whole pixels inside a
//! frame; the x range maps linearly onto its columns (`x_min` on the first, `x_max` on
//! the last) and a panel's y range onto its rows (`y_max` on the top row, `y_min` on
//! the bottom one). Drawing is clipped to the plotting areas, so data outside the
//! ranges is cut off rather than drawn over the axes.

use std::path::Path;

use image::{ImageEncoder, Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::util;

/// An RGB colour.
pub type Color = [u8; 3];

pub const BLUE: Color = [31, 119, 180];
pub const ORANGE: Color = [255, 127, 14];
pub const GREEN: Color = [44, 160, 44];
pub const RED: Color = [214, 39, 40];
pub const PURPLE: Color = [148, 103, 189];
pub const BROWN: Color = [140, 86, 75];
pub const GRAY: Color = [127, 127, 127];
pub const BLACK: Color = [0, 0, 0];

/// Colour of the title, labels and legend text.
pub const TEXT: Color = [33, 33, 33];
/// Colour of the frames around the plotting areas and of the tick marks.
pub const FRAME: Color = [90, 90, 90];
/// Colour of the grid lines.
pub const GRID: Color = [232, 232, 232];
/// The background.
pub const BACKGROUND: Color = [255, 255, 255];

/// Smallest and largest accepted image sides, in pixels.
pub const MIN_WIDTH: u32 = 160;
pub const MIN_HEIGHT: u32 = 120;
pub const MAX_SIDE: u32 = 10_000;

/// A chart: panels stacked top to bottom on one x axis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Chart {
    /// Centred above everything (empty: none).
    pub title: String,
    pub x_axis: XAxis,
    /// At least one.
    pub panels: Vec<Panel>,
    /// Vertical lines across every panel, labelled above the top one.
    pub markers: Vec<Marker>,
}

/// The shared x axis.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct XAxis {
    /// Printed under the tick labels (empty: none).
    pub label: String,
    pub scale: XScale,
    /// `(min, max)`, min < max. Default: the data's range (series and markers) with a
    /// 2 % margin on each side.
    pub range: Option<(f64, f64)>,
}

/// How x values read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XScale {
    /// Plain numbers.
    #[default]
    Linear,
    /// Unix time in seconds; ticks fall on round UTC times and read as times of day
    /// (`12:04:30`), with the date when the range spans days.
    Time,
}

/// One panel: a plotting area with its own y axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Printed vertically left of the tick labels (empty: none).
    pub y_label: String,
    /// `(min, max)`, min < max. Default: the data's range (series and guides) with a
    /// 5 % margin on each side.
    pub y_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
    /// Horizontal dashed lines (thresholds), labelled at their right end.
    pub guides: Vec<Guide>,
    /// Share of the height, relative to the other panels' (> 0). Default 1.
    pub weight: f64,
}

impl Default for Panel {
    fn default() -> Self {
        Self { y_label: String::new(), y_range: None, series: Vec::new(), guides: Vec::new(), weight: 1.0 }
    }
}

/// A data series. Points with a non-finite coordinate are skipped (and break a line).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Series {
    /// In the legend (empty: not listed).
    pub name: String,
    pub color: Color,
    pub style: Style,
    /// `(x, y)`, drawn in this order.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A line through `points`.
    pub fn line(name: impl Into<String>, color: Color, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), color, style: Style::Line, points }
    }

    /// A square dot at each of `points`.
    pub fn points(name: impl Into<String>, color: Color, points: Vec<(f64, f64)>) -> Self {
        Self { name: name.into(), color, style: Style::Points, points }
    }
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Style {
    /// Segments 2 pixels wide between consecutive points.
    #[default]
    Line,
    /// A 5 x 5 square centred on each point.
    Points,
    /// Both.
    LinePoints,
}

/// A horizontal line at `y` (dashed), with `label` above its right end.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Guide {
    pub y: f64,
    pub label: String,
    pub color: Color,
}

/// A vertical line at `x` (dashed) across every panel, `label` next to it above the
/// top panel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Marker {
    pub x: f64,
    pub label: String,
    pub color: Color,
    /// In the legend, once per (legend, colour) (empty: not listed).
    pub legend: String,
}

/// Where things are in a rendered chart (see [`layout`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub width: u32,
    pub height: u32,
    /// The x range mapped onto columns `left..=right`.
    pub x_range: (f64, f64),
    /// First and last column of the plotting areas (the frame is one column outside).
    pub left: u32,
    pub right: u32,
    pub panels: Vec<PanelArea>,
    /// Rows `title.0..title.1` hold the title (empty range: no title).
    pub title: (u32, u32),
    /// Rows `legend.0..legend.1` hold the legend.
    pub legend: (u32, u32),
    /// Rows `markers.0..markers.1` hold the marker labels.
    pub markers: (u32, u32),
    x_ticks: Vec<f64>,
    x_step: f64,
    title_scale: u32,
    title_text: String,
    legend_rows: Vec<Vec<LegendItem>>,
}

/// The plotting area of one panel.
#[derive(Debug, Clone, PartialEq)]
pub struct PanelArea {
    /// First and last row (the frame is one row outside).
    pub top: u32,
    pub bottom: u32,
    /// The y range mapped onto rows `bottom..=top`.
    pub y_range: (f64, f64),
    y_ticks: Vec<f64>,
    y_step: f64,
}

impl Layout {
    /// The column of `x` (fractional; round it for a pixel).
    pub fn x_px(&self, x: f64) -> f64 {
        let (lo, hi) = self.x_range;
        self.left as f64 + (x - lo) / (hi - lo) * (self.right - self.left) as f64
    }

    /// The row of `y` in panel `panel` (fractional; round it for a pixel).
    pub fn y_px(&self, panel: usize, y: f64) -> f64 {
        let p = &self.panels[panel];
        let (lo, hi) = p.y_range;
        p.bottom as f64 - (y - lo) / (hi - lo) * (p.bottom - p.top) as f64
    }
}

/// The chart as an image of `width` x `height` pixels.
pub fn render(chart: &Chart, width: u32, height: u32) -> Result<RgbImage> {
    let l = layout(chart, width, height)?;
    let mut c = Canvas { img: RgbImage::from_pixel(width, height, Rgb(BACKGROUND)) };
    draw(&mut c, chart, &l);
    Ok(c.img)
}

/// The chart as PNG bytes.
pub fn render_png(chart: &Chart, width: u32, height: u32) -> Result<Vec<u8>> {
    let img = render(chart, width, height)?;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(img.as_raw(), width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| Error::Internal(format!("encoding the PNG: {e}")))?;
    Ok(out)
}

/// Renders the chart and writes the PNG to `path` atomically (a temporary file in the
/// same directory, then a rename): a reader never sees half a file.
pub fn write_png(chart: &Chart, width: u32, height: u32, path: &Path) -> Result<()> {
    let png = render_png(chart, width, height)?;
    util::write_atomic(path, &png)
}

// ---------------------------------------------------------------------------------
// Layout

const PAD: u32 = 8;
const TICK: u32 = 4;
const PANEL_GAP: u32 = 12;
const LABEL_ROW: u32 = LINE_HEIGHT + 2;
const MIN_PANEL_ROWS: u32 = 16;

#[derive(Debug, Clone, PartialEq)]
enum LegendSwatch {
    Series(Style),
    Marker,
}

#[derive(Debug, Clone, PartialEq)]
struct LegendItem {
    text: String,
    color: Color,
    swatch: LegendSwatch,
}

impl LegendItem {
    const SWATCH: u32 = 16;
    fn width(&self) -> u32 {
        Self::SWATCH + 4 + text_width(&self.text, 1)
    }
}

fn finite(p: &(f64, f64)) -> bool {
    p.0.is_finite() && p.1.is_finite()
}

fn check_range(field: &str, r: Option<(f64, f64)>) -> Result<()> {
    if let Some((lo, hi)) = r {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::config(field, format!("must be (min, max) with finite min < max, got ({lo}, {hi})")));
        }
    }
    Ok(())
}

/// `(lo, hi)` of `values`, padded by `pad` of the span; a single value is widened by
/// `flat` on each side (default: a tenth of its size, or 1 for 0).
fn data_range(values: impl Iterator<Item = f64>, pad: f64, flat: Option<f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    if lo == hi {
        let d = flat.unwrap_or(if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 });
        return (lo - d, hi + d);
    }
    let d = (hi - lo) * pad;
    (lo - d, hi + d)
}

/// Where each part of the chart goes; `invalid_config` naming the field for a size,
/// range or weight that cannot be drawn.
pub fn layout(chart: &Chart, width: u32, height: u32) -> Result<Layout> {
    if !(MIN_WIDTH..=MAX_SIDE).contains(&width) {
        return Err(Error::config("width", format!("must be {MIN_WIDTH} to {MAX_SIDE} pixels, got {width}")));
    }
    if !(MIN_HEIGHT..=MAX_SIDE).contains(&height) {
        return Err(Error::config("height", format!("must be {MIN_HEIGHT} to {MAX_SIDE} pixels, got {height}")));
    }
    if chart.panels.is_empty() {
        return Err(Error::config("panels", "a chart needs at least one panel"));
    }
    check_range("x_axis.range", chart.x_axis.range)?;
    for (i, p) in chart.panels.iter().enumerate() {
        check_range(&format!("panels[{i}].y_range"), p.y_range)?;
        if !(p.weight.is_finite() && p.weight > 0.0) {
            return Err(Error::config(format!("panels[{i}].weight"), format!("must be above 0, got {}", p.weight)));
        }
    }

    // Rows, top down: title, legend, marker labels, panels, x tick labels, x label.
    let mut y = PAD;
    let (title_text, title_scale) = fit_title(&chart.title, width.saturating_sub(2 * PAD));
    let title = if title_text.is_empty() {
        (y, y)
    } else {
        let t = (y, y + GLYPH_ROWS * title_scale);
        y = t.1 + 8;
        t
    };
    let legend_rows = legend_rows(chart, width.saturating_sub(2 * PAD));
    let legend = (y, y + legend_rows.len() as u32 * LABEL_ROW);
    if !legend_rows.is_empty() {
        y = legend.1 + 4;
    }
    let labelled_markers = chart.markers.iter().any(|m| !m.label.is_empty() && m.x.is_finite());
    let markers = (y, y + if labelled_markers { 2 * LABEL_ROW } else { 0 });
    y = markers.1 + 1; // + the top frame row
    let x_label_rows = if chart.x_axis.label.is_empty() { 0 } else { LABEL_ROW + 2 };
    let below = 1 + TICK + 3 + LINE_HEIGHT + x_label_rows + PAD; // frame, ticks, labels, axis label
    let panels_rows = i64::from(height) - i64::from(y) - i64::from(below);
    let n = chart.panels.len() as i64;
    // Between two panels: a bottom frame row, a gap, a top frame row.
    let usable = panels_rows - (n - 1) * (2 + i64::from(PANEL_GAP));
    let total_weight: f64 = chart.panels.iter().map(|p| p.weight).sum();
    let mut panels = Vec::with_capacity(chart.panels.len());
    let mut top = i64::from(y);
    for (i, p) in chart.panels.iter().enumerate() {
        let rows = (usable as f64 * p.weight / total_weight).floor() as i64;
        if rows < i64::from(MIN_PANEL_ROWS) {
            return Err(Error::config(
                "height",
                format!("{height} pixels leave panel {i} {} rows; at least {MIN_PANEL_ROWS} are needed", rows.max(0)),
            ));
        }
        let y_range = p.y_range.unwrap_or_else(|| {
            let ys = p.series.iter().flat_map(|s| s.points.iter().filter(|q| finite(q)).map(|q| q.1));
            data_range(ys.chain(p.guides.iter().map(|g| g.y)), 0.05, None)
        });
        let (y_ticks, y_step) = linear_ticks(y_range, (rows as f64 / 40.0).max(2.0));
        panels.push(PanelArea { top: top as u32, bottom: (top + rows - 1) as u32, y_range, y_ticks, y_step });
        top += rows + 2 + i64::from(PANEL_GAP);
    }

    // Columns: y label, y tick labels, ticks, frame, plotting area, frame, margin.
    let y_label_cols = if chart.panels.iter().any(|p| !p.y_label.is_empty()) { GLYPH_ROWS + 6 } else { 0 };
    let tick_label_cols = panels
        .iter()
        .flat_map(|p| p.y_ticks.iter().map(move |t| text_width(&format_number(*t, p.y_step), 1)))
        .max()
        .unwrap_or(0);
    let left = PAD + y_label_cols + tick_label_cols + 3 + TICK + 1;
    let right = i64::from(width) - i64::from(PAD) - 6 - 1 - 1;
    if right - i64::from(left) < 40 {
        return Err(Error::config("width", format!("{width} pixels leave no room for the plotting area")));
    }
    let right = right as u32;
    let x_range = chart.x_axis.range.unwrap_or_else(|| {
        let xs = chart.panels.iter().flat_map(|p| p.series.iter()).flat_map(|s| s.points.iter().filter(|q| finite(q)));
        let flat = (chart.x_axis.scale == XScale::Time).then_some(30.0);
        data_range(xs.map(|q| q.0).chain(chart.markers.iter().map(|m| m.x)), 0.02, flat)
    });
    let target = (f64::from(right - left) / 110.0).max(2.0);
    let (x_ticks, x_step) = match chart.x_axis.scale {
        XScale::Linear => linear_ticks(x_range, target),
        XScale::Time => time_ticks(x_range, target),
    };
    Ok(Layout {
        width,
        height,
        x_range,
        left,
        right,
        panels,
        title,
        legend,
        markers,
        x_ticks,
        x_step,
        title_scale,
        title_text,
        legend_rows,
    })
}

fn fit_title(title: &str, room: u32) -> (String, u32) {
    let title = title.trim();
    if title.is_empty() {
        return (String::new(), 1);
    }
    if text_width(title, 2) <= room {
        return (title.to_string(), 2);
    }
    if text_width(title, 1) <= room {
        return (title.to_string(), 1);
    }
    let keep = (room / CHAR_ADVANCE).saturating_sub(3) as usize;
    (format!("{}...", title.chars().take(keep).collect::<String>()), 1)
}

fn legend_rows(chart: &Chart, room: u32) -> Vec<Vec<LegendItem>> {
    let mut items: Vec<LegendItem> = Vec::new();
    let mut add = |item: LegendItem| {
        if !items.iter().any(|i| i.text == item.text && i.color == item.color) {
            items.push(item);
        }
    };
    for s in chart.panels.iter().flat_map(|p| p.series.iter()).filter(|s| !s.name.is_empty()) {
        add(LegendItem { text: s.name.clone(), color: s.color, swatch: LegendSwatch::Series(s.style) });
    }
    for m in chart.markers.iter().filter(|m| !m.legend.is_empty()) {
        add(LegendItem { text: m.legend.clone(), color: m.color, swatch: LegendSwatch::Marker });
    }
    let mut rows: Vec<Vec<LegendItem>> = Vec::new();
    let mut used = 0;
    for item in items {
        let w = item.width();
        match rows.last_mut() {
            Some(row) if used + 14 + w <= room => {
                used += 14 + w;
                row.push(item);
            }
            _ => {
                used = w;
                rows.push(vec![item]);
            }
        }
    }
    rows
}

/// Ticks at multiples of a 1-2-5 step inside `range`, about `target` of them.
fn linear_ticks((lo, hi): (f64, f64), target: f64) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / target;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw * (1.0 - 1e-9)).unwrap_or(10.0 * mag);
    (ticks_of(lo, hi, step), step)
}

fn ticks_of(lo: f64, hi: f64, step: f64) -> Vec<f64> {
    if !(step.is_finite() && step > 0.0) {
        return Vec::new();
    }
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    (first..=last.min(first + 1000)).map(|k| k as f64 * step).collect()
}

/// Round time steps, in seconds.
const TIME_STEPS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    900.0, 1800.0, 3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 86400.0, 172800.0, 604800.0,
];

fn time_ticks((lo, hi): (f64, f64), target: f64) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / target;
    let step = match TIME_STEPS.iter().find(|s| **s >= raw) {
        Some(s) => *s,
        None => linear_ticks((lo / 86400.0, hi / 86400.0), target).1 * 86400.0,
    };
    (ticks_of(lo, hi, step), step)
}

/// `v` with as many decimals as `step` needs.
fn format_number(v: f64, step: f64) -> String {
    let decimals = if step > 0.0 && step.is_finite() { (-(step.log10() + 1e-9).floor()).clamp(0.0, 9.0) } else { 0.0 };
    let s = format!("{v:.*}", decimals as usize);
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
fn civil_date(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// A UTC time label for tick `t` (unix seconds) of a scale stepping by `step` over a
/// range that spans `span` seconds.
fn format_time(t: f64, step: f64, span: f64) -> String {
    let ms = (t * 1000.0).round() as i64;
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let (y, mo, d) = civil_date(days);
    let secs = ms_of_day / 1000;
    let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if step >= 86400.0 {
        return format!("{y:04}-{mo:02}-{d:02}");
    }
    if step >= 60.0 {
        return if span >= 86400.0 { format!("{mo:02}-{d:02} {h:02}:{mi:02}") } else { format!("{h:02}:{mi:02}") };
    }
    if step >= 1.0 {
        return format!("{h:02}:{mi:02}:{s:02}");
    }
    let decimals = (-(step.log10() + 1e-9).floor()).clamp(1.0, 3.0) as usize;
    let frac = format!("{:03}", ms_of_day % 1000);
    format!("{h:02}:{mi:02}:{s:02}.{}", &frac[..decimals])
}

// ---------------------------------------------------------------------------------
// Drawing

struct Canvas {
    img: RgbImage,
}

/// Inclusive pixel rectangle drawing is clipped to.
#[derive(Clone, Copy)]
struct Clip {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Canvas {
    fn all(&self) -> Clip {
        Clip { x0: 0, y0: 0, x1: i64::from(self.img.width()) - 1, y1: i64::from(self.img.height()) - 1 }
    }

    fn put(&mut self, x: i64, y: i64, c: Color, clip: Clip) {
        if x >= clip.x0 && x <= clip.x1 && y >= clip.y0 && y <= clip.y1 {
            if let (Ok(x), Ok(y)) = (u32::try_from(x), u32::try_from(y)) {
                if x < self.img.width() && y < self.img.height() {
                    self.img.put_pixel(x, y, Rgb(c));
                }
            }
        }
    }

    fn rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: Color, clip: Clip) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.put(xx, yy, c, clip);
            }
        }
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: Color, dash: Option<(i64, i64)>, clip: Clip) {
        for x in x0..=x1 {
            if dash.is_none_or(|(on, off)| (x - x0).rem_euclid(on + off) < on) {
                self.put(x, y, c, clip);
            }
        }
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: Color, dash: Option<(i64, i64)>, clip: Clip) {
        for y in y0..=y1 {
            if dash.is_none_or(|(on, off)| (y - y0).rem_euclid(on + off) < on) {
                self.put(x, y, c, clip);
            }
        }
    }

    /// A segment with a `w` x `w` brush (Bresenham).
    fn segment(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), w: i64, c: Color, clip: Clip) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        // Bounded: a segment has at most dx + |dy| + 1 pixels.
        for _ in 0..=(dx - dy) {
            self.rect(x, y, w, w, c, clip);
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

    /// `text` with its top-left corner at (x, y).
    fn text(&mut self, x: i64, y: i64, text: &str, c: Color, scale: u32) {
        let s = i64::from(scale);
        let clip = self.all();
        for (i, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            let gx = x + i as i64 * i64::from(CHAR_ADVANCE) * s;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..GLYPH_COLS {
                    if bits & (1 << (GLYPH_COLS - 1 - col)) != 0 {
                        self.rect(gx + i64::from(col) * s, y + row as i64 * s, s, s, c, clip);
                    }
                }
            }
        }
    }

    /// `text` turned a quarter anticlockwise (reading upwards), its baseline side to
    /// the right: the first character's bottom-left corner at (x, y_bottom).
    fn text_up(&mut self, x: i64, y_bottom: i64, text: &str, c: Color) {
        let clip = self.all();
        for (i, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..GLYPH_COLS {
                    if bits & (1 << (GLYPH_COLS - 1 - col)) != 0 {
                        let along = i as i64 * i64::from(CHAR_ADVANCE) + i64::from(col);
                        self.put(x + row as i64, y_bottom - along, c, clip);
                    }
                }
            }
        }
    }
}

/// The part of segment `a`-`b` within a pixel or two of `clip` (Liang-Barsky), so
/// that a point far outside the ranges costs no more to draw than one inside.
fn clip_segment(a: (f64, f64), b: (f64, f64), clip: Clip) -> Option<((f64, f64), (f64, f64))> {
    let (x0, y0) = (clip.x0 as f64 - 2.0, clip.y0 as f64 - 2.0);
    let (x1, y1) = (clip.x1 as f64 + 2.0, clip.y1 as f64 + 2.0);
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [(-dx, a.0 - x0), (dx, x1 - a.0), (-dy, a.1 - y0), (dy, y1 - a.1)] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let r = q / p;
            if p < 0.0 {
                t0 = t0.max(r);
            } else {
                t1 = t1.min(r);
            }
        }
    }
    (t0 <= t1).then_some(((a.0 + t0 * dx, a.1 + t0 * dy), (a.0 + t1 * dx, a.1 + t1 * dy)))
}

fn px(v: f64) -> i64 {
    if v.is_finite() {
        v.round().clamp(-1e9, 1e9) as i64
    } else {
        i64::MIN / 4
    }
}

fn draw(c: &mut Canvas, chart: &Chart, l: &Layout) {
    let (left, right) = (i64::from(l.left), i64::from(l.right));
    let all = c.all();
    let (span, x_step) = (l.x_range.1 - l.x_range.0, l.x_step);

    for (i, (p, a)) in chart.panels.iter().zip(&l.panels).enumerate() {
        let (top, bottom) = (i64::from(a.top), i64::from(a.bottom));
        let inside = Clip { x0: left, y0: top, x1: right, y1: bottom };
        // Grid.
        for t in &a.y_ticks {
            c.hline(left, right, px(l.y_px(i, *t)), GRID, None, inside);
        }
        for t in &l.x_ticks {
            c.vline(px(l.x_px(*t)), top, bottom, GRID, None, inside);
        }
        // Frame and ticks.
        c.hline(left - 1, right + 1, top - 1, FRAME, None, all);
        c.hline(left - 1, right + 1, bottom + 1, FRAME, None, all);
        c.vline(left - 1, top - 1, bottom + 1, FRAME, None, all);
        c.vline(right + 1, top - 1, bottom + 1, FRAME, None, all);
        for t in &a.y_ticks {
            let y = px(l.y_px(i, *t));
            c.hline(left - 1 - i64::from(TICK), left - 2, y, FRAME, None, all);
            let s = format_number(*t, a.y_step);
            let w = i64::from(text_width(&s, 1));
            let ty = (y - i64::from(CAP_ROWS) / 2).clamp(top - 1, bottom + 2 - i64::from(CAP_ROWS));
            c.text(left - 1 - i64::from(TICK) - 3 - w, ty, &s, TEXT, 1);
        }
        for t in &l.x_ticks {
            let x = px(l.x_px(*t));
            c.vline(x, bottom + 2, bottom + 1 + i64::from(TICK), FRAME, None, all);
        }
        // The y label, centred on the panel.
        if !p.y_label.is_empty() {
            let w = i64::from(text_width(&p.y_label, 1));
            let mid = (top + bottom) / 2;
            c.text_up(i64::from(PAD), (mid + w / 2).min(bottom), &p.y_label, TEXT);
        }
        // Guides.
        for g in &p.guides {
            let y = px(l.y_px(i, g.y));
            c.hline(left, right, y, g.color, Some((6, 4)), inside);
            if !g.label.is_empty() && y >= top && y <= bottom {
                let w = i64::from(text_width(&g.label, 1));
                let ty = if y - top > i64::from(LINE_HEIGHT) { y - 2 - i64::from(CAP_ROWS) } else { y + 3 };
                c.text(right - 2 - w, ty, &g.label, g.color, 1);
            }
        }
    }

    // Markers: dashed lines through every panel, labels above the top one.
    let mut row_ends = [i64::MIN; 2];
    let mut order: Vec<&Marker> = chart.markers.iter().filter(|m| m.x.is_finite()).collect();
    order.sort_by(|a, b| a.x.total_cmp(&b.x));
    for m in order {
        let x = px(l.x_px(m.x));
        if x < left || x > right {
            continue;
        }
        for a in &l.panels {
            let clip = Clip { x0: left, y0: i64::from(a.top), x1: right, y1: i64::from(a.bottom) };
            c.vline(x, i64::from(a.top), i64::from(a.bottom), m.color, Some((4, 3)), clip);
        }
        if m.label.is_empty() {
            continue;
        }
        let w = i64::from(text_width(&m.label, 1));
        let mut lx = x + 3;
        if lx + w > i64::from(l.width) - 2 {
            lx = x - 3 - w;
        }
        let row = if lx > row_ends[0] + 4 {
            0
        } else if lx > row_ends[1] + 4 {
            1
        } else if row_ends[0] <= row_ends[1] {
            0
        } else {
            1
        };
        row_ends[row] = row_ends[row].max(lx + w);
        let ty = i64::from(l.markers.0) + row as i64 * i64::from(LABEL_ROW);
        let first_top = l.panels.first().map_or(0, |a| i64::from(a.top));
        c.vline(x, ty, first_top - 2, m.color, None, all);
        c.text(lx, ty + 1, &m.label, m.color, 1);
    }

    // Series, clipped to their panel.
    for (i, (p, a)) in chart.panels.iter().zip(&l.panels).enumerate() {
        let inside = Clip { x0: left, y0: i64::from(a.top), x1: right, y1: i64::from(a.bottom) };
        let mut any = false;
        for s in &p.series {
            let mut prev: Option<(f64, f64)> = None;
            for q in &s.points {
                let at = (l.x_px(q.0), l.y_px(i, q.1));
                if !(finite(q) && finite(&at)) {
                    prev = None;
                    continue;
                }
                any = true;
                let pt = (px(at.0), px(at.1));
                if matches!(s.style, Style::Line | Style::LinePoints) {
                    match prev.map(|pv| clip_segment(pv, at, inside)) {
                        Some(Some((a, b))) => c.segment((px(a.0), px(a.1)), (px(b.0), px(b.1)), 2, s.color, inside),
                        Some(None) => {}
                        None => c.rect(pt.0, pt.1, 2, 2, s.color, inside),
                    }
                }
                if matches!(s.style, Style::Points | Style::LinePoints) {
                    c.rect(pt.0 - 2, pt.1 - 2, 5, 5, s.color, inside);
                }
                prev = Some(at);
            }
        }
        if !any {
            let msg = "no data";
            let w = i64::from(text_width(msg, 1));
            let mid = (i64::from(a.top) + i64::from(a.bottom)) / 2;
            c.text((left + right - w) / 2, mid - i64::from(CAP_ROWS) / 2, msg, GRAY, 1);
        }
    }

    // X tick labels under the bottom panel, kept inside the image and apart.
    if let Some(a) = l.panels.last() {
        let y = i64::from(a.bottom) + 2 + i64::from(TICK) + 3;
        let mut last_end = i64::MIN;
        for t in &l.x_ticks {
            let s = match chart.x_axis.scale {
                XScale::Linear => format_number(*t, x_step),
                XScale::Time => format_time(*t, x_step, span),
            };
            let w = i64::from(text_width(&s, 1));
            let x = (px(l.x_px(*t)) - w / 2).clamp(1, i64::from(l.width) - 1 - w);
            if x > last_end + 6 {
                c.text(x, y, &s, TEXT, 1);
                last_end = x + w;
            }
        }
        if !chart.x_axis.label.is_empty() {
            let w = i64::from(text_width(&chart.x_axis.label, 1));
            c.text((left + right - w) / 2, y + i64::from(LABEL_ROW) + 2, &chart.x_axis.label, TEXT, 1);
        }
    }

    // Legend rows, centred.
    for (r, row) in l.legend_rows.iter().enumerate() {
        let total: u32 = row.iter().map(|i| i.width()).sum::<u32>() + 14 * (row.len() as u32).saturating_sub(1);
        let mut x = (i64::from(l.width) - i64::from(total)) / 2;
        let y = i64::from(l.legend.0) + r as i64 * i64::from(LABEL_ROW);
        let mid = y + i64::from(CAP_ROWS) / 2;
        for item in row {
            let sw = i64::from(LegendItem::SWATCH);
            match item.swatch {
                LegendSwatch::Series(Style::Line) => c.rect(x, mid, sw, 2, item.color, all),
                LegendSwatch::Series(Style::Points) => c.rect(x + sw / 2 - 2, mid - 2, 5, 5, item.color, all),
                LegendSwatch::Series(Style::LinePoints) => {
                    c.rect(x, mid, sw, 2, item.color, all);
                    c.rect(x + sw / 2 - 2, mid - 2, 5, 5, item.color, all);
                }
                LegendSwatch::Marker => c.vline(x + sw / 2, y - 1, y + i64::from(CAP_ROWS), item.color, None, all),
            }
            c.text(x + sw + 4, y, &item.text, TEXT, 1);
            x += i64::from(item.width()) + 14;
        }
    }

    // Title.
    if !l.title_text.is_empty() {
        let w = i64::from(text_width(&l.title_text, l.title_scale));
        c.text((i64::from(l.width) - w) / 2, i64::from(l.title.0), &l.title_text, TEXT, l.title_scale);
    }
}

// ---------------------------------------------------------------------------------
// Font

/// Glyph columns (bit 4 is the leftmost) and rows: rows 0-6 hold capitals and digits
/// (the baseline under row 6), rows 7-8 the descenders of `g j p q y , _`.
const GLYPH_COLS: u32 = 5;
const GLYPH_ROWS: u32 = 9;
const CAP_ROWS: u32 = 7;
/// Horizontal advance of a character and height of a line of text, at scale 1.
const CHAR_ADVANCE: u32 = 6;
const LINE_HEIGHT: u32 = 9;

/// Width in pixels of `text` at `scale` (no trailing gap).
pub fn text_width(text: &str, scale: u32) -> u32 {
    let n = text.chars().count() as u32;
    (n * CHAR_ADVANCE).saturating_sub(1) * scale
}

fn glyph(c: char) -> &'static [u8; 9] {
    let i = c as u32;
    if (0x20..0x7f).contains(&i) {
        &FONT[(i - 0x20) as usize]
    } else {
        &FONT[('?' as u32 - 0x20) as usize]
    }
}

/// The printable ASCII characters, 0x20 (space) to 0x7e (`~`), in order.
#[rustfmt::skip]
const FONT: [[u8; 9]; 95] = [
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // ' '
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00100, 0b00000, 0b00000], // !
    [0b01010, 0b01010, 0b01010, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // "
    [0b01010, 0b01010, 0b11111, 0b01010, 0b11111, 0b01010, 0b01010, 0b00000, 0b00000], // #
    [0b00100, 0b01111, 0b10100, 0b01110, 0b00101, 0b11110, 0b00100, 0b00000, 0b00000], // $
    [0b11000, 0b11001, 0b00010, 0b00100, 0b01000, 0b10011, 0b00011, 0b00000, 0b00000], // %
    [0b01100, 0b10010, 0b10100, 0b01000, 0b10101, 0b10010, 0b01101, 0b00000, 0b00000], // &
    [0b00100, 0b00100, 0b01000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // '
    [0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00100, 0b00010, 0b00000, 0b00000], // (
    [0b01000, 0b00100, 0b00010, 0b00010, 0b00010, 0b00100, 0b01000, 0b00000, 0b00000], // )
    [0b00000, 0b00100, 0b10101, 0b01110, 0b10101, 0b00100, 0b00000, 0b00000, 0b00000], // *
    [0b00000, 0b00100, 0b00100, 0b11111, 0b00100, 0b00100, 0b00000, 0b00000, 0b00000], // +
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b00100, 0b01000, 0b00000], // ,
    [0b00000, 0b00000, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // -
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000], // .
    [0b00000, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b00000, 0b00000, 0b00000], // /
    [0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110, 0b00000, 0b00000], // 0
    [0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000], // 1
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000, 0b00000], // 2
    [0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110, 0b00000, 0b00000], // 3
    [0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010, 0b00000, 0b00000], // 4
    [0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110, 0b00000, 0b00000], // 5
    [0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000], // 6
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000, 0b00000, 0b00000], // 7
    [0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000], // 8
    [0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100, 0b00000, 0b00000], // 9
    [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b01100, 0b00000, 0b00000, 0b00000], // :
    [0b00000, 0b01100, 0b01100, 0b00000, 0b01100, 0b00100, 0b01000, 0b00000, 0b00000], // ;
    [0b00010, 0b00100, 0b01000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00000, 0b00000], // <
    [0b00000, 0b00000, 0b11111, 0b00000, 0b11111, 0b00000, 0b00000, 0b00000, 0b00000], // =
    [0b01000, 0b00100, 0b00010, 0b00001, 0b00010, 0b00100, 0b01000, 0b00000, 0b00000], // >
    [0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b00000, 0b00100, 0b00000, 0b00000], // ?
    [0b01110, 0b10001, 0b00001, 0b01101, 0b10101, 0b10101, 0b01110, 0b00000, 0b00000], // @
    [0b01110, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000], // A
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10001, 0b10001, 0b11110, 0b00000, 0b00000], // B
    [0b01110, 0b10001, 0b10000, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000, 0b00000], // C
    [0b11100, 0b10010, 0b10001, 0b10001, 0b10001, 0b10010, 0b11100, 0b00000, 0b00000], // D
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b11111, 0b00000, 0b00000], // E
    [0b11111, 0b10000, 0b10000, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000], // F
    [0b01110, 0b10001, 0b10000, 0b10111, 0b10001, 0b10001, 0b01111, 0b00000, 0b00000], // G
    [0b10001, 0b10001, 0b10001, 0b11111, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000], // H
    [0b01110, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000], // I
    [0b00111, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100, 0b00000, 0b00000], // J
    [0b10001, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b10001, 0b00000, 0b00000], // K
    [0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b10000, 0b11111, 0b00000, 0b00000], // L
    [0b10001, 0b11011, 0b10101, 0b10101, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000], // M
    [0b10001, 0b10001, 0b11001, 0b10101, 0b10011, 0b10001, 0b10001, 0b00000, 0b00000], // N
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000], // O
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000], // P
    [0b01110, 0b10001, 0b10001, 0b10001, 0b10101, 0b10010, 0b01101, 0b00000, 0b00000], // Q
    [0b11110, 0b10001, 0b10001, 0b11110, 0b10100, 0b10010, 0b10001, 0b00000, 0b00000], // R
    [0b01111, 0b10000, 0b10000, 0b01110, 0b00001, 0b00001, 0b11110, 0b00000, 0b00000], // S
    [0b11111, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000], // T
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000], // U
    [0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000, 0b00000], // V
    [0b10001, 0b10001, 0b10001, 0b10101, 0b10101, 0b10101, 0b01010, 0b00000, 0b00000], // W
    [0b10001, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b10001, 0b00000, 0b00000], // X
    [0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000], // Y
    [0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b10000, 0b11111, 0b00000, 0b00000], // Z
    [0b01110, 0b01000, 0b01000, 0b01000, 0b01000, 0b01000, 0b01110, 0b00000, 0b00000], // [
    [0b00000, 0b10000, 0b01000, 0b00100, 0b00010, 0b00001, 0b00000, 0b00000, 0b00000], // \
    [0b01110, 0b00010, 0b00010, 0b00010, 0b00010, 0b00010, 0b01110, 0b00000, 0b00000], // ]
    [0b00100, 0b01010, 0b10001, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // ^
    [0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b11111, 0b00000], // _
    [0b01000, 0b00100, 0b00010, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000, 0b00000], // `
    [0b00000, 0b00000, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111, 0b00000, 0b00000], // a
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b11110, 0b00000, 0b00000], // b
    [0b00000, 0b00000, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110, 0b00000, 0b00000], // c
    [0b00001, 0b00001, 0b01101, 0b10011, 0b10001, 0b10001, 0b01111, 0b00000, 0b00000], // d
    [0b00000, 0b00000, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110, 0b00000, 0b00000], // e
    [0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000, 0b00000, 0b00000], // f
    [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b10011, 0b01101, 0b00001, 0b01110], // g
    [0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000], // h
    [0b00100, 0b00000, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000], // i
    [0b00010, 0b00000, 0b00110, 0b00010, 0b00010, 0b00010, 0b00010, 0b10010, 0b01100], // j
    [0b10000, 0b10000, 0b10010, 0b10100, 0b11000, 0b10100, 0b10010, 0b00000, 0b00000], // k
    [0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110, 0b00000, 0b00000], // l
    [0b00000, 0b00000, 0b11010, 0b10101, 0b10101, 0b10101, 0b10101, 0b00000, 0b00000], // m
    [0b00000, 0b00000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001, 0b00000, 0b00000], // n
    [0b00000, 0b00000, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110, 0b00000, 0b00000], // o
    [0b00000, 0b00000, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110, 0b10000, 0b10000], // p
    [0b00000, 0b00000, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b00001], // q
    [0b00000, 0b00000, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000, 0b00000, 0b00000], // r
    [0b00000, 0b00000, 0b01111, 0b10000, 0b01110, 0b00001, 0b11110, 0b00000, 0b00000], // s
    [0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110, 0b00000, 0b00000], // t
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101, 0b00000, 0b00000], // u
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b01010, 0b00100, 0b00000, 0b00000], // v
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10101, 0b10101, 0b01010, 0b00000, 0b00000], // w
    [0b00000, 0b00000, 0b10001, 0b01010, 0b00100, 0b01010, 0b10001, 0b00000, 0b00000], // x
    [0b00000, 0b00000, 0b10001, 0b10001, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110], // y
    [0b00000, 0b00000, 0b11111, 0b00010, 0b00100, 0b01000, 0b11111, 0b00000, 0b00000], // z
    [0b00010, 0b00100, 0b00100, 0b01000, 0b00100, 0b00100, 0b00010, 0b00000, 0b00000], // {
    [0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00000, 0b00000], // |
    [0b01000, 0b00100, 0b00100, 0b00010, 0b00100, 0b00100, 0b01000, 0b00000, 0b00000], // }
    [0b00000, 0b00000, 0b01000, 0b10101, 0b00010, 0b00000, 0b00000, 0b00000, 0b00000], // ~
];

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode(png: &[u8]) -> RgbImage {
        image::load_from_memory_with_format(png, image::ImageFormat::Png).unwrap().to_rgb8()
    }

    fn is(img: &RgbImage, x: f64, y: f64, c: Color) -> bool {
        img.get_pixel(x.round() as u32, y.round() as u32).0 == c
    }

    /// Rows of column `x` that have colour `c`.
    fn rows_of(img: &RgbImage, x: u32, c: Color) -> Vec<u32> {
        (0..img.height()).filter(|y| img.get_pixel(x, *y).0 == c).collect()
    }

    fn flat(y: f64, color: Color) -> Series {
        Series::line(format!("at {y}"), color, (0..=10).map(|x| (x as f64, y)).collect())
    }

    fn one_panel(series: Vec<Series>) -> Chart {
        Chart {
            title: "A chart".into(),
            x_axis: XAxis { label: "step".into(), ..Default::default() },
            panels: vec![Panel { y_label: "accuracy".into(), y_range: Some((0.0, 1.0)), series, ..Default::default() }],
            markers: vec![],
        }
    }

    #[test]
    fn the_png_decodes_to_the_asked_size() {
        let chart = one_panel(vec![flat(0.5, BLUE)]);
        let png = render_png(&chart, 640, 360).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let img = decode(&png);
        assert_eq!(img.dimensions(), (640, 360));
        assert_eq!(img, render(&chart, 640, 360).unwrap());
    }

    #[test]
    fn flat_series_sit_at_the_top_bottom_and_middle_of_the_plotting_area() {
        let chart = one_panel(vec![flat(1.0, BLUE), flat(0.0, ORANGE), flat(0.5, GREEN)]);
        let img = decode(&render_png(&chart, 500, 300).unwrap());
        // Find the frame independently of the layout: the frame colour in a middle column.
        let x = 250;
        let frame = rows_of(&img, x, FRAME);
        let (f_top, f_bottom) = (*frame.first().unwrap(), *frame.last().unwrap());
        assert!(f_bottom - f_top > 100, "{frame:?}");
        let blue = rows_of(&img, x, BLUE);
        let orange = rows_of(&img, x, ORANGE);
        let green = rows_of(&img, x, GREEN);
        // 1.0 on the first row inside the frame (2 pixels wide, downwards), 0.0 on the
        // last (its second row clipped away), 0.5 halfway.
        assert_eq!(blue, [f_top + 1, f_top + 2]);
        assert_eq!(orange, [f_bottom - 1]);
        let mid = (f_top + 1 + f_bottom - 1) as f64 / 2.0;
        assert!((green[0] as f64 - mid).abs() <= 1.0, "{green:?} vs {mid}");
        // The layout agrees, and the lines run from the first x to the last.
        let l = layout(&chart, 500, 300).unwrap();
        assert_eq!((l.panels[0].top, l.panels[0].bottom), (f_top + 1, f_bottom - 1));
        for t in [0.0, 3.3, 10.0] {
            assert!(is(&img, l.x_px(t), l.y_px(0, 1.0), BLUE), "x {t}");
            assert!(is(&img, l.x_px(t), l.y_px(0, 0.0), ORANGE), "x {t}");
        }
        // Nothing of the series leaks outside the plotting area.
        for (x, y, p) in img.enumerate_pixels() {
            if p.0 == BLUE || p.0 == ORANGE || p.0 == GREEN {
                let legend = y >= l.legend.0 && y < l.legend.1;
                assert!(legend || (x >= l.left && x <= l.right && y >= f_top && y <= f_bottom), "({x}, {y})");
            }
        }
    }

    #[test]
    fn points_are_drawn_at_their_coordinates_and_a_rising_line_rises() {
        let dots = Series::points("dots", RED, vec![(1.0, 0.25), (4.0, 0.75)]);
        let rise = Series::line("rise", BLUE, vec![(0.0, 0.0), (10.0, 1.0)]);
        let mut chart = one_panel(vec![rise, dots]);
        chart.x_axis.range = Some((0.0, 10.0));
        let img = render(&chart, 400, 300).unwrap();
        let l = layout(&chart, 400, 300).unwrap();
        for (x, y) in [(1.0, 0.25), (4.0, 0.75)] {
            let (cx, cy) = (l.x_px(x).round() as i64, l.y_px(0, y).round() as i64);
            for dx in -2..=2 {
                for dy in -2..=2 {
                    assert!(is(&img, (cx + dx) as f64, (cy + dy) as f64, RED), "({x}, {y}) + ({dx}, {dy})");
                }
            }
            assert!(!is(&img, (cx + 4) as f64, cy as f64, RED));
        }
        // Left to right, the line's topmost row goes up.
        let tops: Vec<u32> = (l.left + 5..l.right - 5)
            .step_by(40)
            .map(|x| *rows_of(&img, x, BLUE).iter().filter(|y| **y > l.legend.1).min().unwrap())
            .collect();
        assert!(tops.windows(2).all(|w| w[1] < w[0]), "{tops:?}");
    }

    #[test]
    fn markers_stand_at_their_time_in_every_panel_with_their_label() {
        let t0 = 1_767_225_600.0; // 2026-01-01T00:00:00Z
        let acc = Series::line("accuracy", BLUE, (0..=60).map(|i| (t0 + i as f64, 0.9)).collect());
        let drift = Series::points("drift", ORANGE, vec![(t0 + 10.0, 0.1), (t0 + 50.0, 0.8)]);
        let chart = Chart {
            title: "timeline".into(),
            x_axis: XAxis { label: "time (UTC)".into(), scale: XScale::Time, range: None },
            panels: vec![
                Panel { y_range: Some((0.0, 1.0)), series: vec![acc], ..Default::default() },
                Panel { y_range: Some((0.0, 1.0)), series: vec![drift], weight: 0.5, ..Default::default() },
            ],
            markers: vec![Marker { x: t0 + 42.0, label: "v2".into(), color: GREEN, legend: "promoted".into() }],
        };
        let img = render(&chart, 600, 400).unwrap();
        let l = layout(&chart, 600, 400).unwrap();
        let x = l.x_px(t0 + 42.0).round() as u32;
        for a in &l.panels {
            let rows = (a.top..=a.bottom).filter(|y| img.get_pixel(x, *y).0 == GREEN).count() as f64;
            let share = rows / f64::from(a.bottom - a.top + 1);
            assert!(share > 0.4, "dashed: {share}");
            for off in [-3i64, 3] {
                let col = (x as i64 + off) as u32;
                assert!((a.top..=a.bottom).all(|y| img.get_pixel(col, y).0 != GREEN), "{off}");
            }
        }
        // The label "v2" right of the line, above the top panel.
        let label = (l.markers.0..l.markers.1)
            .flat_map(|y| (x + 2..x + 16).map(move |x| (x, y)))
            .filter(|(x, y)| img.get_pixel(*x, *y).0 == GREEN)
            .count();
        assert!(label > 10, "{label} label pixels");
        // Time ticks read as times of day.
        assert!(l.x_ticks.iter().all(|t| (t - t0).rem_euclid(l.x_step) < 1e-6), "{:?}", l.x_ticks);
    }

    #[test]
    fn the_title_is_drawn_centred_at_the_top() {
        let chart = one_panel(vec![flat(0.5, BLUE)]);
        let img = render(&chart, 400, 300).unwrap();
        let l = layout(&chart, 400, 300).unwrap();
        assert!(l.title.1 > l.title.0);
        let in_title = |img: &RgbImage, x0: u32, x1: u32| {
            (l.title.0..l.title.1)
                .flat_map(|y| (x0..x1).map(move |x| (x, y)))
                .filter(|(x, y)| img.get_pixel(*x, *y).0 == TEXT)
                .count()
        };
        let w = text_width("A chart", 2);
        let x0 = (400 - w) / 2;
        let inside = in_title(&img, x0, x0 + w);
        assert!(inside > 40, "{inside}");
        assert_eq!(in_title(&img, 0, x0) + in_title(&img, x0 + w + 1, 400), 0);
        // The first glyph, doubled, pixel for pixel.
        let a = glyph('A');
        for (row, bits) in a.iter().enumerate() {
            for col in 0..5u32 {
                let on = bits & (1 << (4 - col)) != 0;
                let p = img.get_pixel(x0 + col * 2 + 1, l.title.0 + row as u32 * 2 + 1).0;
                assert_eq!(p == TEXT, on, "A at row {row} col {col}");
            }
        }
        // Without a title the band is gone and the panel starts higher.
        let mut untitled = chart.clone();
        untitled.title = String::new();
        let l2 = layout(&untitled, 400, 300).unwrap();
        assert_eq!(l2.title.0, l2.title.1);
        assert!(l2.panels[0].top < l.panels[0].top);
    }

    #[test]
    fn the_font_has_one_distinct_glyph_per_printable_character() {
        for (i, g) in FONT.iter().enumerate() {
            let c = char::from(0x20 + i as u8);
            assert!(g.iter().all(|r| *r < 32), "{c:?} is wider than 5 columns");
            if c != ' ' {
                assert!(g.iter().any(|r| *r != 0), "{c:?} is blank");
            }
            for (j, h) in FONT.iter().enumerate().skip(i + 1) {
                assert_ne!(g, h, "{c:?} and {:?} look the same", char::from(0x20 + j as u8));
            }
        }
        assert_eq!(glyph('é'), glyph('?'));
        assert_eq!(text_width("abc", 1), 17);
        assert_eq!(text_width("", 2), 0);
    }

    #[test]
    fn ticks_numbers_and_dates() {
        let (t, step) = linear_ticks((0.0, 1.0), 5.0);
        assert_eq!(step, 0.2);
        assert_eq!(t.len(), 6);
        assert_eq!(format_number(t[3], step), "0.6");
        assert_eq!(format_number(-0.0001, 0.1), "0.0");
        assert_eq!(format_number(1500.0, 500.0), "1500");
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(19_723), (2024, 1, 1));
        assert_eq!(civil_date(19_782), (2024, 2, 29));
        assert_eq!(civil_date(-1), (1969, 12, 31));
        let t = 1_704_112_496.5; // 2024-01-01T12:34:56.5Z
        assert_eq!(format_time(t, 10.0, 100.0), "12:34:56");
        assert_eq!(format_time(t, 0.5, 5.0), "12:34:56.5");
        assert_eq!(format_time(t, 300.0, 3600.0), "12:34");
        assert_eq!(format_time(t, 3600.0, 3.0 * 86400.0), "01-01 12:34");
        assert_eq!(format_time(t, 86400.0, 30.0 * 86400.0), "2024-01-01");
        let (ticks, step) = time_ticks((t, t + 3600.0), 6.0);
        assert_eq!(step, 600.0);
        assert!(ticks.iter().all(|x| x.rem_euclid(600.0) == 0.0 && *x >= t && *x <= t + 3600.0));
    }

    #[test]
    fn sizes_ranges_and_weights_that_cannot_be_drawn_are_config_errors() {
        let field = |chart: &Chart, w: u32, h: u32| match render_png(chart, w, h).unwrap_err() {
            Error::InvalidConfig { field, .. } => field,
            e => panic!("{e}"),
        };
        let ok = one_panel(vec![flat(0.5, BLUE)]);
        assert_eq!(field(&ok, 20, 300), "width");
        assert_eq!(field(&ok, 400, 20_000), "height");
        let mut many = ok.clone();
        many.panels = vec![Panel::default(); 12];
        assert_eq!(field(&many, 400, 200), "height");
        assert_eq!(field(&Chart::default(), 400, 300), "panels");
        let mut bad = ok.clone();
        bad.panels[0].y_range = Some((1.0, 1.0));
        assert_eq!(field(&bad, 400, 300), "panels[0].y_range");
        let mut bad = ok.clone();
        bad.x_axis.range = Some((0.0, f64::NAN));
        assert_eq!(field(&bad, 400, 300), "x_axis.range");
        let mut bad = ok;
        bad.panels[0].weight = 0.0;
        assert_eq!(field(&bad, 400, 300), "panels[0].weight");
    }

    #[test]
    fn empty_and_odd_data_still_render() {
        let mut chart = one_panel(vec![Series::line("", BLUE, vec![(f64::NAN, 1.0), (1.0, f64::INFINITY)])]);
        chart.panels[0].y_range = None;
        chart.title = "x".repeat(500);
        chart.markers = vec![Marker { x: f64::NAN, label: "nowhere".into(), color: RED, legend: String::new() }];
        let img = render(&chart, 300, 200).unwrap();
        assert!(img.pixels().all(|p| p.0 != BLUE && p.0 != RED));
        assert!(img.pixels().any(|p| p.0 == GRAY), "no 'no data' note");
        // A single point: a range around it.
        let single = one_panel(vec![Series::points("one", BLUE, vec![(5.0, 0.5)])]);
        let l = layout(&single, 300, 200).unwrap();
        assert!(l.x_range.0 < 5.0 && l.x_range.1 > 5.0);
        let img = render(&single, 300, 200).unwrap();
        assert!(is(&img, l.x_px(5.0), l.y_px(0, 0.5), BLUE));
    }

    #[test]
    fn a_segment_far_outside_the_range_is_cut_at_the_frame() {
        let far = Series::line("far", BLUE, vec![(0.0, 0.5), (1e15, 0.5), (2.0, 1e15)]);
        let mut chart = one_panel(vec![far]);
        chart.x_axis.range = Some((0.0, 10.0));
        let img = render(&chart, 400, 300).unwrap(); // would take hours unclipped
        let l = layout(&chart, 400, 300).unwrap();
        let y = l.y_px(0, 0.5);
        assert!(is(&img, f64::from(l.left), y, BLUE) && is(&img, f64::from(l.right), y, BLUE));
        assert!(!is(&img, f64::from(l.right) + 2.0, y, BLUE));
        assert_eq!(clip_segment((0.0, 0.0), (10.0, 0.0), Clip { x0: 20, y0: 20, x1: 30, y1: 30 }), None);
        let c = clip_segment((0.0, 5.0), (100.0, 5.0), Clip { x0: 10, y0: 0, x1: 20, y1: 10 }).unwrap();
        assert_eq!(c, ((8.0, 5.0), (22.0, 5.0)));
    }

    #[test]
    fn write_png_replaces_the_file_whole_and_names_a_bad_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("chart.png");
        std::fs::write(&p, b"old").unwrap();
        write_png(&one_panel(vec![flat(0.5, BLUE)]), 320, 200, &p).unwrap();
        assert_eq!(decode(&std::fs::read(&p).unwrap()).dimensions(), (320, 200));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["chart.png"]);
        let missing = dir.path().join("no/such/dir/chart.png");
        let e = write_png(&one_panel(vec![]), 320, 200, &missing).unwrap_err();
        assert!(e.to_string().contains("no/such/dir/chart.png"), "{e}");
    }
}
