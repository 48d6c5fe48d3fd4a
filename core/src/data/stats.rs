//! Dataset statistics, accumulated in one streaming pass during import.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::types::{DatasetFormat, DatasetStats, FieldStats, ImageStats, LengthBucket, SizeStats};

const MAX_LABELS: usize = 1000;

pub(crate) struct StatsBuilder {
    format: DatasetFormat,
    n: u64,
    fields: BTreeMap<String, (u64, u64, u128, u64)>, // min, max, sum, empty
    hist: BTreeMap<u32, u64>,
    roles: BTreeMap<String, u64>,
    labels: BTreeMap<String, u64>,
    images: ImageAcc,
}

/// Running image statistics: (min, max, sum) of widths and heights, and the counts.
#[derive(Default)]
struct ImageAcc {
    n: u64,
    w: (u64, u64, u128),
    h: (u64, u64, u128),
    aspects: BTreeMap<String, u64>,
    modes: BTreeMap<String, u64>,
    formats: BTreeMap<String, u64>,
}

/// Aspect-ratio buckets (width:height) and their ratios.
const ASPECTS: [(&str, f64); 11] = [
    ("1:3", 1.0 / 3.0),
    ("9:16", 9.0 / 16.0),
    ("2:3", 2.0 / 3.0),
    ("3:4", 3.0 / 4.0),
    ("4:5", 4.0 / 5.0),
    ("1:1", 1.0),
    ("5:4", 5.0 / 4.0),
    ("4:3", 4.0 / 3.0),
    ("3:2", 3.0 / 2.0),
    ("16:9", 16.0 / 9.0),
    ("3:1", 3.0),
];

/// The bucket of `width x height`: the nearest ratio on a log scale.
pub(crate) fn aspect_bucket(width: u64, height: u64) -> &'static str {
    let r = (width.max(1) as f64 / height.max(1) as f64).ln();
    let mut best = ASPECTS[5];
    for a in ASPECTS {
        if (a.1.ln() - r).abs() < (best.1.ln() - r).abs() {
            best = a;
        }
    }
    best.0
}

fn size_acc(acc: &mut (u64, u64, u128), v: u64, first: bool) {
    if first {
        acc.0 = v;
    }
    acc.0 = acc.0.min(v);
    acc.1 = acc.1.max(v);
    acc.2 += v as u128;
}

impl ImageAcc {
    fn add(&mut self, rec: &Value) {
        let w = rec.get("width").and_then(Value::as_u64).unwrap_or(0);
        let h = rec.get("height").and_then(Value::as_u64).unwrap_or(0);
        let first = self.n == 0;
        self.n += 1;
        size_acc(&mut self.w, w, first);
        size_acc(&mut self.h, h, first);
        *self.aspects.entry(aspect_bucket(w, h).to_string()).or_default() += 1;
        let mode = rec.get("mode").and_then(Value::as_str).unwrap_or("unknown");
        *self.modes.entry(mode.to_string()).or_default() += 1;
        let ext = rec.get("image").and_then(Value::as_str).and_then(|p| p.rsplit_once('.')).map_or("", |(_, e)| e);
        let format = match ext {
            "jpg" | "jpeg" => "jpeg",
            "png" => "png",
            "webp" => "webp",
            _ => "unknown",
        };
        *self.formats.entry(format.to_string()).or_default() += 1;
    }

    fn finish(self) -> ImageStats {
        let n = self.n.max(1) as f64;
        let size = |a: (u64, u64, u128)| SizeStats { min: a.0, max: a.1, mean: a.2 as f64 / n };
        ImageStats {
            count: self.n,
            width: size(self.w),
            height: size(self.h),
            aspect_ratios: self.aspects,
            modes: self.modes,
            formats: self.formats,
        }
    }
}

impl StatsBuilder {
    pub(crate) fn new(format: DatasetFormat) -> Self {
        Self {
            format,
            n: 0,
            fields: BTreeMap::new(),
            hist: BTreeMap::new(),
            roles: BTreeMap::new(),
            labels: BTreeMap::new(),
            images: ImageAcc::default(),
        }
    }

    fn field(&mut self, name: &str, len: u64) {
        let e = self.fields.entry(name.to_string()).or_insert((u64::MAX, 0, 0, 0));
        e.0 = e.0.min(len);
        e.1 = e.1.max(len);
        e.2 += len as u128;
        if len == 0 {
            e.3 += 1;
        }
    }

