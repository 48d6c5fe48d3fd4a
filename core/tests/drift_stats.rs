//! Drift statistics against scipy, stream detectors against River.
//
// The references in tests/fixtures/drift-refs/ were made by
// tests/fixtures/make_drift_refs.py (scipy 1.17.1, numpy 2.4.6, river 0.26.1; not run
// in CI): seeded numpy data rounded to a few decimals, and what
// scipy.stats.ks_2samp / kstwo.sf / wasserstein_distance / chi2_contingency / chi2.sf,
// scipy.special.smirnov / gammaincc, scipy.spatial.distance.jensenshannon(base=2), a
// numpy PSI (decile bins, 1e-4 for empty bins) and River's PageHinkley / DDM / ADWIN
// gave on them. Samples too large to store are a formula (`generated`) that both sides
// evaluate with the same IEEE operations.
#![allow(clippy::unwrap_used)]

use anneal::tabular::detectors::{Adwin, Detector};
use anneal::tabular::drift::{
    bin_shares, chi2_contingency, chi2_sf, gamma_p, gamma_q, jensen_shannon, ks_2samp, kstwo_sf,
    normalized_wasserstein, psi, psi_edges, smirnov_sf, std_dev, wasserstein_distance, KsMethod, PSI_BINS,
};
use anneal::tabular::profile::{ColumnProfile, Profile, ProfileOptions};
use anneal::types::{
    AdwinConfig, ColumnKind, DdmConfig, DetectorConfig, DriftOptions, DriftReport, DriftTest, DriftVerdict,
    PageHinkleyConfig,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde_json::{Map, Value};

const REFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/drift-refs");

fn load(name: &str) -> Value {
    let p = format!("{REFS}/{name}");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap()
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// `generated()` of the fixture script, or a stored list.
fn sample(v: &Value) -> Vec<f64> {
    if let Some(spec) = v.as_object() {
        let (alpha, beta) = (num(&spec["alpha"]), num(&spec["beta"]));
        let (scale, shift) = (num(&spec["scale"]), num(&spec["shift"]));
        let power = spec["power"].as_u64().unwrap();
        (0..spec["n"].as_u64().unwrap())
            .map(|i| {
                let mut u = i as f64 * alpha + beta;
                u -= u.floor();
                let mut p = 1.0;
                for _ in 0..power {
                    p *= u;
                }
                shift + scale * p
            })
            .collect()
    } else {
        f64s(v)
    }
}

/// Relative difference (absolute below `floor`).
fn rel(got: f64, want: f64, floor: f64) -> f64 {
    (got - want).abs() / want.abs().max(floor)
}

/// Tracks the largest difference of one quantity, and asserts it stays under `limit`.
struct Worst {
    what: &'static str,
    limit: f64,
    worst: f64,
    at: String,
}

impl Worst {
    fn new(what: &'static str, limit: f64) -> Self {
        Self { what, limit, worst: 0.0, at: String::new() }
    }
    fn see(&mut self, diff: f64, at: impl FnOnce() -> String) {
        assert!(!diff.is_nan(), "{}: NaN at {}", self.what, at());
        if diff > self.worst {
            self.worst = diff;
            self.at = at();
        }
    }
    fn check(&self) {
        eprintln!("{:<40} max rel diff {:.3e} ({})", self.what, self.worst, self.at);
        assert!(self.worst <= self.limit, "{}: {:.3e} > {:.0e} at {}", self.what, self.worst, self.limit, self.at);
    }
}

#[test]
fn ks_2samp_matches_scipy() {
    let refs = load("ks.json");
    let (mut stat, mut p) = (Worst::new("ks statistic", 1e-12), Worst::new("ks p-value", 1e-10));
    let mut methods = (0, 0);
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (a, b) = (sample(&case["a"]), sample(&case["b"]));
        let r = ks_2samp(&a, &b).unwrap();
        let want_method = if case["method"] == "exact" { KsMethod::Exact } else { KsMethod::Asymptotic };
        assert_eq!(r.method, want_method, "{name}");
        match r.method {
            KsMethod::Exact => methods.0 += 1,
            KsMethod::Asymptotic => methods.1 += 1,
        }
        stat.see(rel(r.statistic, num(&case["statistic"]), 1e-300), || name.to_string());
        p.see(rel(r.p_value, num(&case["pvalue"]), 1e-300), || name.to_string());
        // Symmetric in its two samples.
        let s = ks_2samp(&b, &a).unwrap();
        assert_eq!((s.statistic, s.p_value), (r.statistic, r.p_value), "{name}");
    }
    assert!(methods.0 >= 5 && methods.1 >= 5, "both methods exercised: {methods:?}");
    stat.check();
    p.check();
}

#[test]
fn kolmogorov_distributions_match_scipy() {
    let refs = load("kstwo.json");
    // Every method of kstwo.sf is on the grid: Ruben-Gambino ends, Durbin's matrix,
    // Pomeranz, Pelz-Good and twice the one-sided tail.
    let mut w = Worst::new("kstwo.sf", 1e-10);
    for row in refs["kstwo"].as_array().unwrap() {
        let (n, d, want) = (row["n"].as_u64().unwrap(), num(&row["d"]), num(&row["sf"]));
        w.see(rel(kstwo_sf(n, d), want, 1e-300), || format!("n={n} d={d}"));
    }
    w.check();
    let mut w = Worst::new("smirnov", 1e-11);
    for row in refs["smirnov"].as_array().unwrap() {
        let (n, d, want) = (row["n"].as_u64().unwrap(), num(&row["d"]), num(&row["sf"]));
        w.see(rel(smirnov_sf(n, d), want, 1e-300), || format!("n={n} d={d}"));
    }
    w.check();
}

#[test]
fn wasserstein_matches_scipy() {
    let refs = load("wasserstein.json");
    let (mut dist, mut norm) = (Worst::new("wasserstein", 1e-12), Worst::new("wasserstein / std", 1e-12));
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (a, b) = (sample(&case["a"]), sample(&case["b"]));
        let want = num(&case["distance"]);
        dist.see(rel(wasserstein_distance(&a, &b).unwrap(), want, 1e-300), || name.to_string());
        let sd = std_dev(&a);
        assert!(rel(sd, num(&case["std_a"]), 1e-300) < 1e-12, "{name}: std {sd}");
        let want_norm = want / num(&case["std_a"]).max(1e-3);
        norm.see(rel(normalized_wasserstein(&a, &b, sd).unwrap(), want_norm, 1e-300), || name.to_string());
    }
    dist.check();
    norm.check();
}

