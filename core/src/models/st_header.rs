//! safetensors headers, read without loading the tensors: every lie a header can
//! tell (a huge length, offsets past the end, overlaps, gaps, shapes that do not
//! match the bytes, unknown dtypes) is a typed `invalid_data` error naming the file
//! and the tensor. Parsing and validation go through the `safetensors` crate.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::Read;
use std::path::Path;

use safetensors::tensor::{Metadata, TensorInfo as StInfo};
use safetensors::{Dtype, SafeTensorError};
use serde::de::value::StrDeserializer;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::error::{Error, IoResultExt, Location, Result};

/// One tensor in a safetensors header.
#[derive(Debug, Clone)]
pub(crate) struct TensorInfo {
    pub(crate) dtype: String,
    pub(crate) shape: Vec<u64>,
    /// Where the tensor's bytes start in the file, and how many there are.
    pub(crate) offset: u64,
    pub(crate) len: u64,
}

/// The dtypes the weight loader reads (`models::load`); a file holding another is
/// refused there, whether or not the model needs that tensor.
pub(crate) const LOADABLE_DTYPES: [&str; 7] = ["F32", "F16", "BF16", "F64", "I64", "U32", "U8"];
/// The dtypes a weight the model computes with may have.
pub(crate) const FLOAT_DTYPES: [&str; 4] = ["F32", "F16", "BF16", "F64"];

/// Longest safetensors header accepted: the safetensors crate's own limit (it
/// rejects longer ones too). Checked before the header is read, so a lying length
/// never allocates more than this, nor more than the file holds.
const MAX_HEADER_LEN: u64 = 100_000_000;

/// One tensor entry as written in the header. The dtype stays a string until the
/// safetensors crate maps it, so an unknown one is reported with its name.
#[derive(Deserialize)]
struct RawEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (usize, usize),
}

/// A parsed header: `__metadata__` and the tensor entries, in file order.
#[derive(Default)]
struct RawHeader {
    metadata: Option<HashMap<String, String>>,
    tensors: Vec<(String, RawEntry)>,
}

/// Deserialises a header straight into [`RawHeader`] (no intermediate
/// `serde_json::Value`), recording in `failed_at` the key whose value did not parse.
struct HeaderSeed<'a> {
    failed_at: &'a mut Option<String>,
}

impl<'de> DeserializeSeed<'de> for HeaderSeed<'_> {
    type Value = RawHeader;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<RawHeader, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HeaderSeed<'_> {
    type Value = RawHeader;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object of tensors")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawHeader, A::Error> {
        let mut h = RawHeader::default();
        while let Some(key) = map.next_key::<String>()? {
            let parsed = if key == "__metadata__" {
                map.next_value().map(|m| h.metadata = Some(m))
            } else {
                map.next_value::<RawEntry>().map(|e| h.tensors.push((key.clone(), e)))
            };
            if let Err(e) = parsed {
                *self.failed_at = Some(key);
                return Err(e);
            }
        }
        Ok(h)
    }
}

/// Reads and validates a safetensors header without reading the tensor data.
///
/// The length prefix is checked against the file size and [`MAX_HEADER_LEN`] before
/// anything is allocated; the header is then parsed and validated by the
/// `safetensors` crate (dtypes, shape against byte size, contiguous data offsets
/// from 0), and the data section must exactly fill the rest of the file.
pub(crate) fn read_safetensors_header(path: &Path) -> Result<BTreeMap<String, TensorInfo>> {
    let bad = |reason: String| Error::data(Location::file(path), reason);
    let mut f = File::open(path).with_path(path)?;
    let file_len = f.metadata().with_path(path)?.len();
    if file_len < 8 {
        return Err(bad(format!("not a safetensors file ({file_len} bytes)")));
    }
    let mut len_buf = [0u8; 8];
    f.read_exact(&mut len_buf).with_path(path)?;
    let n = u64::from_le_bytes(len_buf);
    if n > MAX_HEADER_LEN || n > file_len - 8 {
        return Err(bad(format!("header length {n} does not fit a {file_len}-byte file")));
    }
    // n <= MAX_HEADER_LEN, so it fits in usize and the allocation is bounded.
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).with_path(path)?;
    parse_header(path, &header, file_len - 8 - n)
}

