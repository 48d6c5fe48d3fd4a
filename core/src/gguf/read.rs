//! The reader: parses the header, metadata and tensor infos, checking each count and
//! length against the bytes left in the file before allocating for it, so a truncated
//! or garbled file is an `invalid_data` error naming the file and the field, never a
//! panic or a huge allocation. Tensor data is read on demand.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::types::{GgmlType, TensorInfo, Value, ValueType};
use super::{quant, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, MAGIC, MAX_DIMS};
use crate::error::{Error, IoResultExt, Location, Result};

/// Deepest nesting of arrays accepted (llama.cpp writes none deeper than 1).
const MAX_ARRAY_DEPTH: usize = 4;

/// A parsed GGUF file: its metadata and tensor infos (the data stays on disk).
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    /// In file order.
    pub metadata: Vec<(String, Value)>,
    /// In file order.
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts.
    pub data_offset: u64,
}

struct Cursor<'a> {
    r: BufReader<File>,
    pos: u64,
    len: u64,
    path: &'a Path,
}

impl Cursor<'_> {
    fn err(&self, field: &str, reason: impl Into<String>) -> Error {
        Error::data(Location::file(self.path).field(field), reason)
    }

    fn left(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fails unless `n` more bytes are in the file.
    fn need(&self, field: &str, n: u64) -> Result<()> {
        if n > self.left() {
            return Err(self.err(
                field,
                format!("truncated: needs {n} bytes at offset {}, the file has {} left", self.pos, self.left()),
            ));
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        self.need(field, N as u64)?;
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).with_path(self.path)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(field)?))
    }

    fn string(&mut self, field: &str) -> Result<String> {
        let n = self.u64(field)?;
        self.need(field, n)?;
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b).with_path(self.path)?;
        self.pos += n;
        String::from_utf8(b).map_err(|_| self.err(field, "string is not UTF-8"))
    }

    fn value(&mut self, field: &str, ty: ValueType, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.bytes::<1>(field)?[0]),
            ValueType::I8 => Value::I8(self.bytes::<1>(field)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.bytes(field)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.bytes(field)?)),
            ValueType::U32 => Value::U32(self.u32(field)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.bytes(field)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.bytes(field)?)),
            ValueType::Bool => match self.bytes::<1>(field)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(field, format!("bool is {b}, not 0 or 1"))),
            },
            ValueType::String => Value::String(self.string(field)?),
            ValueType::U64 => Value::U64(self.u64(field)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.bytes(field)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.bytes(field)?)),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(field, format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let id = self.u32(field)?;
                let elem = ValueType::from_id(id)
                    .ok_or_else(|| self.err(field, format!("unknown array element type {id}")))?;
                let n = self.u64(field)?;
                // Every element takes at least min_bytes: a count the file cannot hold is
                // refused before the vector is allocated.
                self.need(field, n.saturating_mul(elem.min_bytes()))?;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(field, elem, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

impl GgufFile {
    /// Parses the header, metadata and tensor infos of `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let f = File::open(path).with_path(path)?;
        let len = f.metadata().with_path(path)?.len();
        let mut c = Cursor { r: BufReader::with_capacity(1 << 16, f), pos: 0, len, path };
        let magic: [u8; 4] = c.bytes("magic")?;
        if magic != MAGIC {
            return Err(c.err("magic", format!("not a GGUF file (starts with {magic:02x?}, not \"GGUF\")")));
        }
        let version = c.u32("version")?;
        match version {
            2 | 3 => {}
            v if v.swap_bytes() <= 3 => {
                return Err(c.err("version", "a big-endian GGUF file: only little-endian files are supported"))
            }
            v => return Err(c.err("version", format!("unsupported GGUF version {v} (supported: 2, 3)"))),
        }
        let n_tensors = c.u64("tensor_count")?;
        let n_kv = c.u64("metadata_kv_count")?;
        // A key-value pair takes at least 13 bytes, a tensor info at least 32.
        c.need("metadata_kv_count", n_kv.saturating_mul(13))?;
        c.need("tensor_count", n_tensors.saturating_mul(32))?;
        let mut metadata = Vec::with_capacity(n_kv as usize);
        let mut keys = HashSet::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let field = format!("metadata `{key}`");
            if !keys.insert(key.clone()) {
                return Err(c.err(&field, "key appears twice"));
            }
            let id = c.u32(&field)?;
            let ty = ValueType::from_id(id).ok_or_else(|| c.err(&field, format!("unknown value type {id}")))?;
            let v = c.value(&field, ty, 0)?;
            metadata.push((key, v));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            None => DEFAULT_ALIGNMENT,
            Some((_, Value::U32(a))) if a.is_power_of_two() => u64::from(*a),
            Some((_, v)) => {
                return Err(
                    c.err(&format!("metadata `{ALIGNMENT_KEY}`"), format!("must be a power of two (u32), got {v:?}"))
                )
            }
        };
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut names = HashSet::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor info #{i}"))?;
            let field = format!("tensor `{name}`");
            if !names.insert(name.clone()) {
                return Err(c.err(&field, "tensor name appears twice"));
            }
            let n_dims = c.u32(&field)?;
            if n_dims == 0 || n_dims as usize > MAX_DIMS {
                return Err(c.err(&field, format!("{n_dims} dimensions (1 to {MAX_DIMS} supported)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&field)?);
            }
            let id = c.u32(&field)?;
            let ty = GgmlType::from_id(id)
                .ok_or_else(|| c.err(&field, format!("unknown or unsupported tensor type {id}")))?;
            let offset = c.u64(&field)?;
            let elements = dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d)).filter(|n| *n <= i64::MAX as u64);
            let Some(elements) = elements else {
                return Err(c.err(&field, format!("dims {dims:?} overflow")));
            };
            if dims[0] % ty.block_size() != 0 || ty.bytes_for(elements).is_none() {
                return Err(c.err(
                    &field,
                    format!("row length {} is not a multiple of {ty}'s block of {}", dims[0], ty.block_size()),
                ));
            }
            if offset % alignment != 0 {
                return Err(
                    c.err(&field, format!("data offset {offset} is not a multiple of the alignment {alignment}"))
                );
            }
            tensors.push(TensorInfo { name, dims, ty, offset });
        }
        let data_offset = c.pos.next_multiple_of(alignment);
        for t in &tensors {
            let end = data_offset.checked_add(t.offset).and_then(|o| o.checked_add(t.bytes()));
            if end.is_none_or(|e| e > len) {
                return Err(c.err(
                    &format!("tensor `{}`", t.name),
                    format!(
                        "truncated: its {} bytes at data offset {} end past the end of the file ({len} bytes)",
                        t.bytes(),
                        t.offset
                    ),
                ));
            }
        }
        Ok(Self { path: path.to_path_buf(), version, metadata, tensors, alignment, data_offset })
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// The info of tensor `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.tensor(name).ok_or_else(|| Error::data(Location::file(&self.path).field(name), "no such tensor"))
    }

    /// The raw bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>> {
        let t = self.info(name)?;
        let mut f = File::open(&self.path).with_path(&self.path)?;
        f.seek(SeekFrom::Start(self.data_offset + t.offset)).with_path(&self.path)?;
        let mut b = vec![0u8; t.bytes() as usize];
        f.read_exact(&mut b).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::data(Location::file(&self.path).field(name), "truncated: the file ends inside the tensor")
            } else {
                Error::io(&self.path, e)
            }
        })?;
        Ok(b)
    }

    /// Tensor `name` as f32 values (dequantized), row after row.
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.info(name)?;
        if !t.ty.is_convertible() {
            return Err(Error::data(
                Location::file(&self.path).field(name),
                format!("tensor type {} cannot be dequantized by anneal", t.ty),
            ));
        }
        let bytes = self.tensor_bytes(name)?;
        quant::dequantize(t.ty, &bytes, t.elements() as usize)
    }
}