#[test]
fn chi_square_matches_scipy() {
    let refs = load("chi2.json");
    let (mut q, mut p) = (Worst::new("gammaincc", 1e-10), Worst::new("gammainc", 1e-10));
    for row in refs["gammaincc"].as_array().unwrap() {
        let (a, x) = (num(&row["a"]), num(&row["x"]));
        q.see(rel(gamma_q(a, x), num(&row["q"]), 1e-300), || format!("a={a} x={x}"));
        p.see(rel(gamma_p(a, x), num(&row["p"]), 1e-300), || format!("a={a} x={x}"));
    }
    q.check();
    p.check();
    let mut sf = Worst::new("chi2.sf", 1e-11);
    for row in refs["chi2_sf"].as_array().unwrap() {
        let (dof, x) = (num(&row["dof"]), num(&row["x"]));
        sf.see(rel(chi2_sf(x, dof), num(&row["sf"]), 1e-300), || format!("dof={dof} x={x}"));
    }
    sf.check();
    let (mut stat, mut pv) = (Worst::new("chi2_contingency statistic", 1e-12), Worst::new("chi2_contingency p", 1e-11));
    for case in refs["contingency"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let r = chi2_contingency(&f64s(&case["a"]), &f64s(&case["b"])).unwrap();
        assert_eq!(r.dof, case["dof"].as_u64().unwrap(), "{name}");
        stat.see(rel(r.statistic, num(&case["statistic"]), 1e-12), || name.to_string());
        pv.see(rel(r.p_value, num(&case["pvalue"]), 1e-300), || name.to_string());
    }
    stat.check();
    pv.check();
}

#[test]
fn jensen_shannon_matches_scipy() {
    let refs = load("jensenshannon.json");
    let mut w = Worst::new("jensenshannon (base 2)", 1e-12);
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let got = jensen_shannon(&f64s(&case["p"]), &f64s(&case["q"])).unwrap();
        w.see(rel(got, num(&case["distance"]), 1e-15), || name.to_string());
    }
    w.check();
}

