//! The streaming writer: header, metadata and tensor infos first (every tensor's type
//! and shape must be known up front, to compute the offsets), then each tensor's bytes
//! in order, so that only one tensor is in memory at a time.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::types::{GgmlType, TensorInfo, Value};
use super::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS, MAX_NAME_BYTES, VERSION};
use crate::error::{Error, IoResultExt, Result};

/// Writes one GGUF file. Misuse (a tensor out of order, bytes of the wrong size, a
/// tensor missing at [`GgufWriter::finish`]) is an internal error; I/O errors name the path.
pub struct GgufWriter<W: Write> {
    out: W,
    path: PathBuf,
    tensors: Vec<TensorInfo>,
    next: usize,
    alignment: u64,
}

fn bad(what: String) -> Error {
    Error::Internal(format!("GGUF writer: {what}"))
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, `metadata` (in order; keys unique) and the infos of
    /// `tensors` (name, GGML dims with the row length first, type) to `out`; `path`
    /// names the file in errors. The alignment is `general.alignment` when the metadata
    /// sets it (a power of two, as u32), else 32.
    pub fn new(
        mut out: W,
        path: impl AsRef<Path>,
        metadata: &[(String, Value)],
        tensors: &[(String, Vec<u64>, GgmlType)],
    ) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => return Err(bad(format!("{ALIGNMENT_KEY} must be a power of two as u32, got {v:?}"))),
        };
        let mut keys = HashSet::new();
        for (k, v) in metadata {
            if !keys.insert(k.as_str()) {
                return Err(bad(format!("metadata key `{k}` given twice")));
            }
            check_value(k, v)?;
        }
        let mut names = HashSet::new();
        let mut infos = Vec::with_capacity(tensors.len());
        let mut offset = 0u64;
        for (name, dims, ty) in tensors {
            if name.is_empty() || name.len() > MAX_NAME_BYTES || !names.insert(name.as_str()) {
                return Err(bad(format!(
                    "tensor name `{name}` is empty, longer than {MAX_NAME_BYTES} bytes or repeated"
                )));
            }
            if dims.is_empty() || dims.len() > MAX_DIMS || dims.contains(&0) {
                return Err(bad(format!("tensor `{name}` has dims {dims:?}")));
            }
            let n = dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d));
            let bytes = n.and_then(|n| ty.bytes_for(n)).filter(|_| dims[0] % ty.block_size() == 0);
            let Some(bytes) = bytes else {
                return Err(bad(format!("tensor `{name}`: dims {dims:?} are not whole {ty} rows")));
            };
            infos.push(TensorInfo { name: name.clone(), dims: dims.clone(), ty: *ty, offset });
            offset = offset
                .checked_add(bytes)
                .and_then(|o| o.checked_next_multiple_of(alignment))
                .ok_or_else(|| bad("data section overflows u64".into()))?;
        }
        let mut head = Vec::new();
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&VERSION.to_le_bytes());
        head.extend_from_slice(&(infos.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (k, v) in metadata {
            put_string(&mut head, k);
            head.extend_from_slice(&v.value_type().id().to_le_bytes());
            put_value(&mut head, v);
        }
        for t in &infos {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ty.id().to_le_bytes());
            head.extend_from_slice(&t.offset.to_le_bytes());
        }
        let padded = (head.len() as u64).next_multiple_of(alignment) as usize;
        head.resize(padded, 0);
        out.write_all(&head).with_path(&path)?;
        Ok(Self { out, path, tensors: infos, next: 0, alignment })
    }

    /// The tensor infos, with their offsets.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Writes the next tensor's bytes (`name` must be the next one declared, `data`
    /// exactly its size), then the padding to the alignment.
    pub fn write_tensor(&mut self, name: &str, data: &[u8]) -> Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(bad(format!("tensor `{name}` was not declared (all {} written)", self.tensors.len())));
        };
        if t.name != name {
            return Err(bad(format!("tensor `{name}` written where `{}` comes next", t.name)));
        }
        if t.bytes() != data.len() as u64 {
            return Err(bad(format!("tensor `{name}`: {} bytes, {} expected", data.len(), t.bytes())));
        }
        let pad = (t.bytes().next_multiple_of(self.alignment) - t.bytes()) as usize;
        self.out.write_all(data).with_path(&self.path)?;
        self.out.write_all(&vec![0u8; pad]).with_path(&self.path)?;
        self.next += 1;
        Ok(())
    }

    /// Checks that every tensor was written and flushes; returns the writer.
    pub fn finish(mut self) -> Result<W> {
        if let Some(t) = self.tensors.get(self.next) {
            return Err(bad(format!("tensor `{}` was never written", t.name)));
        }
        self.out.flush().with_path(&self.path)?;
        Ok(self.out)
    }
}

/// Arrays hold elements of their declared type only.
fn check_value(key: &str, v: &Value) -> Result<()> {
    if let Value::Array(ty, items) = v {
        for item in items {
            if item.value_type() != *ty {
                return Err(bad(format!("metadata `{key}`: a {:?} in an array of {ty:?}", item.value_type())));
            }
            check_value(key, item)?;
        }
    }
    Ok(())
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(ty, items) => {
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}
