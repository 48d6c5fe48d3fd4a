//! A model name over time, from its catalog rows: realised accuracy (a rolling window
//! of labelled predictions, per serving version), drift checks, evaluations, and the
//! promotions, rollbacks and retrains to mark; and its PNG plot.
//!
//! ```text
//!  accuracy │‾‾‾‾‾‾‾‾\___      ┆     ___/‾‾‾‾   v1 ─  v2 ─  (one colour per version)
//!           │  monitor floor ╌╌╌┆╌╌╌╌╌╌╌╌╌╌╌╌╌
//!  drift    │ ·   ·    ●   ●   ┆  ·              share of drifted columns; ● = drift
//!           └──────────────────┴──────────────▶ time (UTC)
//!                           retrain, v2 promoted
//! ```

use std::path::Path;
use std::time::UNIX_EPOCH;

use super::Continual;
use crate::catalog::timeline as sql;
use crate::error::{Error, Result};
use crate::plot::{self, Chart, Color, Guide, Marker, Panel, Series, Style, XAxis, XScale};
use crate::registry::ModelRegistry;
use crate::types::{DriftVerdict, PlotOptions, Timeline, TimelineEventKind, TimelineOptions};
use crate::util;

/// Colours of the versions' accuracy lines, in turn (v1 the first).
const VERSION_COLORS: [Color; 6] =
    [plot::BLUE, [23, 190, 207], [188, 189, 34], [227, 119, 194], [0, 0, 128], [0, 128, 128]];

/// Both panels' y range: 0 to 1 with a margin, so that dots at 0 or 1 show whole.
const UNIT_RANGE: (f64, f64) = (-0.03, 1.03);

/// The colour of version `v`'s series.
pub fn version_color(v: u32) -> Color {
    VERSION_COLORS[(v.max(1) as usize - 1) % VERSION_COLORS.len()]
}

/// Marker colours per event kind.
pub fn event_color(kind: TimelineEventKind) -> Color {
    match kind {
        TimelineEventKind::Promoted => plot::GREEN,
        TimelineEventKind::RolledBack => plot::PURPLE,
        TimelineEventKind::RetrainStarted => plot::GRAY,
        TimelineEventKind::Kept => plot::BROWN,
    }
}

/// Unix seconds of a catalog time (NaN if it does not parse: the plot skips it).
fn unix_seconds(at: &str) -> f64 {
    humantime::parse_rfc3339_weak(at.trim_end_matches('Z'))
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(f64::NAN, |d| d.as_secs_f64())
}

/// The chart [`Continual::plot_timeline`] draws: two panels on a UTC time axis.
///
/// - **accuracy** (0 to 1): the rolling realised accuracy, one line colour per serving
///   version ([`version_color`]; one line per run of predictions a version served);
///   evaluations' `accuracy` as dots in the evaluated version's colour; the monitors'
///   accuracy floor as a dashed red line.
/// - **drift** (0 to 1): each check's score (share of drifted columns; KS statistic of
///   the loss for language models), orange; checks whose verdict is `drift` in red.
///   `insufficient_data` checks have no score and are not drawn.
/// - Markers across both: promotions (green, labelled with the new version), rollbacks
///   (purple), retrains started (gray), candidates kept out by the gate (brown).
pub fn timeline_chart(t: &Timeline, opts: &PlotOptions) -> Chart {
    // One line per run of a version (not joined: the gap between two versions' runs
    // is time in which neither served a labelled prediction).
    let mut accuracy: Vec<Series> = Vec::new();
    let mut current: Option<u32> = None;
    for p in &t.accuracy {
        if current != Some(p.version) {
            current = Some(p.version);
            accuracy.push(Series::line(format!("v{} accuracy", p.version), version_color(p.version), Vec::new()));
        }
        if let Some(s) = accuracy.last_mut() {
            s.points.push((unix_seconds(&p.at), p.accuracy));
        }
    }
    for e in &t.evaluations {
        if let Some(a) = e.metrics.get("accuracy") {
            let name = format!("v{} evaluated", e.version);
            let color = version_color(e.version);
            let pt = (unix_seconds(&e.at), *a);
            match accuracy.iter_mut().find(|s| s.style == Style::Points && s.name == name) {
                Some(s) => s.points.push(pt),
                None => accuracy.push(Series::points(name, color, vec![pt])),
            }
        }
    }
    let guides = t
        .accuracy_floor
        .map(|f| Guide { y: f, label: format!("monitor floor {f}"), color: plot::RED })
        .into_iter()
        .collect();
    let scored: Vec<(f64, f64)> = t.drift.iter().filter_map(|d| d.score.map(|s| (unix_seconds(&d.at), s))).collect();
    let drifted: Vec<(f64, f64)> = t
        .drift
        .iter()
        .filter(|d| d.verdict == DriftVerdict::Drift)
        .filter_map(|d| d.score.map(|s| (unix_seconds(&d.at), s)))
        .collect();
    let mut drift =
        vec![Series { name: "drift score".into(), color: plot::ORANGE, style: Style::LinePoints, points: scored }];
    if !drifted.is_empty() {
        drift.push(Series::points("drift detected", plot::RED, drifted));
    }
    let markers = t
        .events
        .iter()
        .map(|e| {
            let v = e.version.map_or_else(|| "?".to_string(), |v| format!("v{v}"));
            let (label, legend) = match e.kind {
                TimelineEventKind::Promoted => (v, "promoted"),
                TimelineEventKind::RolledBack => (format!("back to {v}"), "rolled back"),
                TimelineEventKind::RetrainStarted => ("retrain".to_string(), "retrain started"),
                TimelineEventKind::Kept => (format!("{v} kept out"), "candidate kept out"),
            };
            Marker { x: unix_seconds(&e.at), label, color: event_color(e.kind), legend: legend.into() }
        })
        .collect();
    Chart {
        title: opts.title.clone().unwrap_or_else(|| format!("{}: realised accuracy and drift", t.model_name)),
        x_axis: XAxis { label: "time (UTC)".into(), scale: XScale::Time, range: None },
        panels: vec![
            Panel {
                y_label: format!("accuracy (last {})", t.window),
                y_range: Some(UNIT_RANGE),
                series: accuracy,
                guides,
                weight: 2.0,
            },
            Panel {
                y_label: "drift score".into(),
                y_range: Some(UNIT_RANGE),
                series: drift,
                guides: Vec::new(),
                weight: 1.0,
            },
        ],
        markers,
    }
}