#[test]
fn psi_matches_the_numpy_twin() {
    let refs = load("psi.json");
    assert_eq!(refs["bins"].as_u64().unwrap() as usize, PSI_BINS);
    let mut w = Worst::new("psi", 1e-12);
    for case in refs["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let mut reference = f64s(&case["reference"]);
        reference.sort_by(f64::total_cmp);
        let window = f64s(&case["window"]);
        let edges = psi_edges(&reference, PSI_BINS);
        let want_edges = f64s(&case["edges"]);
        assert_eq!(edges.len(), want_edges.len(), "{name}");
        for (g, e) in edges.iter().zip(&want_edges) {
            assert!(rel(*g, *e, 1e-300) < 1e-14, "{name}: edge {g} vs {e}");
        }
        let (e, a) = (bin_shares(&reference, &edges), bin_shares(&window, &edges));
        assert_eq!(e, f64s(&case["expected_shares"]), "{name}");
        assert_eq!(a, f64s(&case["actual_shares"]), "{name}");
        w.see(rel(psi(&e, &a).unwrap(), num(&case["psi"]), 1e-15), || name.to_string());
    }
    w.check();
}

fn rows(v: &Value) -> Vec<Map<String, Value>> {
    v.as_array().unwrap().iter().map(|r| r.as_object().unwrap().clone()).collect()
}

fn column<'a>(r: &'a DriftReport, name: &str) -> &'a anneal::types::ColumnDrift {
    r.columns.iter().find(|c| c.column == name).unwrap()
}

#[test]
fn a_report_compares_each_column_as_scipy_does() {
    let refs = load("report.json");
    let (reference, window) = (rows(&refs["reference"]), rows(&refs["window"]));
    let profile = Profile::from_rows(&reference, &ProfileOptions::default()).unwrap();
    assert_eq!(profile.rows, 600);
    assert_eq!(profile.column("age").unwrap().kind(), ColumnKind::Numeric);
    assert_eq!(profile.column("city").unwrap().kind(), ColumnKind::Categorical);
    // The profile is what the catalog stores: it survives JSON.
    let profile: Profile = serde_json::from_str(&serde_json::to_string(&profile).unwrap()).unwrap();

    // 600 reference rows: KS and chi-square by default.
    let r = profile.compare(&window, &DriftOptions::default()).unwrap();
    let exp = &refs["expected"];
    for c in &r.columns {
        let e = &exp[&c.column];
        let at = &c.column;
        assert_eq!(c.reference_count, e["reference_count"].as_u64().unwrap(), "{at}");
        assert_eq!(c.window_count, e["window_count"].as_u64().unwrap(), "{at}");
        assert!(rel(c.psi.unwrap(), num(&e["psi"]), 1e-15) < 1e-12, "{at}: psi {:?} vs {}", c.psi, e["psi"]);
        let (s, p) = (c.statistic.unwrap(), c.p_value.unwrap());
        if c.kind == ColumnKind::Numeric {
            assert_eq!(c.test, DriftTest::Ks);
            assert!(rel(s, num(&e["ks_statistic"]), 0.0) < 1e-12, "{at}: {s} vs {}", e["ks_statistic"]);
            assert!(rel(p, num(&e["ks_pvalue"]), 1e-300) < 1e-9, "{at}: {p} vs {}", e["ks_pvalue"]);
            assert_eq!(c.unseen_share, None);
        } else {
            assert_eq!(c.test, DriftTest::ChiSquare);
            assert!(rel(s, num(&e["chi2_statistic"]), 0.0) < 1e-12, "{at}: {s} vs {}", e["chi2_statistic"]);
            assert!(rel(p, num(&e["chi2_pvalue"]), 1e-300) < 1e-10, "{at}: {p} vs {}", e["chi2_pvalue"]);
            assert_eq!(c.unseen_share, Some(num(&e["unseen_share"])), "{at}");
        }
        assert_eq!(c.drifted, p < 0.05, "{at}");
        assert_eq!(c.threshold, 0.05);
    }
    // age and city moved, income and plan did not: half the columns -> drift.
    let drifted: Vec<&str> = r.columns.iter().filter(|c| c.drifted).map(|c| c.column.as_str()).collect();
    assert_eq!(drifted, ["age", "city"]);
    assert_eq!((r.verdict, r.drifted_columns, r.drift_share), (DriftVerdict::Drift, 2, 0.5));
    assert_eq!((r.window_rows, r.reference_rows), (400, 600));
    let age = column(&r, "age");
    let missing = window.iter().filter(|w| w.get("age").is_none_or(Value::is_null)).count();
    assert_eq!(age.window_missing_share, missing as f64 / 400.0);
    assert!(age.reference_missing_share > 0.0);
    // A stricter verdict needs more columns.
    let r = profile.compare(&window, &DriftOptions { drift_share: 0.75, ..Default::default() }).unwrap();
    assert_eq!(r.verdict, DriftVerdict::NoDrift);

    // Forced distances: Wasserstein / std and Jensen-Shannon.
    let opts = DriftOptions {
        numeric_test: Some(DriftTest::Wasserstein),
        categorical_test: Some(DriftTest::JensenShannon),
        ..Default::default()
    };
    let r = profile.compare(&window, &opts).unwrap();
    for c in &r.columns {
        let e = &exp[&c.column];
        let s = c.statistic.unwrap();
        assert_eq!(c.p_value, None);
        let (want, threshold) = if c.kind == ColumnKind::Numeric {
            assert_eq!(c.test, DriftTest::Wasserstein);
            (num(&e["wasserstein_normalized"]), 0.1)
        } else {
            assert_eq!(c.test, DriftTest::JensenShannon);
            (num(&e["jensen_shannon"]), 0.1)
        };
        assert!(rel(s, want, 0.0) < 1e-12, "{}: {s} vs {want}", c.column);
        assert_eq!((c.threshold, c.drifted), (threshold, s >= threshold), "{}", c.column);
    }
}