/// Validates the header bytes (`header`, which starts at byte 8) of a file whose data
/// section holds `data_len` bytes; see [`read_safetensors_header`].
fn parse_header(path: &Path, header: &[u8], data_len: u64) -> Result<BTreeMap<String, TensorInfo>> {
    let bad = |reason: String| Error::data(Location::file(path), reason);
    let at = |name: &str, reason: String| Error::data(Location::file(path).field(name), reason);

    let mut failed_at = None;
    let mut de = serde_json::Deserializer::from_slice(header);
    let raw = HeaderSeed { failed_at: &mut failed_at }.deserialize(&mut de).and_then(|h| de.end().map(|()| h));
    let raw = raw.map_err(|e| match &failed_at {
        Some(k) if k == "__metadata__" => at(k, format!("invalid __metadata__ (must map strings to strings): {e}")),
        Some(k) => at(k, format!("invalid tensor entry: {e}")),
        None => bad(format!("safetensors header is not valid JSON: {e}")),
    })?;

    // Each tensor on its own: dtype known to the crate, shape matching its byte span.
    let mut tensors: Vec<(String, StInfo)> = Vec::with_capacity(raw.tensors.len());
    for (name, e) in raw.tensors {
        let dtype = Dtype::deserialize(StrDeserializer::<serde::de::value::Error>::new(&e.dtype))
            .map_err(|_| at(&name, format!("unknown dtype `{}`", e.dtype)))?;
        let (start, end) = e.data_offsets;
        let Some(len) = end.checked_sub(start) else {
            return Err(at(&name, format!("data_offsets [{start}, {end}] end before they start")));
        };
        let alone = StInfo { dtype, shape: e.shape.clone(), data_offsets: (0, len) };
        if let Err(err) = Metadata::new(None, vec![(name.clone(), alone)]) {
            let shape = &e.shape;
            return Err(at(
                &name,
                match err {
                    SafeTensorError::TensorInvalidInfo => {
                        format!("data_offsets [{start}, {end}] ({len} bytes) do not match shape {shape:?} of {dtype}")
                    }
                    SafeTensorError::ValidationOverflow => format!("shape {shape:?} of {dtype} overflows"),
                    SafeTensorError::MisalignedSlice => {
                        format!("shape {shape:?} of {dtype} is not a whole number of bytes")
                    }
                    other => other.to_string(),
                },
            ));
        }
        tensors.push((name, StInfo { dtype, shape: e.shape, data_offsets: e.data_offsets }));
    }

    // All together, in data order: contiguous from 0, no overlap, no gap.
    tensors.sort_by(|(a, x), (b, y)| x.data_offsets.cmp(&y.data_offsets).then_with(|| a.cmp(b)));
    let mut names = std::collections::HashSet::with_capacity(tensors.len());
    for (name, _) in &tensors {
        if !names.insert(name.as_str()) {
            return Err(at(name, "tensor appears twice in the header".into()));
        }
    }
    drop(names);
    let metadata = Metadata::new(raw.metadata, tensors.clone()).map_err(|err| match err {
        SafeTensorError::InvalidOffset(name) => {
            let i = tensors.iter().position(|(n, _)| *n == name).unwrap_or(0);
            let start = tensors.get(i).map_or(0, |(_, t)| t.data_offsets.0);
            let expected = i.checked_sub(1).and_then(|j| tensors.get(j)).map_or(0, |(_, t)| t.data_offsets.1);
            at(&name, format!("tensor data starts at {start}, expected {expected} (overlapping or gapped tensors)"))
        }
        other => bad(format!("invalid safetensors header: {other}")),
    })?;

    // The data section: exactly what the tensors cover.
    let covered = metadata.data_len() as u64;
    if covered > data_len {
        let (name, end) = tensors
            .iter()
            .find(|(_, t)| t.data_offsets.1 as u64 > data_len)
            .map(|(n, t)| (n.as_str(), t.data_offsets.1))
            .unwrap_or(("", metadata.data_len()));
        return Err(at(
            name,
            format!("data ends at byte {end} but the file holds {data_len} bytes of data (truncated?)"),
        ));
    }
    if covered < data_len {
        return Err(bad(format!("tensors cover {covered} bytes but the data section has {data_len}")));
    }
    let base = 8 + header.len() as u64;
    Ok(tensors
        .into_iter()
        .map(|(name, t)| {
            let (start, end) = t.data_offsets;
            let info = TensorInfo {
                dtype: t.dtype.to_string(),
                shape: t.shape.into_iter().map(|d| d as u64).collect(),
                offset: base + start as u64,
                len: (end - start) as u64,
            };
            (name, info)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn write_st(path: &Path, header: &str, data_len: usize) {
        let mut b = (header.len() as u64).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend(std::iter::repeat_n(0u8, data_len));
        fs::write(path, b).unwrap();
    }

    #[test]
    fn header_checks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        write_st(&p, r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 16);
        assert_eq!(read_safetensors_header(&p).unwrap()["a"].shape, vec![2, 2]);
        write_st(&p, r#"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#, 8);
        let e = read_safetensors_header(&p).unwrap_err();
        assert!(e.to_string().contains("truncated") && e.to_string().contains("`a`"), "{e}");
        write_st(&p, r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}}"#, 16);
        assert!(read_safetensors_header(&p).unwrap_err().to_string().contains("do not match shape"));
        write_st(&p, r#"{"a":{"dtype":"Q9","shape":[1],"data_offsets":[0,1]}}"#, 1);
        assert!(read_safetensors_header(&p).unwrap_err().to_string().contains("unknown dtype"));
        fs::write(&p, b"xx").unwrap();
        assert_eq!(read_safetensors_header(&p).unwrap_err().code(), "invalid_data");
    }

    /// The error for `header` followed by `data_len` zero bytes; must be invalid_data
    /// naming the file.
    fn err(header: &str, data_len: usize) -> String {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bad.safetensors");
        write_st(&p, header, data_len);
        let e = read_safetensors_header(&p).unwrap_err();
        assert_eq!(e.code(), "invalid_data", "{e}");
        assert!(e.to_string().contains("bad.safetensors"), "{e}");
        e.to_string()
    }

    #[test]
    fn valid_headers_give_offsets_in_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        // Out of order in the JSON, with metadata, a scalar and an empty tensor.
        let h = r#"{"b":{"dtype":"BF16","shape":[3],"data_offsets":[4,10]},"__metadata__":{"format":"pt"},
            "a":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"e":{"dtype":"I64","shape":[0,5],"data_offsets":[10,10]}}"#;
        write_st(&p, h, 10);
        let t = read_safetensors_header(&p).unwrap();
        let base = 8 + h.len() as u64;
        assert_eq!(t.keys().collect::<Vec<_>>(), ["a", "b", "e"]);
        assert_eq!((t["a"].dtype.as_str(), t["a"].offset, t["a"].len), ("F32", base, 4));
        assert_eq!(
            (t["b"].dtype.as_str(), t["b"].shape.clone(), t["b"].offset, t["b"].len),
            ("BF16", vec![3], base + 4, 6)
        );
        assert_eq!((t["e"].offset, t["e"].len), (base + 10, 0));
        // No tensors at all.
        write_st(&p, "{}", 0);
        assert!(read_safetensors_header(&p).unwrap().is_empty());
        // The crate's own writer.
        let bytes = safetensors::serialize(
            [("w", safetensors::tensor::TensorView::new(Dtype::U8, vec![2], &[1, 2]).unwrap())],
            None,
        )
        .unwrap();
        fs::write(&p, bytes).unwrap();
        assert_eq!(read_safetensors_header(&p).unwrap()["w"].len, 2);
    }

    #[test]
    fn lying_header_lengths_are_rejected_before_reading() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("len.safetensors");
        for n in [u64::MAX, 1 << 40, 200_000_000, 17] {
            let mut b = n.to_le_bytes().to_vec();
            b.extend_from_slice(b"{}      ");
            fs::write(&p, b).unwrap();
            let e = read_safetensors_header(&p).unwrap_err();
            assert!(e.code() == "invalid_data" && e.to_string().contains(&format!("header length {n}")), "{e}");
        }
        // Over the cap even though the (sparse) file is longer: not read.
        let f = File::create(&p).unwrap();
        std::io::Write::write_all(&mut &f, &150_000_000u64.to_le_bytes()).unwrap();
        f.set_len(150_000_100).unwrap();
        drop(f);
        assert!(read_safetensors_header(&p).unwrap_err().to_string().contains("header length 150000000"));
        // Shorter than the length prefix, and empty.
        for b in [&b""[..], b"\x02\0\0\0"] {
            fs::write(&p, b).unwrap();
            assert!(read_safetensors_header(&p).unwrap_err().to_string().contains("not a safetensors file"));
        }
    }

    #[test]
    fn lying_offsets_and_shapes_are_typed_errors_naming_the_tensor() {
        // Data past the end of the file (truncated), also with huge offsets.
        let e = err(r#"{"a":{"dtype":"U8","shape":[1000000],"data_offsets":[0,1000000]}}"#, 4);
        assert!(e.contains("`a`") && e.contains("truncated"), "{e}");
        let big = u64::MAX / 8; // the crate counts bits: larger overflows (tested below)
        let e = err(&format!(r#"{{"a":{{"dtype":"U8","shape":[{big}],"data_offsets":[0,{big}]}}}}"#), 4);
        assert!(e.contains("`a`") && e.contains("truncated"), "{e}");
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            4,
        );
        assert!(e.contains("`b`") && e.contains("data ends at byte 6"), "{e}");
        // Offsets that do not fit a u64, or are negative.
        let e = err(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,99999999999999999999]}}"#, 1);
        assert!(e.contains("`a`") && e.contains("invalid tensor entry"), "{e}");
        let e = err(r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#, 1);
        assert!(e.contains("`a`") && e.contains("invalid tensor entry"), "{e}");
        // Overlapping, gapped, not starting at 0, reversed.
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            12,
        );
        assert!(e.contains("`b`") && e.contains("starts at 4, expected 8") && e.contains("overlapping"), "{e}");
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            12,
        );
        assert!(e.contains("`b`") && e.contains("starts at 8, expected 4") && e.contains("gapped"), "{e}");
        let e = err(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#, 8);
        assert!(e.contains("`a`") && e.contains("starts at 4, expected 0"), "{e}");
        let e = err(r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[8,4]}}"#, 8);
        assert!(e.contains("`a`") && e.contains("end before they start"), "{e}");
        // Two tensors sharing the same bytes, and a name given twice.
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#,
            4,
        );
        assert!(e.contains("`b`") && e.contains("overlapping"), "{e}");
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            8,
        );
        assert!(e.contains("`a`") && e.contains("twice"), "{e}");
        // Data after the last tensor.
        let e = err(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#, 12);
        assert!(e.contains("tensors cover 4 bytes but the data section has 12"), "{e}");
        // Shape against byte size: too few, too many, overflowing, not whole bytes.
        let e = err(r#"{"a":{"dtype":"F16","shape":[3],"data_offsets":[0,4]}}"#, 4);
        assert!(e.contains("`a`") && e.contains("do not match shape [3] of F16"), "{e}");
        let e = err(r#"{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,4]}}"#, 4);
        assert!(e.contains("`a`") && e.contains("do not match shape"), "{e}");
        let e = err(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}"#, 4);
        assert!(e.contains("`a`") && e.contains("overflows"), "{e}");
        let e = err(r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}"#, 2);
        assert!(e.contains("`a`") && e.contains("not a whole number of bytes"), "{e}");
        // Unknown, misspelt or missing dtype; missing fields.
        for dt in ["Q9", "f32", "", "F32 "] {
            let e = err(&format!(r#"{{"a":{{"dtype":"{dt}","shape":[1],"data_offsets":[0,1]}}}}"#), 1);
            assert!(e.contains("`a`") && e.contains(&format!("unknown dtype `{dt}`")), "{e}");
        }
        let e = err(r#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#, 1);
        assert!(e.contains("`a`") && e.contains("missing field `dtype`"), "{e}");
        let e = err(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}}"#, 1);
        assert!(e.contains("`a`") && e.contains("invalid tensor entry"), "{e}");
        let e = err(r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#, 1);
        assert!(e.contains("`a`") && e.contains("invalid tensor entry"), "{e}");
    }

    #[test]
    fn malformed_header_json_is_a_typed_error() {
        for h in ["{", "[]", "null", "{} {}", "{\"a\": 1}", "\u{1}"] {
            let e = err(h, 0);
            assert!(e.contains("not valid JSON") || e.contains("invalid tensor entry"), "{h}: {e}");
        }
        let e = err(r#"{"__metadata__":{"format":1}}"#, 0);
        assert!(e.contains("`__metadata__`") && e.contains("strings to strings"), "{e}");
        // Not UTF-8.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.safetensors");
        let mut b = 4u64.to_le_bytes().to_vec();
        b.extend_from_slice(b"{\"\xff\"");
        fs::write(&p, b).unwrap();
        assert_eq!(read_safetensors_header(&p).unwrap_err().code(), "invalid_data");
        // Deep nesting hits serde_json's recursion limit instead of the stack.
        let deep = format!(r#"{{"__metadata__":{}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert!(err(&deep, 0).contains("`__metadata__`"));
    }

    /// LOADABLE_DTYPES are exactly the dtypes the weight loader reads.
    #[test]
    fn loadable_dtypes_are_the_loaders() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        for dt in ["F32", "F16", "BF16", "F64", "I64", "U32", "U8", "I32", "I16", "I8", "U16", "U64", "BOOL", "F8_E4M3"]
        {
            let n = 8;
            let bytes = match dt {
                "F64" | "I64" | "U64" => 8,
                "F32" | "I32" | "U32" => 4,
                "F16" | "BF16" | "I16" | "U16" => 2,
                _ => 1,
            };
            write_st(
                &p,
                &format!(r#"{{"w":{{"dtype":"{dt}","shape":[{n}],"data_offsets":[0,{}]}}}}"#, n * bytes),
                n * bytes,
            );
            assert!(read_safetensors_header(&p).is_ok(), "{dt}");
            let loaded =
                super::super::load::Weights::load(d.path(), candle_core::DType::F32, &candle_core::Device::Cpu);
            assert_eq!(loaded.is_ok(), LOADABLE_DTYPES.contains(&dt), "{dt}");
        }
        assert!(FLOAT_DTYPES.iter().all(|d| LOADABLE_DTYPES.contains(d)));
    }

    /// Every one-byte corruption of a valid header is either still valid or a typed
    /// error; nothing panics.
    #[test]
    fn corrupted_headers_never_panic() {
        let h = br#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[8,12]}}"#;
        let p = Path::new("fuzz.safetensors");
        for i in 0..h.len() {
            for v in [b'0', b'9', b'-', b'"', b'{', b']', b',', b' ', 0, 0xff] {
                let mut c = h.to_vec();
                c[i] = v;
                for data_len in [0, 12, u64::MAX] {
                    if let Err(e) = parse_header(p, &c, data_len) {
                        assert_eq!(e.code(), "invalid_data");
                    }
                }
            }
            assert!(parse_header(p, &h[..i], 12).is_err());
        }
    }
}
