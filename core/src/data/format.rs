//! Record shapes (`text`, `completion`, `instruction`, `chat`, `tabular`): detection,
//! column mapping and normalisation into the stored form.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{Error, Location, Result};
use crate::types::{DatasetFormat, CHAT_ROLES};

const ALL_CANONICAL: [&str; 8] =
    ["text", "prompt", "completion", "instruction", "input", "output", "messages", "label"];

/// Resolves the format and the field -> column mapping from the first record.
pub(crate) struct Shape {
    pub(crate) format: DatasetFormat,
    /// canonical field -> source column (identity where not mapped)
    pub(crate) columns: BTreeMap<String, String>,
}

impl Shape {
    /// Decides the shape from the first record. `forced` and `mapping` come from the
    /// user (mapping: canonical field -> source column).
    pub(crate) fn detect(
        first: &Map<String, Value>,
        forced: Option<DatasetFormat>,
        mapping: &BTreeMap<String, String>,
        loc: &Location,
    ) -> Result<Shape> {
        for field in mapping.keys() {
            if !ALL_CANONICAL.contains(&field.as_str()) {
                return Err(Error::config(
                    format!("columns.{field}"),
                    format!("`{field}` is not a dataset field (expected one of {})", ALL_CANONICAL.join(", ")),
                ));
            }
        }
        // Which canonical fields can be found (mapped or by their own name)?
        let has = |f: &str| -> bool {
            match mapping.get(f) {
                Some(col) => first.contains_key(col),
                None => first.contains_key(f),
            }
        };
        let format = match forced {
            Some(f) => f,
            None => {
                if has("messages") {
                    DatasetFormat::Chat
                } else if has("instruction") && has("output") {
                    DatasetFormat::Instruction
                } else if has("prompt") && has("completion") {
                    DatasetFormat::Completion
                } else if has("text") {
                    DatasetFormat::Text
                } else if has("label") && first.len() >= 2 {
                    DatasetFormat::Tabular
                } else {
                    // A mapping that names a missing column is the likelier mistake.
                    for (field, col) in mapping {
                        if !first.contains_key(col) {
                            return Err(missing_column(loc, field, col, first));
                        }
                    }
                    return Err(Error::data(
                        loc.clone(),
                        format!(
                            "cannot detect the dataset format from the fields [{}]; expected text, \
                             prompt+completion, instruction+output, messages, or a label column; \
                             pass format and columns to map yours",
                            keys(first)
                        ),
                    ));
                }
            }
        };
        for field in mapping.keys() {
            if !format.fields().contains(&field.as_str()) {
                return Err(Error::config(
                    format!("columns.{field}"),
                    format!(
                        "`{field}` is not a field of the {} format (fields: {})",
                        format.as_str(),
                        format.fields().join(", ")
                    ),
                ));
            }
        }
        let columns = format
            .fields()
            .iter()
            .map(|f| (f.to_string(), mapping.get(*f).cloned().unwrap_or_else(|| f.to_string())))
            .collect();
        Ok(Shape { format, columns })
    }

    fn col<'a>(&'a self, field: &'a str) -> &'a str {
        self.columns.get(field).map(String::as_str).unwrap_or(field)
    }

    /// Turns a raw record into the stored form, or says which field is wrong.
    pub(crate) fn normalize(&self, rec: &Map<String, Value>, loc: &Location) -> Result<Value> {
        let mut out = Map::new();
        match self.format {
            DatasetFormat::Text | DatasetFormat::Completion => {
                for f in self.format.fields() {
                    out.insert((*f).into(), Value::String(self.string(rec, f, loc, true)?));
                }
            }
            DatasetFormat::Instruction => {
                for f in self.format.fields() {
                    let required = *f != "input";
                    out.insert((*f).into(), Value::String(self.string(rec, f, loc, required)?));
                }
            }
            DatasetFormat::Chat => {
                out.insert("messages".into(), self.messages(rec, loc)?);
            }
            DatasetFormat::Tabular => {
                let label_col = self.col("label");
                let label = rec.get(label_col).ok_or_else(|| missing_column(loc, "label", label_col, rec))?;
                if label.is_null() {
                    return Err(Error::data(loc.clone().field(label_col), "label is null"));
                }
                let features: Map<String, Value> =
                    rec.iter().filter(|(k, _)| k.as_str() != label_col).map(|(k, v)| (k.clone(), v.clone())).collect();
                if features.is_empty() {
                    return Err(Error::data(
                        loc.clone(),
                        "a tabular record needs at least one feature column besides the label",
                    ));
                }
                out.insert("features".into(), Value::Object(features));
                out.insert("label".into(), label.clone());
            }
        }
        Ok(Value::Object(out))
    }

