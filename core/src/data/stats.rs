//! Dataset statistics, accumulated in one streaming pass during import.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::types::{DatasetFormat, DatasetStats, FieldStats, LengthBucket};

const MAX_LABELS: usize = 1000;

pub(crate) struct StatsBuilder {
    format: DatasetFormat,
    n: u64,
    fields: BTreeMap<String, (u64, u64, u128, u64)>, // min, max, sum, empty
    hist: BTreeMap<u32, u64>,
    roles: BTreeMap<String, u64>,
    labels: BTreeMap<String, u64>,
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
    }
}
