//! Element types and the owned, contiguous tensor this crate hands out.

use crate::Error;

/// Element type of a tensor, as named by PyTorch's typed storages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// `torch.float32` (`FloatStorage`).
    F32,
    /// `torch.float64` (`DoubleStorage`).
    F64,
    /// `torch.float16` (`HalfStorage`).
    F16,
    /// `torch.bfloat16` (`BFloat16Storage`).
    BF16,
    /// `torch.int64` (`LongStorage`).
    I64,
    /// `torch.int32` (`IntStorage`).
    I32,
    /// `torch.int16` (`ShortStorage`).
    I16,
    /// `torch.int8` (`CharStorage`).
    I8,
    /// `torch.uint8` (`ByteStorage`, also `UntypedStorage`).
    U8,
    /// `torch.bool` (`BoolStorage`), one byte per element.
    Bool,
}

impl DType {
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// The storage class name `torch.save` writes for this dtype (`FloatStorage`…).
    pub fn storage_name(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F64 => "DoubleStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }

    /// The dtype of a `torch.<name>` storage class, if it is one this crate reads.
    pub fn from_storage_name(name: &str) -> Option<DType> {
        Some(match name {
            "FloatStorage" => DType::F32,
            "DoubleStorage" => DType::F64,
            "HalfStorage" => DType::F16,
            "BFloat16Storage" => DType::BF16,
            "LongStorage" => DType::I64,
            "IntStorage" => DType::I32,
            "ShortStorage" => DType::I16,
            "CharStorage" => DType::I8,
            "ByteStorage" | "UntypedStorage" => DType::U8,
            "BoolStorage" => DType::Bool,
            _ => return None,
        })
    }

    /// The dtype named by a `torch.<name>` dtype constant (`float32`, `float`, `long`…).
    pub fn from_torch_name(name: &str) -> Option<DType> {
        Some(match name {
            "float32" | "float" => DType::F32,
            "float64" | "double" => DType::F64,
            "float16" | "half" => DType::F16,
            "bfloat16" => DType::BF16,
            "int64" | "long" => DType::I64,
            "int32" | "int" => DType::I32,
            "int16" | "short" => DType::I16,
            "int8" => DType::I8,
            "uint8" => DType::U8,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
}

/// An owned tensor: dtype, shape and contiguous (row-major) little-endian element bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TorchTensor {
    /// Element type.
    pub dtype: DType,
    /// Shape; empty for a scalar (one element).
    pub shape: Vec<usize>,
    /// `numel() * dtype.size()` bytes, contiguous, little-endian.
    pub data: Vec<u8>,
}

impl TorchTensor {
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// A tensor from `f32` values; errors if `values.len()` is not the shape's product.
    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<TorchTensor, Error> {
        Self::from_le_chunks(
            DType::F32,
            shape,
            values.len(),
            values.iter().map(|v| v.to_le_bytes()),
        )
    }

    /// A tensor from `f64` values; errors if `values.len()` is not the shape's product.
    pub fn from_f64(shape: Vec<usize>, values: &[f64]) -> Result<TorchTensor, Error> {
        Self::from_le_chunks(
            DType::F64,
            shape,
            values.len(),
            values.iter().map(|v| v.to_le_bytes()),
        )
    }

    /// A tensor from `i64` values; errors if `values.len()` is not the shape's product.
    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Result<TorchTensor, Error> {
        Self::from_le_chunks(
            DType::I64,
            shape,
            values.len(),
            values.iter().map(|v| v.to_le_bytes()),
        )
    }

    fn from_le_chunks<const N: usize>(
        dtype: DType,
        shape: Vec<usize>,
        count: usize,
        chunks: impl Iterator<Item = [u8; N]>,
    ) -> Result<TorchTensor, Error> {
        let mut data = Vec::with_capacity(count * N);
        chunks.for_each(|c| data.extend_from_slice(&c));
        let t = TorchTensor { dtype, shape, data };
        t.check("new tensor")?;
        Ok(t)
    }

    /// Checks that the data length equals `numel * dtype.size()` (with no overflow).
    pub fn check(&self, what: &str) -> Result<(), Error> {
        let expected = self
            .shape
            .iter()
            .try_fold(self.dtype.size(), |acc, &d| acc.checked_mul(d));
        if expected == Some(self.data.len()) {
            Ok(())
        } else {
            Err(self.invalid(what))
        }
    }

    fn invalid(&self, what: &str) -> Error {
        Error::InvalidTensor {
            what: what.to_string(),
            dtype: self.dtype,
            shape: self.shape.clone(),
            len: self.data.len(),
        }
    }

    /// The elements converted to `f32` (integers and bools by value, f64 rounded).
    pub fn to_f32(&self) -> Result<Vec<f32>, Error> {
        self.check("to_f32")?;
        let d = &self.data;
        Ok(match self.dtype {
            DType::F32 => d
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            DType::F64 => d
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(arr8(c)) as f32)
                .collect(),
            DType::F16 => d
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::BF16 => d
                .chunks_exact(2)
                .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
                .collect(),
            DType::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(arr8(c)) as f32)
                .collect(),
            DType::I32 => d
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect(),
            DType::I16 => d
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])))
                .collect(),
            DType::I8 => d.iter().map(|&b| f32::from(b as i8)).collect(),
            DType::U8 => d.iter().map(|&b| f32::from(b)).collect(),
            DType::Bool => d.iter().map(|&b| if b != 0 { 1.0 } else { 0.0 }).collect(),
        })
    }

    /// Index of the first NaN or infinite element (always `None` for integer dtypes).
    /// Readers do not reject such tensors; a model loader should.
    pub fn first_non_finite(&self) -> Result<Option<usize>, Error> {
        match self.dtype {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                Ok(self.to_f64()?.iter().position(|v| !v.is_finite()))
            }
            _ => Ok(None),
        }
    }

    /// The elements converted to `f64` (exact for every dtype but i64 beyond 2^53).
    pub fn to_f64(&self) -> Result<Vec<f64>, Error> {
        if self.dtype == DType::F64 {
            self.check("to_f64")?;
            return Ok(self
                .data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(arr8(c)))
                .collect());
        }
        if self.dtype == DType::I64 {
            self.check("to_f64")?;
            return Ok(self
                .data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(arr8(c)) as f64)
                .collect());
        }
        Ok(self.to_f32()?.into_iter().map(f64::from).collect())
    }
}

