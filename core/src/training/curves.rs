//! A job's loss curves as a PNG ([`super::TrainingEngine::plot`]), from its metrics rows.
//!
//! ```text
//!  loss │‾\__                      train loss ─   eval loss ●
//!       │    \___●____●____●
//!  lr   │ /‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾‾\
//!       └────────────────────────▶ step
//! ```

use crate::plot::{self, Chart, Panel, Series, Style, XAxis, XScale};
use crate::types::{JobRecord, MetricKind, MetricPoint, PlotOptions};

/// The chart [`super::TrainingEngine::plot`] draws: on a step axis, a **loss** panel
/// (each optimiser step's training loss as a blue line, each evaluation's loss as
/// orange dots joined by a line) and, when steps recorded one, a **learning rate**
/// panel (green). A job without metrics yet gets empty panels (axes, no data).
pub fn loss_chart(job: &JobRecord, points: &[MetricPoint], opts: &PlotOptions) -> Chart {
    let train: Vec<(f64, f64)> =
        points.iter().filter(|p| p.kind == MetricKind::Train).map(|p| (p.step as f64, p.loss)).collect();
    let eval: Vec<(f64, f64)> =
        points.iter().filter(|p| p.kind == MetricKind::Eval).map(|p| (p.step as f64, p.loss)).collect();
    let lr: Vec<(f64, f64)> = points
        .iter()
        .filter(|p| p.kind == MetricKind::Train)
        .filter_map(|p| p.lr.map(|lr| (p.step as f64, lr)))
        .collect();
    let mut loss = vec![Series::line("train loss", plot::BLUE, train)];
    if !eval.is_empty() {
        loss.push(Series { name: "eval loss".into(), color: plot::ORANGE, style: Style::LinePoints, points: eval });
    }
    let mut panels = vec![Panel { y_label: "loss".into(), series: loss, weight: 3.0, ..Default::default() }];
    if !lr.is_empty() {
        panels.push(Panel {
            y_label: "learning rate".into(),
            series: vec![Series::line("learning rate", plot::GREEN, lr)],
            ..Default::default()
        });
    }
    let title = opts.title.clone().unwrap_or_else(|| {
        let last = job.loss.map(|l| format!(", loss {l:.4}")).unwrap_or_default();
        let eval = job.eval_loss.map(|l| format!(", eval {l:.4}")).unwrap_or_default();
        format!("{} ({}, step {}/{}{last}{eval})", job.id, job.status.as_str(), job.step, job.total_steps)
    });
    // Steps start at 1; a job with a single point still gets a readable axis.
    let last_step = points.iter().map(|p| p.step).max().unwrap_or(0).max(job.total_steps).max(1) as f64;
    Chart {
        title,
        x_axis: XAxis { label: "step".into(), scale: XScale::Linear, range: Some((0.0, last_step * 1.02)) },
        panels,
        markers: Vec::new(),
    }
}
