//! GGUF, the model file of llama.cpp and Ollama: a streaming writer, a reader that
//! checks every size against the file before allocating, and GGML's block quantizers
//! (q8_0, q4_0, q5_0, q4_K, q6_K) with f16 / bf16 conversion.
//!
//! The layout (GGUF version 3, little-endian):
//!
//! ```text
//! "GGUF" u32 version  u64 tensor_count  u64 kv_count
//! kv_count x (string key, u32 value type, value)
//! tensor_count x (string name, u32 n_dims, n_dims x u64 ne (ne[0] = row length),
//!                 u32 ggml type, u64 offset into the data section)
//! zero padding to `general.alignment` (default 32)
//! data section: each tensor's bytes at its offset, padded to the alignment
//! ```
//!
//! A string is a u64 byte length and UTF-8 bytes; an array a u32 element type, a u64
//! count and the elements. This module knows nothing of models: the export
//! (`registry::export::gguf`) maps tensors and metadata onto it.

mod half;
mod quant;
mod read;
mod types;
mod write;

pub use half::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};
pub use quant::{dequantize, quantize};
pub use read::GgufFile;
pub use types::{GgmlType, TensorInfo, Value, ValueType};
pub use write::GgufWriter;

/// The first four bytes of every GGUF file.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The version this module writes (it reads 2 and 3).
pub const VERSION: u32 = 3;
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that sets the alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Longest tensor name llama.cpp accepts (`GGML_MAX_NAME` - 1 bytes).
pub const MAX_NAME_BYTES: usize = 63;
/// Most dimensions a tensor has (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    type Sample = Vec<(String, Vec<u64>, GgmlType, Vec<f32>)>;

    fn sample_metadata(alignment: Option<u32>) -> Vec<(String, Value)> {
        let mut m = vec![
            ("general.architecture".to_string(), Value::String("llama".into())),
            ("u8".into(), Value::U8(200)),
            ("i8".into(), Value::I8(-100)),
            ("u16".into(), Value::U16(60000)),
            ("i16".into(), Value::I16(-30000)),
            ("u32".into(), Value::U32(4_000_000_000)),
            ("i32".into(), Value::I32(-2_000_000_000)),
            ("f32".into(), Value::F32(1e-5)),
            ("bool".into(), Value::Bool(true)),
            ("u64".into(), Value::U64(u64::MAX)),
            ("i64".into(), Value::I64(i64::MIN)),
            ("f64".into(), Value::F64(-0.125)),
            ("tokens".into(), Value::strings(["<s>", "é", ""])),
            ("ids".into(), Value::i32s([1, -2, 3])),
            ("empty".into(), Value::Array(ValueType::U8, vec![])),
            ("nested".into(), Value::Array(ValueType::Array, vec![Value::f32s([0.5, 1.5]), Value::f32s([])])),
        ];
        if let Some(a) = alignment {
            m.push((ALIGNMENT_KEY.into(), Value::U32(a)));
        }
        m
    }

    /// Writes a file with tensors of several types and returns its path and the values.
    fn write_sample(dir: &std::path::Path, alignment: Option<u32>) -> (std::path::PathBuf, Sample) {
        let vals = |n: usize, k: f32| (0..n).map(|i| ((i as f32 * 0.37 + k).sin()) * 0.1).collect::<Vec<f32>>();
        let tensors = vec![
            ("a.weight".to_string(), vec![64u64, 3], GgmlType::Q8_0, vals(192, 1.0)),
            ("norm".to_string(), vec![5u64], GgmlType::F32, vals(5, 2.0)),
            ("b".to_string(), vec![256u64, 2], GgmlType::Q4K, vals(512, 3.0)),
            ("c".to_string(), vec![7u64, 1, 1], GgmlType::F16, vals(7, 4.0)),
            ("d".to_string(), vec![32u64], GgmlType::Q4_0, vals(32, 5.0)),
            ("e".to_string(), vec![256u64], GgmlType::Q6K, vals(256, 6.0)),
            ("f".to_string(), vec![3u64], GgmlType::Bf16, vals(3, 7.0)),
            ("g".to_string(), vec![32u64], GgmlType::Q5_0, vals(32, 8.0)),
        ];
        let path = dir.join("t.gguf");
        let infos: Vec<_> = tensors.iter().map(|(n, d, t, _)| (n.clone(), d.clone(), *t)).collect();
        let f = std::fs::File::create(&path).unwrap();
        let mut w = GgufWriter::new(std::io::BufWriter::new(f), &path, &sample_metadata(alignment), &infos).unwrap();
        for (name, _, ty, x) in &tensors {
            w.write_tensor(name, &quantize(*ty, x).unwrap()).unwrap();
        }
        w.finish().unwrap();
        (path, tensors)
    }

    #[test]
    fn reader_reads_what_the_writer_wrote() {
        let d = tempfile::tempdir().unwrap();
        for alignment in [None, Some(64), Some(1)] {
            let (path, tensors) = write_sample(d.path(), alignment);
            let f = GgufFile::open(&path).unwrap();
            assert_eq!(f.version, VERSION);
            assert_eq!(f.metadata, sample_metadata(alignment));
            let a = u64::from(alignment.unwrap_or(32));
            assert_eq!((f.alignment, f.data_offset % a), (a, 0));
            assert_eq!(f.tensors.len(), tensors.len());
            for (t, (name, dims, ty, x)) in f.tensors.iter().zip(&tensors) {
                assert_eq!((&t.name, &t.dims, t.ty), (name, dims, *ty));
                assert_eq!(t.offset % a, 0);
                assert_eq!(f.tensor_bytes(name).unwrap(), quantize(*ty, x).unwrap());
                let back = f.tensor_f32(name).unwrap();
                assert_eq!(back, dequantize(*ty, &quantize(*ty, x).unwrap(), x.len()).unwrap());
            }
            // The file ends with the last tensor's padding.
            let last = f.tensors.last().unwrap();
            let len = std::fs::metadata(&path).unwrap().len();
            assert_eq!(len, f.data_offset + (last.offset + last.bytes()).next_multiple_of(a));
            assert_eq!(f.get("f64"), Some(&Value::F64(-0.125)));
        }
    }

    #[test]
    fn writer_misuse_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.gguf");
        let t = |n: &str, dims: Vec<u64>, ty| (n.to_string(), dims, ty);
        let new = |tensors: &[(String, Vec<u64>, GgmlType)], meta: &[(String, Value)]| {
            GgufWriter::new(Vec::new(), &p, meta, tensors).map(|_| ())
        };
        assert!(new(&[t("a", vec![33], GgmlType::Q8_0)], &[]).is_err(), "partial block");
        assert!(new(&[t("a", vec![32], GgmlType::F32), t("a", vec![1], GgmlType::F32)], &[]).is_err(), "repeated");
        assert!(new(&[t(&"x".repeat(64), vec![1], GgmlType::F32)], &[]).is_err(), "long name");
        assert!(new(&[], &[(ALIGNMENT_KEY.into(), Value::U32(24))]).is_err(), "alignment");
        let bad_array = Value::Array(ValueType::U8, vec![Value::I32(1)]);
        assert!(new(&[], &[("k".into(), bad_array)]).is_err());
        let mut w =
            GgufWriter::new(Vec::new(), &p, &[], &[t("a", vec![2], GgmlType::F32), t("b", vec![1], GgmlType::F32)])
                .unwrap();
        assert!(w.write_tensor("b", &[0; 4]).is_err(), "out of order");
        assert!(w.write_tensor("a", &[0; 4]).is_err(), "wrong size");
        w.write_tensor("a", &[0; 8]).unwrap();
        assert_eq!(w.finish().unwrap_err().code(), "internal", "b missing");
    }

    /// Every truncation and many corruptions of a valid file are typed errors naming
    /// the file (or, for a corruption the format cannot see, a file that still reads).
    #[test]
    fn truncated_or_garbled_files_are_invalid_data_never_a_panic() {
        let d = tempfile::tempdir().unwrap();
        let (path, _) = write_sample(d.path(), None);
        let bytes = std::fs::read(&path).unwrap();
        let bad = d.path().join("bad.gguf");
        let open = |b: &[u8]| {
            std::fs::write(&bad, b).unwrap();
            GgufFile::open(&bad).and_then(|f| {
                for t in &f.tensors {
                    f.tensor_f32(&t.name)?;
                }
                Ok(f)
            })
        };
        // Cut anywhere before the last tensor's data ends (its padding may go).
        let f = GgufFile::open(&path).unwrap();
        let end = f.tensors.iter().map(|t| f.data_offset + t.offset + t.bytes()).max().unwrap() as usize;
        for n in (0..end).step_by(7).chain([end - 1]) {
            let e = open(&bytes[..n]).unwrap_err();
            assert_eq!(e.code(), "invalid_data", "cut at {n}: {e}");
            assert!(e.to_string().contains("bad.gguf"), "{e}");
        }
        let mut s = 99u32;
        for i in 0..1000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let mut b = bytes.clone();
            let at = (s as usize) % 400.min(b.len());
            b[at] = if i % 3 == 0 { 0xff } else { (s >> 8) as u8 };
            if let Err(e) = open(&b) {
                assert_eq!(e.code(), "invalid_data", "byte {at}: {e}");
            }
        }
        // Counts far beyond the file are refused before anything is allocated.
        let mut b = bytes.clone();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let e = open(&b).unwrap_err();
        assert!(e.to_string().contains("tensor_count"), "{e}");
        let e = open(b"GGML\x03\0\0\0").unwrap_err();
        assert!(e.to_string().contains("not a GGUF file"), "{e}");
        let mut b = bytes.clone();
        b[4..8].copy_from_slice(&3u32.to_be_bytes());
        assert!(open(&b).unwrap_err().to_string().contains("big-endian"));
    }
}
