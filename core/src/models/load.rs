//! Reads safetensors weights (one `model.safetensors` or shards listed in
//! `model.safetensors.index.json`) into named tensors, and hands them out with shape
//! checks whose errors name the file and the tensor.

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::gemv::{Quant, QuantWeight};
use crate::error::{Error, IoResultExt, Location, Result};

/// Named tensors with the file each came from.
pub(crate) struct Weights {
    tensors: HashMap<String, (Tensor, usize)>,
    /// Matrices held quantized (q8_0 or bf16) for inference, not in `tensors`.
    quant: HashMap<String, std::sync::Arc<QuantWeight>>,
    files: Vec<PathBuf>,
    /// Where a missing tensor is reported (the index, or the single file).
    main_file: PathBuf,
    dtype: DType,
}

/// The shard files an `*.safetensors.index.json` lists (each once, in name order), which
/// must be plain file names inside `dir`.
pub(crate) fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).with_path(index)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::data(Location::file(index), e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::data(Location::file(index).field("weight_map"), "missing or not an object"))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let at = || Location::file(index).field(format!("weight_map.{tensor}"));
        let name = file.as_str().ok_or_else(|| Error::data(at(), "not a file name"))?;
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(Error::data(at(), format!("unsafe shard name `{name}`")));
        }
        shards.insert(name.to_string());
    }
    Ok(shards.into_iter().map(|n| dir.join(n)).collect())
}

/// The weight files of an HF directory.
pub(crate) fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        return shard_files(dir, &index);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(Error::data(Location::file(single), "no weights: expected model.safetensors or model.safetensors.index.json"))
}

/// Matrices to hold quantized while loading: file tensor name -> (the name the family
/// loader asks for, whether the file holds it `[in, out]` as a Conv1D weight).
pub(crate) type QuantizeOnLoad = HashMap<String, (String, bool)>;

/// `t` (`[out, in]`, or `[in, out]` when `transposed`) as `[out, in]` in format `quant`;
/// `None` when it is not a matrix or (q8_0) its rows are not a whole number of blocks
/// (it stays dense, as `Linear::quantize` leaves such a layer).
fn quantize_matrix(t: &Tensor, transposed: bool, quant: Quant) -> Result<Option<QuantWeight>> {
    let Ok((a, b)) = t.dims2() else { return Ok(None) };
    let (out_f, in_f) = if transposed { (b, a) } else { (a, b) };
    if !quant.fits(in_f) {
        return Ok(None);
    }
    let t = t.to_dtype(DType::F32)?;
    let t = if transposed { t.t()?.contiguous()? } else { t };
    let values: Vec<f32> = t.flatten_all()?.to_vec1()?;
    Ok(Some(QuantWeight::from_f32(out_f, in_f, &values, quant)?))
}

/// A `rows x cols` matrix of `dtype` read from `file`'s position, quantized to `quant`
/// one row at a time (I/O errors outside, conversion errors inside). bf16 values of a
/// bf16 file are taken as they are.
fn quantize_rows(
    file: &mut std::fs::File,
    rows: usize,
    cols: usize,
    dtype: DType,
    quant: Quant,
) -> std::io::Result<Result<QuantWeight>> {
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut bytes = vec![0u8; cols * dtype.size_in_bytes()];
    let mut row = vec![0f32; cols];
    let (mut q, mut scales) = match quant {
        Quant::Q8_0 => (Vec::with_capacity(rows * cols), Vec::with_capacity(rows * cols / super::gemv::Q8_BLOCK)),
        Quant::Bf16 => (Vec::new(), Vec::new()),
    };
    let mut half = Vec::with_capacity(if quant == Quant::Bf16 { rows * cols } else { 0 });
    for _ in 0..rows {
        reader.read_exact(&mut bytes)?;
        if quant == Quant::Bf16 && dtype == DType::BF16 {
            half.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])));
            continue;
        }
        if dtype == DType::F32 {
            for (v, b) in row.iter_mut().zip(bytes.chunks_exact(4)) {
                *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        } else {
            let converted = Tensor::from_raw_buffer(&bytes, dtype, &[cols], &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.to_vec1::<f32>());
            match converted {
                Ok(v) => row = v,
                Err(e) => return Ok(Err(e.into())),
            }
        }
        match quant {
            Quant::Q8_0 => super::gemv::quantize_into(&row, &mut q, &mut scales),
            Quant::Bf16 => half.extend(row.iter().map(|&v| crate::gguf::f32_to_bf16(v))),
        }
    }
    Ok(match quant {
        Quant::Q8_0 => super::gemv::Q8Weight::from_parts(rows, cols, q, scales).map(QuantWeight::Q8),
        Quant::Bf16 => super::gemv::Bf16Weight::from_bits(rows, cols, half).map(QuantWeight::Bf16),
    })
}

