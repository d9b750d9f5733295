//! Predictions as Parquet: one row per galaxy, readable by pandas, polars, DuckDB or Spark.
//!
//! Columns: `index` (the galaxy's index in the dataset when the manifest knows where the
//! partition starts, else its row in the partition), `partition` (key), `row` (index in the
//! partition), `rank`, `z_pred`, and `z_true` (null when the data carries no redshift).

use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::Compression;
use parquet::column::reader::get_typed_column_reader;
use parquet::data_type::{ByteArray, ByteArrayType, DataType, FloatType, Int32Type, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::error::{Error, Result};

const SCHEMA: &str = "message prediction {
  required int64 index;
  required binary partition (UTF8);
  required int32 row;
  required int32 rank;
  required float z_pred;
  optional float z_true;
}";

/// Predictions for a set of galaxies, column by column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Predictions {
    /// Galaxy index in the dataset (or row in the partition when unknown).
    pub index: Vec<i64>,
    /// Partition key of each galaxy.
    pub partition: Vec<String>,
    /// Row in its partition.
    pub row: Vec<i32>,
    /// Rank that predicted it.
    pub rank: Vec<i32>,
    /// Predicted redshift (NaN where the inputs were not finite).
    pub z_pred: Vec<f32>,
    /// True redshift where known.
    pub z_true: Vec<Option<f32>>,
}

impl Predictions {
    /// Number of galaxies.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The predictions of one partition: rows `0..n`, dataset index `first + row`.
    pub fn for_partition(
        key: &str,
        first: i64,
        rank: usize,
        z_pred: Vec<f32>,
        redshift: Option<&[f32]>,
    ) -> Self {
        let n = z_pred.len();
        Predictions {
            index: (0..n as i64).map(|i| first + i).collect(),
            partition: vec![key.to_string(); n],
            row: (0..n as i32).collect(),
            rank: vec![rank as i32; n],
            z_pred,
            z_true: match redshift {
                Some(z) => z.iter().take(n).map(|&v| Some(v)).collect(),
                None => vec![None; n],
            },
        }
    }

    /// Append another set.
    pub fn append(&mut self, other: Predictions) {
        self.index.extend(other.index);
        self.partition.extend(other.partition);
        self.row.extend(other.row);
        self.rank.extend(other.rank);
        self.z_pred.extend(other.z_pred);
        self.z_true.extend(other.z_true);
    }

