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

    /// Turns a raw record into the stored form, or says which field is wrong. Takes the
    /// record to move its values rather than copy them (a record may be megabytes).
    pub(crate) fn normalize(&self, mut rec: Map<String, Value>, loc: &Location) -> Result<Value> {
        let mut out = Map::new();
        match self.format {
            DatasetFormat::Text | DatasetFormat::Completion | DatasetFormat::Instruction => {
                let fields = self.format.fields();
                let required = |f: &str| self.format != DatasetFormat::Instruction || f != "input";
                // Every field checked before any is moved out: errors list the whole record.
                for f in fields {
                    self.check_string(&rec, f, loc, required(f))?;
                }
                for (i, f) in fields.iter().enumerate() {
                    let col = self.col(f);
                    // A column mapped to two fields is copied for the first.
                    let again = fields[i + 1..].iter().any(|g| self.col(g) == col);
                    let v = if again { rec.get(col).cloned() } else { rec.remove(col) };
                    let s = match v {
                        Some(Value::String(s)) => s,
                        _ => String::new(),
                    };
                    out.insert((*f).into(), Value::String(s));
                }
            }
            DatasetFormat::Chat => {
                out.insert("messages".into(), self.messages(rec, loc)?);
            }
            DatasetFormat::Image => {
                return Err(Error::config(
                    "format",
                    "image datasets are imported from a folder of images (`import_images`), not from records",
                ))
            }
            DatasetFormat::Tabular => {
                let label_col = self.col("label");
                let label = match rec.get(label_col) {
                    None => return Err(missing_column(loc, "label", label_col, &rec)),
                    Some(Value::Null) => return Err(Error::data(loc.clone().field(label_col), "label is null")),
                    Some(_) => rec.remove(label_col).unwrap_or(Value::Null),
                };
                if rec.is_empty() {
                    return Err(Error::data(
                        loc.clone(),
                        "a tabular record needs at least one feature column besides the label",
                    ));
                }
                out.insert("features".into(), Value::Object(rec));
                out.insert("label".into(), label);
            }
        }
        Ok(Value::Object(out))
    }

    fn check_string(&self, rec: &Map<String, Value>, field: &str, loc: &Location, required: bool) -> Result<()> {
        let col = self.col(field);
        match rec.get(col) {
            Some(Value::String(_)) => Ok(()),
            None | Some(Value::Null) if !required => Ok(()),
            None => Err(missing_column(loc, field, col, rec)),
            Some(other) => Err(Error::data(
                loc.clone().field(col),
                format!("expected a string, found {}", super::read::json_type(other)),
            )),
        }
    }

    fn messages(&self, mut rec: Map<String, Value>, loc: &Location) -> Result<Value> {
        let col = self.col("messages");
        let arr = match rec.get(col) {
            Some(Value::Array(_)) => match rec.remove(col) {
                Some(Value::Array(a)) => a,
                _ => Vec::new(),
            },
            None => return Err(missing_column(loc, "messages", col, &rec)),
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
        for (i, m) in arr.into_iter().enumerate() {
            let at = |f: &str| loc.clone().field(format!("{col}[{i}].{f}"));
            let Value::Object(mut obj) = m else {
                return Err(Error::data(
                    loc.clone().field(format!("{col}[{i}]")),
                    "expected an object with role and content",
                ));
            };
            let role = match obj.remove("role") {
                Some(Value::String(r)) if CHAT_ROLES.contains(&r.as_str()) => r,
                Some(Value::String(r)) => {
                    return Err(Error::data(
                        at("role"),
                        format!("unknown role `{r}` (expected {})", CHAT_ROLES.join(", ")),
                    ))
                }
                _ => return Err(Error::data(at("role"), "missing or not a string")),
            };
            let content = match obj.remove("content") {
                Some(Value::String(c)) => c,
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
        assert_eq!(s.normalize(rec.clone(), &l).unwrap(), json!({"prompt": "2+2?", "completion": "4"}));
        let bad = obj(json!({"q": "x"}));
        let e = s.normalize(bad, &l).unwrap_err();
        assert!(e.to_string().contains("`a`") && e.to_string().contains("mapped to `completion`"), "{e}");
    }

    #[test]
    fn chat_messages_are_checked() {
        let l = Location::default().at(3);
        let rec = obj(json!({"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}));
        let s = Shape::detect(&rec, None, &BTreeMap::new(), &l).unwrap();
        let e = s.normalize(rec.clone(), &l).unwrap_err();
        assert!(e.to_string().contains("messages[1].role") && e.to_string().contains("record 3"), "{e}");
    }

    #[test]
    fn forced_format_that_does_not_fit() {
        let l = Location::default().at(1);
        let rec = obj(json!({"text": "a"}));
        let s = Shape::detect(&rec, Some(DatasetFormat::Completion), &BTreeMap::new(), &l).unwrap();
        let e = s.normalize(rec.clone(), &l).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        assert!(e.to_string().contains("`prompt`"), "{e}");
    }
}
