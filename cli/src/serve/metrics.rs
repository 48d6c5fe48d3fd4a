//! Prometheus text for `/metrics`: requests and generations counted by this server,
//! jobs by status and the running jobs' tokens/s read from the catalog when scraped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anneal::{JobRecord, JobStatus};

/// Upper bounds (seconds) of the generation latency histogram.
const LATENCY_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

#[derive(Default)]
pub(crate) struct Metrics {
    /// Responses by status code.
    requests: Mutex<BTreeMap<u16, u64>>,
    generations: Mutex<Generations>,
    /// Generation requests answered 429.
    rejected: AtomicU64,
}

#[derive(Default)]
struct Generations {
    /// Per endpoint (`generate`, `chat`, `completions`, `images`): calls.
    calls: BTreeMap<&'static str, u64>,
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_s: f64,
    prompt_tokens: u64,
    generated_tokens: u64,
    /// Decode tokens/s of the latest generation.
    last_tokens_per_s: f64,
}

impl Metrics {
    pub(crate) fn request(&self, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry(status).or_default() += 1;
        }
    }

    pub(crate) fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A finished generation: its endpoint, wall time, tokens and decode speed.
    pub(crate) fn generation(&self, endpoint: &'static str, seconds: f64, prompt: u64, generated: u64, tps: f64) {
        let Ok(mut g) = self.generations.lock() else { return };
        *g.calls.entry(endpoint).or_default() += 1;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *le {
                g.buckets[i] += 1;
            }
        }
        g.count += 1;
        g.sum_s += seconds;
        g.prompt_tokens += prompt;
        g.generated_tokens += generated;
        if tps.is_finite() && tps > 0.0 {
            g.last_tokens_per_s = tps;
        }
    }

    /// The exposition text, with `jobs` (every job as the engine reports it) for the
    /// job gauges.
    pub(crate) fn render(&self, jobs: &[JobRecord]) -> String {
        let mut s = String::new();
        let mut by_status: BTreeMap<&str, u64> = JobStatus::ALL.iter().map(|st| (st.as_str(), 0)).collect();
        for j in jobs {
            *by_status.entry(j.status.as_str()).or_default() += 1;
        }
        head(&mut s, "anneal_jobs", "gauge", "Training jobs by status.");
        for (status, n) in &by_status {
            let _ = writeln!(s, "anneal_jobs{{status=\"{status}\"}} {n}");
        }
        head(&mut s, "anneal_job_tokens_per_second", "gauge", "Training throughput of each running job.");
        for j in jobs.iter().filter(|j| j.status == JobStatus::Running) {
            if let Some(tps) = j.tokens_per_sec {
                let _ = writeln!(s, "anneal_job_tokens_per_second{{job_id=\"{}\"}} {}", j.id, num(tps));
            }
        }
        head(&mut s, "anneal_job_progress", "gauge", "Progress (0 to 1) of each running job.");
        for j in jobs.iter().filter(|j| j.status == JobStatus::Running) {
            let _ = writeln!(s, "anneal_job_progress{{job_id=\"{}\"}} {}", j.id, num(j.progress));
        }
        head(&mut s, "anneal_http_requests_total", "counter", "HTTP responses by status code.");
        if let Ok(m) = self.requests.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(s, "anneal_http_requests_total{{code=\"{code}\"}} {n}");
            }
        }
        head(&mut s, "anneal_generation_rejected_total", "counter", "Generation requests refused (429).");
        let _ = writeln!(s, "anneal_generation_rejected_total {}", self.rejected.load(Ordering::Relaxed));
        let Ok(g) = self.generations.lock() else { return s };
        head(&mut s, "anneal_generations_total", "counter", "Generations served, by endpoint.");
        for (ep, n) in &g.calls {
            let _ = writeln!(s, "anneal_generations_total{{endpoint=\"{ep}\"}} {n}");
        }
        head(&mut s, "anneal_generation_duration_seconds", "histogram", "Wall time of a generation request.");
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(s, "anneal_generation_duration_seconds_bucket{{le=\"{le}\"}} {}", g.buckets[i]);
        }
        let _ = writeln!(s, "anneal_generation_duration_seconds_bucket{{le=\"+Inf\"}} {}", g.count);
        let _ = writeln!(s, "anneal_generation_duration_seconds_sum {}", num(g.sum_s));
        let _ = writeln!(s, "anneal_generation_duration_seconds_count {}", g.count);
        head(&mut s, "anneal_prompt_tokens_total", "counter", "Prompt tokens of served generations.");
        let _ = writeln!(s, "anneal_prompt_tokens_total {}", g.prompt_tokens);
        head(&mut s, "anneal_generated_tokens_total", "counter", "Tokens generated.");
        let _ = writeln!(s, "anneal_generated_tokens_total {}", g.generated_tokens);
        head(&mut s, "anneal_generation_tokens_per_second", "gauge", "Decode speed of the latest generation.");
        let _ = writeln!(s, "anneal_generation_tokens_per_second {}", num(g.last_tokens_per_s));
        s
    }
}

fn head(s: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "NaN".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.generation("generate", 0.2, 3, 5, 50.0);
        m.generation("chat", 3.0, 1, 1, 10.0);
        let t = m.render(&[]);
        assert!(t.contains("anneal_generation_duration_seconds_bucket{le=\"0.1\"} 0"), "{t}");
        assert!(t.contains("anneal_generation_duration_seconds_bucket{le=\"0.25\"} 1"), "{t}");
        assert!(t.contains("anneal_generation_duration_seconds_bucket{le=\"5\"} 2"), "{t}");
        assert!(t.contains("anneal_generation_duration_seconds_count 2"), "{t}");
        assert!(t.contains("anneal_generated_tokens_total 6"), "{t}");
        assert!(t.contains("anneal_jobs{status=\"running\"} 0"), "{t}");
        assert!(t.contains("anneal_generation_tokens_per_second 10"), "{t}");
    }
}