#[test]
fn small_windows_give_no_verdict_and_flag_nothing() {
    let refs = load("report.json");
    let (reference, window) = (rows(&refs["reference"]), rows(&refs["window"]));
    let profile = Profile::from_rows(&reference, &ProfileOptions::default()).unwrap();
    let r = profile.compare(&window[..29], &DriftOptions::default()).unwrap();
    assert_eq!(r.verdict, DriftVerdict::InsufficientData);
    assert_eq!(r.drifted_columns, 0);
    // The statistics are still there to look at: age's shift shows even in 29 rows.
    assert!(column(&r, "age").p_value.unwrap() < 0.05);
    assert!(!column(&r, "age").drifted);
    // From 30 rows on, each column's test decides.
    let r = profile.compare(&window[..30], &DriftOptions::default()).unwrap();
    assert_ne!(r.verdict, DriftVerdict::InsufficientData);
    assert!(r.columns.iter().all(|c| c.drifted == c.p_value.is_some_and(|p| p < 0.05)));
    assert!(column(&r, "age").drifted);
    let r = profile.compare(&[], &DriftOptions::default()).unwrap();
    assert_eq!(r.verdict, DriftVerdict::InsufficientData);
    assert!(r.columns.iter().all(|c| c.statistic.is_none() && c.psi.is_none()));
}

