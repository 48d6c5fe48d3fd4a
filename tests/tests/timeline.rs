//! The timeline of a monitored model from a real monitor run (a seeded scenario whose
//! concept and features move at row 300: predicted, labelled, drift-checked, ticked
//! until the monitor retrains and promotes, then rolled back), checked against the
//! rows the run logged; and its PNG plot, decoded and inspected.

#![allow(clippy::unwrap_used)]

use crate::common;

use anneal::plot::{self, TEXT};
use anneal::tabular::synthetic::{generate, SyntheticRows};
use anneal::types::DriftVerdict;
use anneal::{
    AliasAction, DecisionKind, DriftWindow, GatePolicy, Home, MonitorOptions, PlotOptions, PredictionFilter,
    PromotionMode, RecordingSink, RetrainAction, RetrainGuards, RetrainPolicy, RetrainTriggers, ScenarioDrift,
    ScenarioDriftKind, ScenarioOptions, TickOutcome, TimelineEventKind, TimelineOptions,
};

/// Rows 0..300 follow one concept and feature distribution, rows 300.. another.
fn scenario() -> SyntheticRows {
    generate(&ScenarioOptions {
        rows: 600,
        numeric: 3,
        categorical: 1,
        categories: 3,
        classes: 2,
        separation: 3.0,
        seed: 11,
        drift: vec![
            ScenarioDrift { kind: ScenarioDriftKind::Concept, start: 300, magnitude: 2.0, ..Default::default() },
            ScenarioDrift { kind: ScenarioDriftKind::Covariate, start: 300, magnitude: 2.0, ..Default::default() },
        ],
    })
    .unwrap()
}

/// A home whose `churn` v1 (logistic regression on rows 0..200) is in production.
fn setup(dir: &std::path::Path) -> (Home, SyntheticRows) {
    let s = scenario();
    (common::churn_in_production(dir, &s), s)
}

fn stream(home: &Home, s: &SyntheticRows, range: std::ops::Range<usize>) {
    common::stream_labelled(home, s, range)
}

fn policy() -> RetrainPolicy {
    RetrainPolicy {
        triggers: RetrainTriggers { accuracy_floor: Some(0.75), window: 100, ..Default::default() },
        guards: RetrainGuards { min_samples: 30, ..Default::default() },
        action: RetrainAction { replay_fraction: 0.0, ..Default::default() },
        gate: GatePolicy { mode: PromotionMode::Auto, margin: 0.05, ..Default::default() },
    }
}

/// The share of the window's correct flags, as the timeline should have it.
fn rolling(correct: &[bool], window: usize) -> Vec<(f64, u64)> {
    (0..correct.len())
        .map(|i| {
            let w = &correct[i.saturating_sub(window - 1)..=i];
            (w.iter().filter(|c| **c).count() as f64 / w.len() as f64, w.len() as u64)
        })
        .collect()
}

