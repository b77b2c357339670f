//! The precision of a model's weights, read from its initialisers (and `Constant` nodes) in
//! the ONNX protobuf: `fp32`, `fp16`, `bf16`, `fp64`, `int8` (int8/uint8, as a quantised model
//! stores them), `int4` or `fp8`, whichever holds the most weight bytes. Integer tensors of
//! other widths (shapes, indices) are not weights. The file is walked field by field, large
//! fields skipped with a seek, so a multi-gigabyte model is not read into memory; external
//! data is sized from the tensor's dims.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use anyhow::{bail, Context, Result};

/// Weight bytes per precision class of one model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightStats {
    pub bytes: BTreeMap<&'static str, u64>,
}

impl WeightStats {
    /// The class holding the most bytes; `None` for a model without weights.
    pub fn dominant(&self) -> Option<&'static str> {
        self.bytes.iter().max_by_key(|(_, &b)| b).map(|(&k, _)| k)
    }
}

/// `(class, bits)` of an ONNX `TensorProto.DataType` that holds weights.
fn class(data_type: u64) -> Option<(&'static str, u64)> {
    Some(match data_type {
        1 => ("fp32", 32),
        2 | 3 => ("int8", 8),
        10 => ("fp16", 16),
        11 => ("fp64", 64),
        16 => ("bf16", 16),
        17..=20 | 23 => ("fp8", 8),
        21 | 22 => ("int4", 4),
        _ => return None,
    })
}

struct Reader<R> {
    r: R,
    pos: u64,
}

impl<R: Read + Seek> Reader<R> {
    fn byte(&mut self) -> Result<u8> {
        let mut b = [0u8];
        self.r.read_exact(&mut b)?;
        self.pos += 1;
        Ok(b[0])
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        bail!("malformed varint at byte {}", self.pos)
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        self.r.seek_relative(i64::try_from(n)?)?;
        self.pos += n;
        Ok(())
    }

    /// Skips a field of wire type `wire` whose key was just read.
    fn skip_field(&mut self, wire: u64) -> Result<()> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.skip(8),
            2 => {
                let n = self.varint()?;
                self.skip(n)
            }
            5 => self.skip(4),
            w => bail!("unsupported protobuf wire type {w} at byte {}", self.pos),
        }
    }

    /// Calls `f(field, wire, reader)` for every field up to byte `end`; `f` returns false
    /// when it did not consume the field (then it is skipped).
    fn fields(&mut self, end: u64, f: &mut dyn FnMut(u64, u64, &mut Self) -> Result<bool>) -> Result<()> {
        while self.pos < end {
            let key = self.varint()?;
            let (field, wire) = (key >> 3, key & 7);
            if !f(field, wire, self)? {
                self.skip_field(wire)?;
            }
        }
        if self.pos != end {
            bail!("protobuf message overruns its length at byte {}", self.pos);
        }
        Ok(())
    }

    /// Reads a length prefix and returns the end of that message.
    fn message_end(&mut self) -> Result<u64> {
        let n = self.varint()?;
        Ok(self.pos + n)
    }

    /// TensorProto: dims (1), data_type (2).
    fn tensor(&mut self, end: u64, stats: &mut WeightStats) -> Result<()> {
        let (mut dims, mut dtype) = (Vec::new(), 0u64);
        self.fields(end, &mut |field, wire, r| match (field, wire) {
            (1, 0) => {
                dims.push(r.varint()?);
                Ok(true)
            }
            (1, 2) => {
                let e = r.message_end()?;
                while r.pos < e {
                    dims.push(r.varint()?);
                }
                Ok(true)
            }
            (2, 0) => {
                dtype = r.varint()?;
                Ok(true)
            }
            _ => Ok(false),
        })?;
        if let Some((name, bits)) = class(dtype) {
            let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).unwrap_or(u64::MAX);
            *stats.bytes.entry(name).or_default() += n.saturating_mul(bits) / 8;
        }
        Ok(())
    }

    /// GraphProto: node (1) → attribute (5) → t (5); initializer (5).
    fn graph(&mut self, end: u64, stats: &mut WeightStats) -> Result<()> {
        self.fields(end, &mut |field, wire, r| match (field, wire) {
            (5, 2) => {
                let e = r.message_end()?;
                r.tensor(e, stats)?;
                Ok(true)
            }
            (1, 2) => {
                let e = r.message_end()?;
                r.fields(e, &mut |f, w, r| match (f, w) {
                    (5, 2) => {
                        let e = r.message_end()?;
                        r.fields(e, &mut |f, w, r| match (f, w) {
                            (5, 2) => {
                                let e = r.message_end()?;
                                r.tensor(e, stats)?;
                                Ok(true)
                            }
                            _ => Ok(false),
                        })?;
                        Ok(true)
                    }
                    _ => Ok(false),
                })?;
                Ok(true)
            }
            _ => Ok(false),
        })
    }
}

/// The weight bytes per precision of the ONNX model at `path`.
pub fn weight_stats(path: &Path) -> Result<WeightStats> {
    let what = || format!("{}: cannot read the model's weights", path.display());
    let file = File::open(path).with_context(what)?;
    let len = file.metadata().with_context(what)?.len();
    let mut r = Reader { r: BufReader::new(file), pos: 0 };
    let mut stats = WeightStats::default();
    // ModelProto: graph (7).
    r.fields(len, &mut |field, wire, r| match (field, wire) {
        (7, 2) => {
            let e = r.message_end()?;
            r.graph(e, &mut stats)?;
            Ok(true)
        }
        _ => Ok(false),
    })
    .with_context(what)?;
    Ok(stats)
}

/// The precision class of the model's weights (see the module notes); `fallback` (e.g. from
/// the input type) for a model without weights.
pub fn weights_precision(path: &Path, fallback: &str) -> String {
    match weight_stats(path) {
        Ok(s) => s.dominant().unwrap_or(fallback).to_string(),
        Err(e) => {
            tracing::warn!("{e:#}");
            fallback.to_string()
        }
    }
}