#[test]
fn unseen_categories_and_bad_values() {
    let refs = load("report.json");
    let profile = Profile::from_rows(&rows(&refs["reference"]), &ProfileOptions::default()).unwrap();
    // A window of only new cities: every value unseen, still a result.
    let window: Vec<Map<String, Value>> = (0..40)
        .map(|i| serde_json::json!({"city": format!("New{}", i % 3), "age": 40.0}).as_object().unwrap().clone())
        .collect();
    let r = profile.compare(&window, &DriftOptions::default()).unwrap();
    let city = column(&r, "city");
    assert_eq!(city.unseen_share, Some(1.0));
    assert!(city.drifted && city.p_value.unwrap() < 1e-20, "{city:?}");
    assert!(city.psi.unwrap() > 1.0);
    let js = profile
        .compare(&window, &DriftOptions { categorical_test: Some(DriftTest::JensenShannon), ..Default::default() })
        .unwrap();
    assert_eq!(column(&js, "city").statistic, Some(1.0), "disjoint distributions are 1 apart in base 2");
    // Columns the window lacks are missing, not errors; extra columns are ignored.
    let plan = column(&r, "plan");
    assert_eq!((plan.window_count, plan.window_missing_share, plan.statistic), (0, 1.0, None));
    assert!(!plan.drifted);

    // Mistyped values name the record and the column.
    let mut bad = window.clone();
    bad[6].insert("age".into(), Value::String("forty".into()));
    let e = profile.compare(&bad, &DriftOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
    let msg = e.to_string();
    assert!(msg.contains("record 7") && msg.contains("`age`") && msg.contains("a string"), "{msg}");
    let mut bad = window.clone();
    bad[0].insert("city".into(), serde_json::json!({"name": "x"}));
    let msg = profile.compare(&bad, &DriftOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("record 1") && msg.contains("`city`") && msg.contains("an object"), "{msg}");
    let e = profile.compare(&window, &DriftOptions { p_value: 0.0, ..Default::default() }).unwrap_err();
    assert!(e.code() == "invalid_config" && e.to_string().contains("p_value"), "{e}");
}

#[test]
fn large_references_switch_to_distances_and_subsample_for_ks() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let normal = Normal::new(0.0, 1.0).unwrap();
    let make = |rng: &mut ChaCha8Rng, n: usize, shift: f64| -> Vec<Map<String, Value>> {
        (0..n)
            .map(|_| {
                let c = if rng.random::<f64>() < 0.5 { "a" } else { "b" };
                serde_json::json!({"x": normal.sample(rng) + shift, "c": c}).as_object().unwrap().clone()
            })
            .collect()
    };
    let reference = make(&mut rng, 20_000, 0.0);
    let profile = Profile::from_rows(&reference, &ProfileOptions::default()).unwrap();
    let ColumnProfile::Numeric(x) = profile.column("x").unwrap() else { panic!() };
    assert_eq!((x.count, x.sample.len()), (20_000, 1000));
    assert!((x.std.unwrap() - 1.0).abs() < 0.03 && x.mean.unwrap().abs() < 0.03);
    assert!((x.quantiles.unwrap().p50).abs() < 0.05);
    assert_eq!(x.psi_shares.len(), PSI_BINS);

    let same = make(&mut rng, 5000, 0.0);
    let r = profile.compare(&same, &DriftOptions::default()).unwrap();
    assert_eq!(column(&r, "x").test, DriftTest::Wasserstein);
    assert_eq!(column(&r, "c").test, DriftTest::JensenShannon);
    assert_eq!(r.verdict, DriftVerdict::NoDrift, "{r:#?}");
    assert!(column(&r, "x").statistic.unwrap() < 0.1 && column(&r, "x").psi.unwrap() < 0.05);

    let shifted = make(&mut rng, 5000, 0.5);
    let r = profile.compare(&shifted, &DriftOptions::default()).unwrap();
    let xd = column(&r, "x");
    assert!(xd.drifted && (xd.statistic.unwrap() - 0.5).abs() < 0.1, "{xd:?}");
    // KS on request: the reference side is the 1000-value subsample, the window whole.
    let r =
        profile.compare(&shifted, &DriftOptions { numeric_test: Some(DriftTest::Ks), ..Default::default() }).unwrap();
    let xd = column(&r, "x");
    assert_eq!((xd.test, xd.reference_count, xd.window_count), (DriftTest::Ks, 1000, 5000));
    assert!(xd.drifted && xd.p_value.unwrap() < 1e-20);
}