fn arr8(c: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(c);
    a
}

/// IEEE 754 binary16 to binary32, exact (subnormals, infinities and NaN payloads kept).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let mant = u32::from(h & 0x3ff);
    match exp {
        0 => {
            // Zero or subnormal: mant * 2^-24, exact in f32.
            let v = mant as f32 * (1.0 / 16_777_216.0);
            if sign != 0 {
                -v
            } else {
                v
            }
        }
        31 => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_known_values() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 5.960_464_5e-8);
        assert_eq!(f16_to_f32(0x8000).to_bits(), 0x8000_0000);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x3555), 0.333_251_95);
    }

    #[test]
    fn conversions() {
        let t = TorchTensor::from_f64(vec![2], &[1.5, -2.25]).unwrap();
        assert_eq!(t.to_f32().unwrap(), vec![1.5, -2.25]);
        let t = TorchTensor::from_i64(vec![], &[7]).unwrap();
        assert_eq!(t.numel(), 1);
        assert_eq!(t.to_f64().unwrap(), vec![7.0]);
        let bf = TorchTensor {
            dtype: DType::BF16,
            shape: vec![1],
            data: 0x3f80u16.to_le_bytes().to_vec(),
        };
        assert_eq!(bf.to_f32().unwrap(), vec![1.0]);
        let bad = TorchTensor {
            dtype: DType::F32,
            shape: vec![3],
            data: vec![0; 8],
        };
        assert!(matches!(bad.to_f32(), Err(Error::InvalidTensor { .. })));
        assert!(TorchTensor::from_f32(vec![2, 2], &[1.0]).is_err());
        let nan = TorchTensor::from_f32(vec![3], &[1.0, f32::NAN, 2.0]).unwrap();
        assert_eq!(nan.first_non_finite().unwrap(), Some(1));
        assert_eq!(t.first_non_finite().unwrap(), None);
    }

    #[test]
    fn storage_names_round_trip() {
        for d in [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I64,
            DType::I32,
            DType::I16,
            DType::I8,
            DType::U8,
            DType::Bool,
        ] {
            assert_eq!(DType::from_storage_name(d.storage_name()), Some(d));
        }
    }
}