#[test]
fn the_timeline_of_a_monitor_run_matches_its_rows_and_plots() {
    let dir = tempfile::tempdir().unwrap();
    let (home, s) = setup(dir.path());
    let c = home.continual();
    let m = home.monitors().create("churn", &policy(), &MonitorOptions::default()).unwrap();
    let mut sink = RecordingSink::new();

    // Before the drift: accurate; a drift check finds nothing.
    stream(&home, &s, 200..260);
    let before = c.drift("churn@production", &DriftWindow::Predictions(60)).unwrap();
    assert_eq!(m.tick(&mut sink).unwrap().outcome, TickOutcome::Idle);
    // After it: the features moved (drift) and the concept too (the monitor retrains).
    stream(&home, &s, 300..460);
    let after = c.drift("churn@production", &DriftWindow::Predictions(100)).unwrap();
    assert_eq!(after.verdict, DriftVerdict::Drift, "{after:?}");
    assert_eq!(m.tick(&mut sink).unwrap().outcome, TickOutcome::Promoted);
    // v2 serves.
    stream(&home, &s, 460..520);
    let mut sink = RecordingSink::new();
    m.rollback(Some("operator says so"), &mut sink).unwrap();
    stream(&home, &s, 520..530);

    let v1 = home.models().resolve("churn@1").unwrap();
    let v2 = home.models().resolve("churn@2").unwrap();
    let window = 20;
    let t = c.timeline("churn", &TimelineOptions { window, ..Default::default() }).unwrap();
    assert_eq!(t.model_name, "churn");
    assert_eq!(t.labelled, 60 + 160 + 60 + 10);

    // Accuracy: every labelled prediction in the order made, with its version, and the
    // rolling share computed here from the logged rows.
    let mut logged = std::collections::HashMap::new();
    for (model, version) in [(&v1, 1u32), (&v2, 2)] {
        let rows = c.predictions(&model.id, &PredictionFilter { labelled: Some(true), limit: None }).unwrap();
        logged.extend(rows.into_iter().map(|p| (p.id.clone(), (p.correct.unwrap(), version, p.created_at))));
    }
    assert_eq!(logged.len(), t.accuracy.len());
    // v1 (220), v2 (60), v1 again after the rollback (10); each as logged.
    let versions: Vec<u32> = t.accuracy.iter().map(|p| p.version).collect();
    assert_eq!(versions, [vec![1; 220], vec![2; 60], vec![1; 10]].concat());
    for p in &t.accuracy {
        let (correct, version, at) = &logged[&p.prediction_id];
        assert_eq!((p.correct, p.version, &p.at), (*correct, *version, at));
    }
    let correct: Vec<bool> = t.accuracy.iter().map(|p| p.correct).collect();
    let expected = rolling(&correct, window as usize);
    for (i, (p, (acc, n))) in t.accuracy.iter().zip(&expected).enumerate() {
        assert_eq!(p.index, i as u64 + 1);
        assert!((p.accuracy - acc).abs() < 1e-12, "point {i}: {} vs {acc}", p.accuracy);
        assert_eq!(p.window_rows, *n);
    }
    assert!(t.accuracy.windows(2).all(|w| w[0].at <= w[1].at));
    // Before the drift the window is right; after it, wrong; v2 right again.
    assert!(t.accuracy[219].accuracy < 0.75 && t.accuracy[59].accuracy > 0.75, "{:?}", &t.accuracy[219]);
    assert!(t.accuracy[279].accuracy > t.accuracy[219].accuracy);

    // Per version: the same figures as realised_accuracy.
    assert_eq!(t.versions.iter().map(|v| (v.version, v.labelled)).collect::<Vec<_>>(), [(1, 230), (2, 60)]);
    for v in &t.versions {
        let r = c.realised_accuracy(&v.model_id, &Default::default()).unwrap();
        assert_eq!((v.labelled, v.correct, v.accuracy), (r.labelled, r.correct, r.accuracy));
    }

    // Drift: both checks, with their verdicts and scores.
    assert_eq!(t.drift.len(), 2);
    for (p, check) in t.drift.iter().zip([&before, &after]) {
        let report = check.report.as_ref().unwrap();
        assert_eq!((&p.check_id, p.verdict, p.version), (&check.id, check.verdict, 1));
        assert_eq!(p.score, Some(report.drift_share));
        assert_eq!(p.drifted_columns, Some(report.drifted_columns));
        assert_eq!(p.columns, Some(report.columns.len() as u64));
        assert_eq!(p.window_rows, Some(report.window_rows));
        assert_eq!(p.at, check.created_at);
    }
    assert_eq!(t.drift[0].verdict, DriftVerdict::NoDrift);

    // Evaluations: the gate's, production's and the candidate's.
    // (Both may share a millisecond: compared by id, the order checked by time.)
    let evals: Vec<_> = c.evaluations(&v1.id).unwrap().into_iter().chain(c.evaluations(&v2.id).unwrap()).collect();
    assert_eq!(t.evaluations.len(), 2);
    for e in &evals {
        let p = t.evaluations.iter().find(|p| p.evaluation_id == e.id).unwrap();
        assert_eq!((&p.metrics, p.rows, &p.at, &p.model_id), (&e.metrics, e.rows, &e.created_at, &e.model_id));
    }
    assert!(t.evaluations[0].at <= t.evaluations[1].at);

    // Events: v1 promoted by hand, the monitor's retrain, v2 promoted, rolled back.
    let kinds: Vec<_> = t.events.iter().map(|e| (e.kind, e.version, e.previous_version)).collect();
    assert_eq!(
        kinds,
        [
            (TimelineEventKind::Promoted, Some(1), None),
            (TimelineEventKind::RetrainStarted, Some(1), None),
            (TimelineEventKind::Promoted, Some(2), Some(1)),
            (TimelineEventKind::RolledBack, Some(1), Some(2)),
        ]
    );
    let started = m.decisions().unwrap().into_iter().find(|d| d.kind == DecisionKind::RetrainStarted).unwrap();
    assert_eq!((t.events[1].job_id.as_ref(), t.events[1].at.as_str()), (started.job_id.as_ref(), started.at.as_str()));
    assert_eq!(t.events[1].monitor.as_deref(), Some("churn"));
    let hist = home.models().alias_history("churn", Some("production")).unwrap();
    let promote = hist.iter().find(|h| h.action == AliasAction::Promote && h.version == Some(2)).unwrap();
    assert_eq!(t.events[2].at, promote.at);
    assert_eq!(t.events[3].reason.as_deref(), Some("operator says so"));
    assert_eq!(t.accuracy_floor, Some(0.75));

    // A range: from v2's promotion on. The window still reaches back before it.
    let since = TimelineOptions { window, since: Some(promote.at.clone()), ..Default::default() };
    let ts = c.timeline("churn@production", &since).unwrap();
    assert_eq!(ts.labelled, 70);
    assert_eq!(ts.accuracy[0].index, 221);
    assert_eq!(ts.accuracy[0].accuracy, t.accuracy[220].accuracy);
    assert_eq!(ts.accuracy[0].window_rows, window);
    assert_eq!(
        ts.events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [TimelineEventKind::Promoted, TimelineEventKind::RolledBack]
    );
    assert!(ts.drift.is_empty());
    // Thinned: evenly spaced, the first and the last kept, the figures unchanged.
    let thin = c.timeline("churn", &TimelineOptions { window, max_points: 10, ..Default::default() }).unwrap();
    assert_eq!(thin.labelled, 290);
    assert!(thin.accuracy.len() <= 10 && thin.accuracy.len() >= 9, "{}", thin.accuracy.len());
    assert_eq!((thin.accuracy[0].index, thin.accuracy.last().unwrap().index), (1, 290));
    for p in &thin.accuracy {
        assert_eq!(p.accuracy, t.accuracy[p.index as usize - 1].accuracy);
    }

    // Bad input: named, nothing written.
    assert_eq!(c.timeline("nobody", &TimelineOptions::default()).unwrap_err().code(), "not_found");
    let e = c.timeline("churn", &TimelineOptions { window: 0, ..Default::default() }).unwrap_err();
    assert!(matches!(&e, anneal::Error::InvalidConfig { field, .. } if field == "window"), "{e}");

    // The plot: decoded, the size asked for; each version's colour where its accuracy
    // is; the promotion marker between v1's last point and v2's first; the title.
    let png = dir.path().join("timeline.png");
    let opts = PlotOptions { width: 1000, height: 600, title: None };
    let drawn = c.plot_timeline("churn", &png, &TimelineOptions { window, ..Default::default() }, &opts).unwrap();
    assert_eq!(drawn, t);
    let img = image::open(&png).unwrap().to_rgb8();
    if let Ok(keep) = std::env::var("ANNEAL_KEEP_PLOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    assert_eq!(img.dimensions(), (1000, 600));
    let chart = anneal::timeline_chart(&t, &opts);
    let l = plot::layout(&chart, 1000, 600).unwrap();
    let at = |x: f64, y: f64| img.get_pixel(x.round() as u32, y.round() as u32).0;
    let acc = &chart.panels[0].series;
    // Lines: v1, v2, v1 again after the rollback.
    assert_eq!(acc.iter().filter(|s| s.style == plot::Style::Line).count(), 3);
    let (first, mid) = (acc[0].points[0], acc[1].points[30]);
    assert_eq!(at(l.x_px(first.0), l.y_px(0, first.1)), anneal::version_color(1));
    assert_eq!(at(l.x_px(mid.0), l.y_px(0, mid.1)), anneal::version_color(2));
    let promoted = chart.markers.iter().find(|m| m.label == "v2").unwrap();
    let v1_end = acc[0].points.last().unwrap().0;
    let v2_start = acc[1].points[0].0;
    assert!(v1_end <= promoted.x && promoted.x <= v2_start, "{v1_end} {} {v2_start}", promoted.x);
    let col = l.x_px(promoted.x).round() as u32;
    let drift_panel = &l.panels[1];
    let green = (drift_panel.top..=drift_panel.bottom)
        .filter(|y| img.get_pixel(col, *y).0 == anneal::event_color(TimelineEventKind::Promoted))
        .count() as f64;
    assert!(green / f64::from(drift_panel.bottom - drift_panel.top + 1) > 0.4, "{green}");
    let title_pixels = (l.title.0..l.title.1)
        .flat_map(|y| (0..1000).map(move |x| (x, y)))
        .filter(|(x, y)| img.get_pixel(*x, *y).0 == TEXT)
        .count();
    assert!(title_pixels > 200, "{title_pixels}");
    // Where the plot cannot go: io naming the path; too small: the field.
    let e = c.plot_timeline("churn", dir.path().join("no/dir/t.png"), &TimelineOptions::default(), &opts).unwrap_err();
    assert!(e.to_string().contains("no/dir/t.png"), "{e}");
    let tiny = PlotOptions { width: 400, height: 130, title: None };
    let e = c.plot_timeline("churn", &png, &TimelineOptions::default(), &tiny).unwrap_err();
    assert!(matches!(&e, anneal::Error::InvalidConfig { field, .. } if field == "height"), "{e}");
    assert_eq!(image::open(&png).unwrap().to_rgb8(), img, "a refused plot leaves the old file");
}