impl Weights {
    /// Loads every tensor of a model directory (`model.safetensors` or its shards),
    /// converted to `dtype`, on `device`.
    pub(crate) fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let files = weight_files(dir)?;
        let index = dir.join("model.safetensors.index.json");
        let main_file = if index.exists() { index } else { files.first().cloned().unwrap_or_default() };
        Self::from_files(files, main_file, dtype, device)
    }

    /// Loads every tensor of `files` (shards of one model: a name may appear in one only),
    /// converted to `dtype`, on `device`; `main_file` is where a missing tensor is reported.
    /// The weights in `dir` for inference, the matrices of `quantize` held in format
    /// `quant` as each is read (no dense copy of the model at any time: peak memory
    /// stays near the quantized size plus one tensor).
    pub(crate) fn load_quantized(dir: &Path, device: &Device, quantize: &QuantizeOnLoad, quant: Quant) -> Result<Self> {
        let files = weight_files(dir)?;
        let index = dir.join("model.safetensors.index.json");
        let main_file = if index.exists() { index } else { files.first().cloned().unwrap_or_default() };
        Self::read(files, main_file, DType::F32, device, Some((quantize, quant)))
    }

    pub(crate) fn from_files(files: Vec<PathBuf>, main_file: PathBuf, dtype: DType, device: &Device) -> Result<Self> {
        Self::read(files, main_file, dtype, device, None)
    }

    fn read(
        files: Vec<PathBuf>,
        main_file: PathBuf,
        dtype: DType,
        device: &Device,
        quantize: Option<(&QuantizeOnLoad, Quant)>,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        let mut quantized = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            // Tensor by tensor (not the whole file at once): peak memory is the weights
            // plus one tensor's bytes.
            let header = super::st_header::read_safetensors_header(f)?;
            let mut file = std::fs::File::open(f).with_path(f)?;
            let mut buf = Vec::new();
            for (name, info) in header {
                let file_dtype = match info.dtype.as_str() {
                    "F32" => DType::F32,
                    "F16" => DType::F16,
                    "BF16" => DType::BF16,
                    "F64" => DType::F64,
                    "I64" => DType::I64,
                    "U32" => DType::U32,
                    "U8" => DType::U8,
                    other => {
                        return Err(Error::data(
                            Location::file(f).field(name),
                            format!("tensor dtype {other} is not supported for weights"),
                        ))
                    }
                };
                let shape: Vec<usize> = info.shape.iter().map(|&d| d as usize).collect();
                file.seek(SeekFrom::Start(info.offset)).with_path(f)?;
                let to_quantize = quantize.and_then(|(q, format)| Some((q.get(&name)?, format)));
                // A row-major matrix is quantized row by row as it is read: no copy of
                // the whole tensor is ever held (the token embedding is the largest).
                if let (Some(((key, false), format)), &[rows, cols]) = (to_quantize, shape.as_slice()) {
                    if format.fits(cols) && info.len == (rows * cols * file_dtype.size_in_bytes()) as u64 {
                        let w = quantize_rows(&mut file, rows, cols, file_dtype, format).with_path(f)?;
                        if quantized.insert(key.clone(), std::sync::Arc::new(w?)).is_some() {
                            return Err(Error::data(Location::file(f).field(name), "tensor appears in two shards"));
                        }
                        continue;
                    }
                }
                buf.resize(info.len as usize, 0);
                file.read_exact(&mut buf).with_path(f)?;
                let t = Tensor::from_raw_buffer(&buf, file_dtype, &shape, device)?;
                if let Some((&(ref key, transposed), format)) = to_quantize {
                    if let Some(w) = quantize_matrix(&t, transposed, format)? {
                        if quantized.insert(key.clone(), std::sync::Arc::new(w)).is_some() {
                            return Err(Error::data(Location::file(f).field(name), "tensor appears in two shards"));
                        }
                        continue;
                    }
                }
                let t = if t.dtype() == dtype { t } else { t.to_dtype(dtype)? };
                if tensors.insert(name.clone(), (t, i)).is_some() {
                    return Err(Error::data(Location::file(f).field(name), "tensor appears in two shards"));
                }
            }
        }
        Ok(Self { tensors, quant: quantized, files, main_file, dtype })
    }

    /// Weights read from one file (`path`): dense tensors and quantized matrices.
    pub(crate) fn from_parts(
        tensors: HashMap<String, Tensor>,
        quant: HashMap<String, std::sync::Arc<QuantWeight>>,
        path: PathBuf,
        dtype: DType,
    ) -> Self {
        let tensors = tensors.into_iter().map(|(k, t)| (k, (t, 0))).collect();
        Self { tensors, quant, files: vec![path.clone()], main_file: path, dtype }
    }

    /// The quantized matrix `name`, if it is held quantized.
    pub(crate) fn quant(&self, name: &str) -> Option<std::sync::Arc<QuantWeight>> {
        self.quant.get(name).cloned()
    }

    /// Names of every tensor of the files.
    pub(crate) fn names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    /// The tensor `name` as stored (no shape check).
    pub(crate) fn raw(&self, name: &str) -> Option<&Tensor> {
        self.tensors.get(name).map(|(t, _)| t)
    }

    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name) || self.quant.contains_key(name)
    }

    pub(crate) fn location(&self, name: &str) -> Location {
        let file = match self.tensors.get(name) {
            Some((_, i)) => self.files.get(*i).cloned().unwrap_or_else(|| self.main_file.clone()),
            None => self.main_file.clone(),
        };
        Location::file(file).field(name)
    }

    /// The tensor `name`, which must have `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let (t, _) = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::data(self.location(name), "missing tensor required by config.json"))?;
        if t.dims() != shape {
            return Err(Error::data(
                self.location(name),
                format!("tensor has shape {:?} but config.json implies {:?}", t.dims(), shape),
            ));
        }
        Ok(t.clone())
    }
}