    /// Adds one normalised record.
    pub(crate) fn add(&mut self, rec: &Value) {
        self.n += 1;
        let mut total = 0u64;
        match self.format {
            DatasetFormat::Chat => {
                let mut len = 0u64;
                if let Some(msgs) = rec.get("messages").and_then(Value::as_array) {
                    for m in msgs {
                        len += m.get("content").and_then(Value::as_str).map_or(0, |s| s.chars().count() as u64);
                        if let Some(r) = m.get("role").and_then(Value::as_str) {
                            *self.roles.entry(r.to_string()).or_default() += 1;
                        }
                    }
                }
                self.field("messages", len);
                total = len;
            }
            DatasetFormat::Tabular => {
                if let Some(f) = rec.get("features").and_then(Value::as_object) {
                    for v in f.values() {
                        total += match v {
                            Value::String(s) => s.chars().count() as u64,
                            other => other.to_string().chars().count() as u64,
                        };
                    }
                }
                let label = match rec.get("label") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => String::new(),
                };
                if self.labels.len() < MAX_LABELS || self.labels.contains_key(&label) {
                    *self.labels.entry(label).or_default() += 1;
                }
            }
            f => {
                if f == DatasetFormat::Image {
                    self.images.add(rec);
                }
                for name in f.text_fields() {
                    let len = rec.get(*name).and_then(Value::as_str).map_or(0, |s| s.chars().count() as u64);
                    self.field(name, len);
                    total += len;
                }
            }
        }
        let bucket = if total == 0 { 0 } else { 64 - total.leading_zeros() };
        *self.hist.entry(bucket).or_default() += 1;
    }

    pub(crate) fn finish(self, bytes: u64) -> DatasetStats {
        let n = self.n.max(1) as f64;
        DatasetStats {
            num_records: self.n,
            bytes,
            fields: self
                .fields
                .into_iter()
                .map(|(k, (min, max, sum, empty))| {
                    (k, FieldStats { min_chars: min, max_chars: max, mean_chars: sum as f64 / n, empty })
                })
                .collect(),
            length_histogram: self
                .hist
                .into_iter()
                .map(|(b, count)| {
                    let (min, max) = if b == 0 { (0, 0) } else { (1u64 << (b - 1), (1u64 << b) - 1) };
                    LengthBucket { min_chars: min, max_chars: max, count }
                })
                .collect(),
            role_counts: (self.format == DatasetFormat::Chat).then_some(self.roles),
            label_counts: (self.format == DatasetFormat::Tabular).then_some(self.labels),
            images: (self.format == DatasetFormat::Image).then(|| self.images.finish()),
            tokens: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn histogram_and_field_stats() {
        let mut b = StatsBuilder::new(DatasetFormat::Completion);
        b.add(&json!({"prompt": "ab", "completion": ""}));
        b.add(&json!({"prompt": "abcdef", "completion": "xy"}));
        let s = b.finish(10);
        assert_eq!(s.num_records, 2);
        let p = &s.fields["prompt"];
        assert_eq!((p.min_chars, p.max_chars, p.mean_chars), (2, 6, 4.0));
        assert_eq!(s.fields["completion"].empty, 1);
        // lengths 2 and 8 -> buckets [2,3] and [8,15]
        let h: Vec<_> = s.length_histogram.iter().map(|b| (b.min_chars, b.max_chars, b.count)).collect();
        assert_eq!(h, vec![(2, 3, 1), (8, 15, 1)]);
        assert!(s.images.is_none());
    }

    #[test]
    fn image_stats() {
        let mut b = StatsBuilder::new(DatasetFormat::Image);
        b.add(&json!({"image": "images/000001.png", "text": "a cat", "width": 16, "height": 16, "mode": "RGB"}));
        b.add(&json!({"image": "images/000002.jpg", "text": "", "width": 1920, "height": 1080, "mode": "RGB"}));
        b.add(&json!({"image": "images/000003.webp", "text": "dog", "width": 30, "height": 40, "mode": "RGBA"}));
        let s = b.finish(10);
        let i = s.images.unwrap();
        assert_eq!(i.count, 3);
        assert_eq!((i.width.min, i.width.max), (16, 1920));
        assert_eq!((i.height.min, i.height.max), (16, 1080));
        assert!((i.width.mean - (16.0 + 1920.0 + 30.0) / 3.0).abs() < 1e-9);
        let a: Vec<_> = i.aspect_ratios.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(a, vec![("16:9", 1), ("1:1", 1), ("3:4", 1)]);
        assert_eq!(i.modes["RGB"], 2);
        assert_eq!(i.modes["RGBA"], 1);
        assert_eq!((i.formats["png"], i.formats["jpeg"], i.formats["webp"]), (1, 1, 1));
        assert_eq!(s.fields["text"].empty, 1);
        assert_eq!(aspect_bucket(100, 1000), "1:3");
        assert_eq!(aspect_bucket(1000, 10), "3:1");
        assert_eq!(aspect_bucket(1100, 1000), "1:1");
    }
}