    /// Encode as a Parquet file (snappy).
    pub fn to_parquet(&self, name: &str) -> Result<Vec<u8>> {
        let perr = |e: parquet::errors::ParquetError| Error::Parquet {
            file: name.to_string(),
            reason: e.to_string(),
        };
        let schema = Arc::new(parse_message_type(SCHEMA).map_err(perr)?);
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(Compression::SNAPPY)
                .build(),
        );
        let mut out = Vec::new();
        {
            let mut writer = SerializedFileWriter::new(&mut out, schema, props).map_err(perr)?;
            let mut rg = writer.next_row_group().map_err(perr)?;
            let mut col = 0;
            while let Some(mut cw) = rg.next_column().map_err(perr)? {
                match col {
                    0 => {
                        cw.typed::<Int64Type>()
                            .write_batch(&self.index, None, None)
                            .map_err(perr)?;
                    }
                    1 => {
                        let v: Vec<ByteArray> = self
                            .partition
                            .iter()
                            .map(|s| ByteArray::from(s.as_str()))
                            .collect();
                        cw.typed::<ByteArrayType>()
                            .write_batch(&v, None, None)
                            .map_err(perr)?;
                    }
                    2 | 3 => {
                        let v = if col == 2 { &self.row } else { &self.rank };
                        cw.typed::<Int32Type>()
                            .write_batch(v, None, None)
                            .map_err(perr)?;
                    }
                    4 => {
                        cw.typed::<FloatType>()
                            .write_batch(&self.z_pred, None, None)
                            .map_err(perr)?;
                    }
                    _ => {
                        let def: Vec<i16> =
                            self.z_true.iter().map(|z| i16::from(z.is_some())).collect();
                        let vals: Vec<f32> = self.z_true.iter().flatten().copied().collect();
                        cw.typed::<FloatType>()
                            .write_batch(&vals, Some(&def), None)
                            .map_err(perr)?;
                    }
                }
                cw.close().map_err(perr)?;
                col += 1;
            }
            rg.close().map_err(perr)?;
            writer.close().map_err(perr)?;
        }
        Ok(out)
    }

    /// Decode a Parquet file written by [`Predictions::to_parquet`].
    pub fn from_parquet(name: &str, bytes: Bytes) -> Result<Self> {
        let perr = |e: parquet::errors::ParquetError| Error::Parquet {
            file: name.to_string(),
            reason: e.to_string(),
        };
        let reader = SerializedFileReader::new(bytes).map_err(perr)?;
        let cols = reader
            .metadata()
            .file_metadata()
            .schema_descr()
            .num_columns();
        if cols != 6 {
            return Err(Error::Parquet {
                file: name.to_string(),
                reason: format!("expected 6 prediction columns, found {cols}"),
            });
        }
        let mut out = Predictions::default();
        for g in 0..reader.num_row_groups() {
            let rg = reader.get_row_group(g).map_err(perr)?;
            let n = rg.metadata().num_rows() as usize;
            let index = read_column::<Int64Type>(&*rg, 0, n, None).map_err(perr)?;
            let part = read_column::<ByteArrayType>(&*rg, 1, n, None).map_err(perr)?;
            let row = read_column::<Int32Type>(&*rg, 2, n, None).map_err(perr)?;
            let rank = read_column::<Int32Type>(&*rg, 3, n, None).map_err(perr)?;
            let z_pred = read_column::<FloatType>(&*rg, 4, n, None).map_err(perr)?;
            let mut def = Vec::with_capacity(n);
            let zt = read_column::<FloatType>(&*rg, 5, n, Some(&mut def)).map_err(perr)?;
            let lens = [
                index.len(),
                part.len(),
                row.len(),
                rank.len(),
                z_pred.len(),
                def.len(),
            ];
            if lens.iter().any(|&l| l != n) {
                return Err(Error::Parquet {
                    file: name.to_string(),
                    reason: format!("row group {g}: column lengths {lens:?} for {n} rows"),
                });
            }
            let mut vals = zt.into_iter();
            let z_true: Vec<Option<f32>> = def
                .iter()
                .map(|&d| if d > 0 { vals.next() } else { None })
                .collect();
            out.index.extend(index);
            out.partition.extend(
                part.iter()
                    .map(|b| String::from_utf8_lossy(b.data()).into_owned()),
            );
            out.row.extend(row);
            out.rank.extend(rank);
            out.z_pred.extend(z_pred);
            out.z_true.extend(z_true);
        }
        Ok(out)
    }

    /// Encode as CSV: `index,z_pred` plus `z_true` when every galaxy has one.
    pub fn to_csv(&self) -> String {
        let labelled = !self.z_true.is_empty() && self.z_true.iter().all(Option::is_some);
        let mut s = String::with_capacity(self.len() * 24 + 32);
        s.push_str(if labelled {
            "index,z_pred,z_true\n"
        } else {
            "index,z_pred\n"
        });
        for i in 0..self.len() {
            use std::fmt::Write as _;
            let _ = write!(s, "{},{}", self.index[i], self.z_pred[i]);
            if labelled {
                if let Some(z) = self.z_true[i] {
                    let _ = write!(s, ",{z}");
                }
            }
            s.push('\n');
        }
        s
    }
}

/// Column `i` of a row group of `n` rows; `def` receives the definition levels of an
/// optional column (0 where the value is null).
fn read_column<T: DataType>(
    rg: &dyn RowGroupReader,
    i: usize,
    n: usize,
    def: Option<&mut Vec<i16>>,
) -> parquet::errors::Result<Vec<T::T>> {
    let mut values = Vec::with_capacity(n);
    get_typed_column_reader::<T>(rg.get_column_reader(i)?).read_records(
        n,
        def,
        None,
        &mut values,
    )?;
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parquet_round_trip_with_nulls() {
        let p = Predictions {
            index: vec![10, 11, 12],
            partition: vec!["00001.safetensors".into(); 3],
            row: vec![0, 1, 2],
            rank: vec![0; 3],
            z_pred: vec![0.1, f32::NAN, 0.3],
            z_true: vec![Some(0.12), None, Some(0.29)],
        };
        let bytes = p.to_parquet("t").unwrap();
        let back = Predictions::from_parquet("t", Bytes::from(bytes)).unwrap();
        assert_eq!(back.index, p.index);
        assert_eq!(back.partition, p.partition);
        assert_eq!(back.z_true, p.z_true);
        assert!(back.z_pred[1].is_nan());
        assert_eq!(back.z_pred[2], 0.3);
    }

    #[test]
    fn csv_header_follows_labels() {
        let mut p = Predictions {
            index: vec![0],
            partition: vec!["a".into()],
            row: vec![0],
            rank: vec![0],
            z_pred: vec![0.5],
            z_true: vec![Some(0.25)],
        };
        assert_eq!(p.to_csv(), "index,z_pred,z_true\n0,0.5,0.25\n");
        p.z_true = vec![None];
        assert_eq!(p.to_csv(), "index,z_pred\n0,0.5\n");
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let e = Predictions::from_parquet("x.parquet", Bytes::from_static(b"nope")).unwrap_err();
        assert!(e.to_string().contains("x.parquet"));
    }
}