impl Continual {
    /// The model name over time, from the catalog's rows only: the rolling realised
    /// accuracy after each labelled prediction with the version that served it, each
    /// version's accuracy over the range, the drift checks and evaluations of its
    /// versions, and the promotions, rollbacks, retrains started and candidates kept
    /// out (see [`Timeline`] and [`TimelineOptions`]).
    ///
    /// `model_name` is a model name; a model reference (`churn@production`, an id)
    /// stands for its name. A name the home has never had is `not_found`; bad options
    /// are `invalid_config` naming the field.
    pub fn timeline(&self, model_name: &str, opts: &TimelineOptions) -> Result<Timeline> {
        let (since, until) = opts.checked()?;
        let name = self.timeline_name(model_name)?;
        let (since_s, until_s) = (since.as_deref(), until.as_deref());
        self.store.catalog.snapshot(|c| {
            let (accuracy, labelled) = sql::accuracy(c, &name, opts.window, since_s, until_s, opts.max_points)?;
            Ok(Timeline {
                window: opts.window,
                labelled,
                accuracy,
                versions: sql::versions(c, &name, since_s, until_s)?,
                drift: sql::drift(c, &name, since_s, until_s)?,
                evaluations: sql::evaluations(c, &name, since_s, until_s)?,
                events: sql::events(c, &name, since_s, until_s)?,
                accuracy_floor: sql::accuracy_floor(c, &name)?,
                since: since.clone(),
                until: until.clone(),
                model_name: name.clone(),
            })
        })
    }

    /// Renders [`Continual::timeline`] as a PNG at `path` (see [`timeline_chart`] for
    /// what is drawn) and returns the timeline drawn. The file is written atomically (a
    /// temporary file beside it, then a rename): a reader sees the old plot or the new
    /// one, never half of one. A size too small for the chart is `invalid_config`
    /// naming `width` or `height`; an unwritable path is `io` naming it.
    pub fn plot_timeline(
        &self,
        model_name: &str,
        path: impl AsRef<Path>,
        opts: &TimelineOptions,
        plot_opts: &PlotOptions,
    ) -> Result<Timeline> {
        self.timeline_png(model_name, Some(path.as_ref()), opts, plot_opts).map(|(t, _)| t)
    }

    /// [`Continual::plot_timeline`] that also returns the PNG's bytes, and writes the
    /// file only when `path` is given (atomically, as `plot_timeline`): what the
    /// bindings' `plot_timeline` returns.
    pub fn timeline_png(
        &self,
        model_name: &str,
        path: Option<&Path>,
        opts: &TimelineOptions,
        plot_opts: &PlotOptions,
    ) -> Result<(Timeline, Vec<u8>)> {
        if let Some(p) = path {
            util::check_path("path", p)?;
        }
        let t = self.timeline(model_name, opts)?;
        let png = plot::render_png(&timeline_chart(&t, plot_opts), plot_opts.width, plot_opts.height)?;
        if let Some(p) = path {
            util::write_atomic(p, &png)?;
        }
        Ok((t, png))
    }

    fn timeline_name(&self, model_name: &str) -> Result<String> {
        if !model_name.contains('@') && self.store.catalog.read(|c| sql::name_known(c, model_name))? {
            return Ok(model_name.to_string());
        }
        match ModelRegistry::new(self.store.clone()).resolve(model_name) {
            Ok(m) => Ok(m.name),
            Err(Error::NotFound { .. }) => Err(Error::not_found("model", model_name)),
            Err(e) => Err(e),
        }
    }
}