fn config(v: &Value) -> DetectorConfig {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn detectors_fire_where_river_does() {
    let refs = load("detectors.json");
    for case in refs["cases"].as_array().unwrap() {
        let cfg = config(&case["detector"]);
        let stream = f64s(&case["stream"]);
        let mut d = Detector::new(&cfg).unwrap();
        let hits: Vec<u64> = stream.iter().enumerate().filter(|(_, &x)| d.update(x)).map(|(i, _)| i as u64).collect();
        let want: Vec<u64> = case["detections"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
        assert_eq!(hits, want, "{cfg:?}");
        if let Some(fin) = case.get("final") {
            let Detector::Adwin(a) = &d else { panic!() };
            assert_eq!(a.width() as f64, num(&fin["width"]));
            assert!(rel(a.estimation(), num(&fin["estimation"]), 0.0) < 1e-12);
            // River's `variance` is the window's sum of squared deviations.
            assert!(rel(a.variance() * a.width() as f64, num(&fin["variance"]), 0.0) < 1e-12);
        }
        // Persisted half-way and restored, a detector goes on exactly as before.
        let mut d = Detector::new(&cfg).unwrap();
        let half = stream.len() / 2;
        let mut hits2: Vec<u64> =
            stream[..half].iter().enumerate().filter(|(_, &x)| d.update(x)).map(|(i, _)| i as u64).collect();
        let saved = serde_json::to_string(&d).unwrap();
        let mut d: Detector = serde_json::from_str(&saved).unwrap();
        hits2.extend(stream[half..].iter().enumerate().filter(|(_, &x)| d.update(x)).map(|(i, _)| (half + i) as u64));
        assert_eq!(hits2, want, "{cfg:?} after a restore");
    }
}

/// Index of the first detection on `stream`.
fn first_detection(cfg: &DetectorConfig, stream: &[f64]) -> Option<usize> {
    let mut d = Detector::new(cfg).unwrap();
    stream.iter().position(|&x| d.update(x))
}

#[test]
fn detectors_catch_a_step_quickly_and_stay_quiet_on_stationary_streams() {
    // A per-prediction signal such as a loss: mean 0.3, standard deviation 0.2. (River's
    // default Page-Hinkley threshold, 50, is in the signal's units: on unit-variance
    // noise its cumulative sums wander past 50 within a few thousand values.)
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let normal = Normal::new(0.3, 0.2).unwrap();
    let quiet: Vec<f64> = (0..10_000).map(|_| normal.sample(&mut rng)).collect();
    let ph = DetectorConfig::PageHinkley(PageHinkleyConfig::default());
    let adwin = DetectorConfig::Adwin(AdwinConfig::default());
    assert_eq!(first_detection(&ph, &quiet), None);
    assert_eq!(first_detection(&adwin, &quiet), None);
    // A step of 2 standard deviations after 1000 values: found within a bounded delay
    // (Page-Hinkley needs about threshold / step = 125 values).
    let mut step = quiet[..1000].to_vec();
    step.extend(quiet[1000..3000].iter().map(|x| x + 0.4));
    let at = first_detection(&ph, &step).unwrap();
    eprintln!("Page-Hinkley: step at 1000, detected at {at}");
    assert!((1100..1250).contains(&at), "Page-Hinkley at {at}");
    let at = first_detection(&adwin, &step).unwrap();
    eprintln!("ADWIN: step at 1000, detected at {at}");
    assert!((1000..1100).contains(&at), "ADWIN at {at}");
    // A drop, seen only by a detector watching downwards.
    let mut drop = quiet[..1000].to_vec();
    drop.extend(quiet[1000..3000].iter().map(|x| x - 0.4));
    let up = DetectorConfig::PageHinkley(PageHinkleyConfig {
        direction: anneal::types::ChangeDirection::Up,
        ..Default::default()
    });
    assert_eq!(first_detection(&up, &drop), None);
    assert!((1100..1250).contains(&first_detection(&ph, &drop).unwrap()));

    // DDM: a 10% error rate, then 40%.
    let errors = |rng: &mut ChaCha8Rng, n: usize, p: f64| -> Vec<f64> {
        (0..n).map(|_| f64::from(u8::from(rng.random::<f64>() < p))).collect()
    };
    let ddm = DetectorConfig::Ddm(DdmConfig::default());
    let steady = errors(&mut rng, 10_000, 0.1);
    assert_eq!(first_detection(&ddm, &steady), None);
    let mut worse = steady[..2000].to_vec();
    worse.extend(errors(&mut rng, 2000, 0.4));
    let at = first_detection(&ddm, &worse).unwrap();
    assert!((2000..2150).contains(&at), "DDM at {at}");
    let mut d = Detector::new(&ddm).unwrap();
    let Detector::Ddm(inner) = &mut d else { panic!() };
    let warned = worse.iter().take(at).any(|&x| {
        inner.update(x);
        inner.warning_detected()
    });
    assert!(warned, "a warning precedes the drift");

    // ADWIN's window forgets the old regime after it.
    let mut a = Adwin::new(AdwinConfig::default()).unwrap();
    for &x in &step {
        a.update(x);
    }
    assert!((a.estimation() - 0.7).abs() < 0.03, "{}", a.estimation());
    assert!(a.width() < 2000);
}

#[test]
fn detector_settings_are_checked() {
    let e = Detector::new(&DetectorConfig::Adwin(AdwinConfig { delta: 1.5, ..Default::default() })).unwrap_err();
    assert!(e.code() == "invalid_config" && e.to_string().contains("delta"), "{e}");
    let e =
        Detector::new(&DetectorConfig::Ddm(DdmConfig { warning_threshold: -1.0, ..Default::default() })).unwrap_err();
    assert!(e.to_string().contains("warning_threshold"), "{e}");
    let e = serde_json::from_value::<DetectorConfig>(serde_json::json!({"type": "kswin"})).unwrap_err();
    assert!(e.to_string().contains("kswin"), "{e}");
}