    fn string(&self, rec: &Map<String, Value>, field: &str, loc: &Location, required: bool) -> Result<String> {
        let col = self.col(field);
        match rec.get(col) {
            Some(Value::String(s)) => Ok(s.clone()),
            None | Some(Value::Null) if !required => Ok(String::new()),
            None => Err(missing_column(loc, field, col, rec)),
            Some(other) => Err(Error::data(
                loc.clone().field(col),
                format!("expected a string, found {}", super::read::json_type(other)),
            )),
        }
    }

    fn messages(&self, rec: &Map<String, Value>, loc: &Location) -> Result<Value> {
        let col = self.col("messages");
        let arr = match rec.get(col) {
            Some(Value::Array(a)) => a,
            None => return Err(missing_column(loc, "messages", col, rec)),
            Some(other) => {
                return Err(Error::data(
                    loc.clone().field(col),
                    format!("expected an array of messages, found {}", super::read::json_type(other)),
                ))
            }
        };
        if arr.is_empty() {
            return Err(Error::data(loc.clone().field(col), "a conversation needs at least one message"));
        }
        let mut msgs = Vec::with_capacity(arr.len());
        for (i, m) in arr.iter().enumerate() {
            let at = |f: &str| loc.clone().field(format!("{col}[{i}].{f}"));
            let obj = m.as_object().ok_or_else(|| {
                Error::data(loc.clone().field(format!("{col}[{i}]")), "expected an object with role and content")
            })?;
            let role = match obj.get("role") {
                Some(Value::String(r)) if CHAT_ROLES.contains(&r.as_str()) => r.clone(),
                Some(Value::String(r)) => {
                    return Err(Error::data(
                        at("role"),
                        format!("unknown role `{r}` (expected {})", CHAT_ROLES.join(", ")),
                    ))
                }
                _ => return Err(Error::data(at("role"), "missing or not a string")),
            };
            let content = match obj.get("content") {
                Some(Value::String(c)) => c.clone(),
                _ => return Err(Error::data(at("content"), "missing or not a string")),
            };
            let mut o = Map::new();
            o.insert("role".into(), Value::String(role));
            o.insert("content".into(), Value::String(content));
            msgs.push(Value::Object(o));
        }
        Ok(Value::Array(msgs))
    }
}

fn keys(m: &Map<String, Value>) -> String {
    m.keys().map(String::as_str).collect::<Vec<_>>().join(", ")
}

fn missing_column(loc: &Location, field: &str, col: &str, rec: &Map<String, Value>) -> Error {
    let how = if field == col { String::new() } else { format!(" (mapped to `{field}`)") };
    Error::data(loc.clone().field(col), format!("missing column `{col}`{how}; the record has [{}]", keys(rec)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn detects_each_format() {
        let l = Location::default();
        let m = BTreeMap::new();
        let cases = [
            (json!({"text": "a"}), DatasetFormat::Text),
            (json!({"prompt": "a", "completion": "b"}), DatasetFormat::Completion),
            (json!({"instruction": "a", "output": "b"}), DatasetFormat::Instruction),
            (json!({"messages": []}), DatasetFormat::Chat),
            (json!({"x": "1", "label": "pos"}), DatasetFormat::Tabular),
        ];
        for (rec, f) in cases {
            assert_eq!(Shape::detect(&obj(rec), None, &m, &l).unwrap().format, f);
        }
    }

    #[test]
    fn mapping_renames_columns() {
        let l = Location::default();
        let m: BTreeMap<_, _> = [("prompt".to_string(), "q".to_string()), ("completion".into(), "a".into())].into();
        let rec = obj(json!({"q": "2+2?", "a": "4"}));
        let s = Shape::detect(&rec, None, &m, &l).unwrap();
        assert_eq!(s.format, DatasetFormat::Completion);
        assert_eq!(s.normalize(&rec, &l).unwrap(), json!({"prompt": "2+2?", "completion": "4"}));
        let bad = obj(json!({"q": "x"}));
        let e = s.normalize(&bad, &l).unwrap_err();
        assert!(e.to_string().contains("`a`") && e.to_string().contains("mapped to `completion`"), "{e}");
    }

    #[test]
    fn chat_messages_are_checked() {
        let l = Location::default().at(3);
        let rec = obj(json!({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}));
        let s = Shape::detect(&rec, None, &BTreeMap::new(), &l).unwrap();
        let e = s.normalize(&rec, &l).unwrap_err();
        assert!(e.to_string().contains("messages[1].role") && e.to_string().contains("record 3"), "{e}");
    }

    #[test]
    fn forced_format_that_does_not_fit() {
        let l = Location::default().at(1);
        let rec = obj(json!({"text": "a"}));
        let s = Shape::detect(&rec, Some(DatasetFormat::Completion), &BTreeMap::new(), &l).unwrap();
        let e = s.normalize(&rec, &l).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        assert!(e.to_string().contains("`prompt`"), "{e}");
    }
}
