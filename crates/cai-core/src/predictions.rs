//! Predictions as Parquet: one row per galaxy, readable by pandas, polars, DuckDB or Spark.
//!
//! Columns: `index` (the galaxy's index in the dataset when the manifest knows where the
//! partition starts, else its row in the partition), `partition` (key), `row` (index in the
//! partition), `rank`, `z_pred`, and `z_true` (null when the data carries no redshift);
//! then one column per other model output ([`OutputColumn`]), named after it: a scalar per
//! galaxy as a float column, a vector per galaxy as a list of floats (every list of a column
//! has the same length). A model without a `z` output leaves `z_pred` NaN.

use std::sync::Arc;

use bytes::Bytes;
use parquet::basic::{Compression, ConvertedType, LogicalType, Repetition, Type as PhysicalType};
use parquet::column::reader::get_typed_column_reader;
use parquet::data_type::{ByteArray, ByteArrayType, DataType, FloatType, Int32Type, Int64Type};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, RowGroupReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::Type;

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
    /// The model's other outputs, one column each (empty for a redshift model).
    pub outputs: Vec<OutputColumn>,
}

/// One model output per galaxy, saved as its own column.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutputColumn {
    /// The output's name (the column's).
    pub name: String,
    /// `None` for a scalar per galaxy, `Some(k)` for a vector of `k` values per galaxy.
    pub width: Option<usize>,
    /// Values, galaxy first (`len × width`).
    pub values: Vec<f32>,
}

impl OutputColumn {
    /// Values per galaxy.
    pub fn per_galaxy(&self) -> usize {
        self.width.unwrap_or(1)
    }
}

impl Predictions {
    /// The output a classifier's labels are judged against, with the labels (`z_true`,
    /// NaN where missing): the first vector output, when the run has labels and no
    /// redshift prediction. None otherwise.
    pub fn class_scores(&self) -> Option<(&OutputColumn, Vec<f32>)> {
        if self.z_pred.iter().any(|z| !z.is_nan()) || self.z_true.iter().all(Option::is_none) {
            return None;
        }
        let col = self.outputs.iter().find(|c| c.width.is_some())?;
        let labels = self.z_true.iter().map(|t| t.unwrap_or(f32::NAN)).collect();
        Some((col, labels))
    }

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
            outputs: Vec::new(),
        }
    }

    /// The same predictions with the model's other outputs as columns.
    pub fn with_outputs(mut self, outputs: Vec<OutputColumn>) -> Self {
        self.outputs = outputs;
        self
    }

    /// The galaxies at positions `range` (clamped to the set), as a set of their own.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Predictions {
        let end = range.end.min(self.len());
        let r = range.start.min(end)..end;
        Predictions {
            index: self.index.get(r.clone()).unwrap_or_default().to_vec(),
            partition: self.partition.get(r.clone()).unwrap_or_default().to_vec(),
            row: self.row.get(r.clone()).unwrap_or_default().to_vec(),
            rank: self.rank.get(r.clone()).unwrap_or_default().to_vec(),
            z_pred: self.z_pred.get(r.clone()).unwrap_or_default().to_vec(),
            z_true: self.z_true.get(r.clone()).unwrap_or_default().to_vec(),
            outputs: self
                .outputs
                .iter()
                .map(|c| {
                    let w = c.per_galaxy();
                    OutputColumn {
                        name: c.name.clone(),
                        width: c.width,
                        values: c
                            .values
                            .get(r.start * w..r.end * w)
                            .unwrap_or_default()
                            .to_vec(),
                    }
                })
                .collect(),
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
        if self.outputs.is_empty() {
            self.outputs = other.outputs;
        } else {
            for col in other.outputs {
                if let Some(mine) = self.outputs.iter_mut().find(|c| c.name == col.name) {
                    mine.values.extend(col.values);
                }
            }
        }
    }

    /// The Parquet schema: the fixed columns, then one per output.
    fn schema(&self, name: &str) -> Result<Arc<Type>> {
        let perr = |e: parquet::errors::ParquetError| Error::Parquet {
            file: name.to_string(),
            reason: e.to_string(),
        };
        let base = parse_message_type(SCHEMA).map_err(perr)?;
        let mut fields: Vec<Arc<Type>> = base.get_fields().to_vec();
        for col in &self.outputs {
            let float = |n: &str, rep: Repetition| {
                Type::primitive_type_builder(n, PhysicalType::FLOAT)
                    .with_repetition(rep)
                    .build()
            };
            let field = match col.width {
                None => float(&col.name, Repetition::REQUIRED).map_err(perr)?,
                Some(_) => {
                    let element = float("element", Repetition::REQUIRED).map_err(perr)?;
                    let list = Type::group_type_builder("list")
                        .with_repetition(Repetition::REPEATED)
                        .with_fields(vec![Arc::new(element)])
                        .build()
                        .map_err(perr)?;
                    Type::group_type_builder(&col.name)
                        .with_repetition(Repetition::REQUIRED)
                        .with_logical_type(Some(LogicalType::List))
                        .with_converted_type(ConvertedType::LIST)
                        .with_fields(vec![Arc::new(list)])
                        .build()
                        .map_err(perr)?
                }
            };
            fields.push(Arc::new(field));
        }
        Ok(Arc::new(
            Type::group_type_builder("prediction")
                .with_fields(fields)
                .build()
                .map_err(perr)?,
        ))
    }

    /// Encode as a Parquet file (snappy).
    pub fn to_parquet(&self, name: &str) -> Result<Vec<u8>> {
        self.to_parquet_with(name, Vec::new)
    }

    /// Encode as a Parquet file (snappy) whose footer carries key-value metadata: `metadata`
    /// is called once the columns are encoded, so what it returns can say how long that took
    /// (a worker puts its rank report there: summarize then reads one object per rank).
    pub fn to_parquet_with(
        &self,
        name: &str,
        metadata: impl FnOnce() -> Vec<(String, String)>,
    ) -> Result<Vec<u8>> {
        let perr = |e: parquet::errors::ParquetError| Error::Parquet {
            file: name.to_string(),
            reason: e.to_string(),
        };
        let schema = self.schema(name)?;
        let n = self.len();
        for col in &self.outputs {
            if col.values.len() != n * col.per_galaxy() {
                return Err(Error::Parquet {
                    file: name.to_string(),
                    reason: format!(
                        "output `{}` has {} values for {n} galaxies of {} each",
                        col.name,
                        col.values.len(),
                        col.per_galaxy()
                    ),
                });
            }
        }
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
                    5 => {
                        let def: Vec<i16> =
                            self.z_true.iter().map(|z| i16::from(z.is_some())).collect();
                        let vals: Vec<f32> = self.z_true.iter().flatten().copied().collect();
                        cw.typed::<FloatType>()
                            .write_batch(&vals, Some(&def), None)
                            .map_err(perr)?;
                    }
                    c => {
                        let Some(out) = self.outputs.get(c - 6) else {
                            return Err(Error::Parquet {
                                file: name.to_string(),
                                reason: format!("no data for column {c}"),
                            });
                        };
                        let w = cw.typed::<FloatType>();
                        let written = match out.width {
                            None => w.write_batch(&out.values, None, None),
                            Some(k) => {
                                // A list per galaxy: repetition level 0 starts a galaxy's
                                // list; an empty list is one null-level entry.
                                let (mut def, mut rep) = (Vec::new(), Vec::new());
                                for _ in 0..n {
                                    if k == 0 {
                                        def.push(0);
                                        rep.push(0);
                                    }
                                    for j in 0..k {
                                        def.push(1);
                                        rep.push(i16::from(j > 0));
                                    }
                                }
                                w.write_batch(&out.values, Some(&def), Some(&rep))
                            }
                        };
                        written.map_err(perr)?;
                    }
                }
                cw.close().map_err(perr)?;
                col += 1;
            }
            rg.close().map_err(perr)?;
            for (key, value) in metadata() {
                writer.append_key_value_metadata(KeyValue::new(key, value));
            }
            writer.close().map_err(perr)?;
        }
        Ok(out)
    }

    /// Decode a Parquet file written by [`Predictions::to_parquet`].
    pub fn from_parquet(name: &str, bytes: Bytes) -> Result<Self> {
        Ok(Self::from_parquet_with(name, bytes, "")?.0)
    }

    /// Decode a Parquet file written by [`Predictions::to_parquet_with`], with the value of
    /// its footer's metadata `key` (`None` when the file has no such key).
    pub fn from_parquet_with(
        name: &str,
        bytes: Bytes,
        key: &str,
    ) -> Result<(Self, Option<String>)> {
        let perr = |e: parquet::errors::ParquetError| Error::Parquet {
            file: name.to_string(),
            reason: e.to_string(),
        };
        let reader = SerializedFileReader::new(bytes).map_err(perr)?;
        let value = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|e| !key.is_empty() && e.key == key))
            .and_then(|e| e.value.clone());
        let cols = reader
            .metadata()
            .file_metadata()
            .schema_descr()
            .num_columns();
        if cols < 6 {
            return Err(Error::Parquet {
                file: name.to_string(),
                reason: format!("expected at least 6 prediction columns, found {cols}"),
            });
        }
        let descr = reader.metadata().file_metadata().schema_descr_ptr();
        let mut out = Predictions::default();
        for c in 6..cols {
            let col = descr.column(c);
            out.outputs.push(OutputColumn {
                name: col.path().parts().first().cloned().unwrap_or_default(),
                width: (col.max_rep_level() > 0).then_some(0),
                values: Vec::new(),
            });
        }
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
            for (k, col) in out.outputs.iter_mut().enumerate() {
                if col.width.is_none() {
                    let v = read_column::<FloatType>(&*rg, 6 + k, n, None).map_err(perr)?;
                    if v.len() != n {
                        return Err(Error::Parquet {
                            file: name.to_string(),
                            reason: format!(
                                "row group {g}: `{}` has {} rows for {n}",
                                col.name,
                                v.len()
                            ),
                        });
                    }
                    col.values.extend(v);
                    continue;
                }
                let (mut def, mut rep, mut vals) = (Vec::new(), Vec::new(), Vec::new());
                get_typed_column_reader::<FloatType>(rg.get_column_reader(6 + k).map_err(perr)?)
                    .read_records(n, Some(&mut def), Some(&mut rep), &mut vals)
                    .map_err(perr)?;
                let starts = rep.iter().filter(|&&r| r == 0).count();
                let width = vals.len().checked_div(n).unwrap_or(0);
                if starts != n || vals.len() != n * width {
                    return Err(Error::Parquet {
                        file: name.to_string(),
                        reason: format!(
                            "row group {g}: `{}` is not one list of equal length per row ({} values, {starts} lists, {n} rows)",
                            col.name,
                            vals.len()
                        ),
                    });
                }
                match col.width {
                    Some(w) if w != 0 && w != width && n > 0 => {
                        return Err(Error::Parquet {
                            file: name.to_string(),
                            reason: format!("`{}` has lists of {w} and of {width}", col.name),
                        })
                    }
                    _ if n > 0 => col.width = Some(width),
                    _ => {}
                }
                col.values.extend(vals);
            }
        }
        Ok((out, value))
    }

    /// Encode as CSV: `index,z_pred` plus `z_true` when every galaxy has one (a model
    /// without a `z` output: `index` only), then one column per scalar output and
    /// `name_0`, `name_1`, … per vector output.
    pub fn to_csv(&self) -> String {
        use std::fmt::Write as _;
        let labelled = !self.z_true.is_empty() && self.z_true.iter().all(Option::is_some);
        let has_z = self.outputs.is_empty() || self.z_pred.iter().any(|z| !z.is_nan());
        let mut s = String::with_capacity(self.len() * 24 + 32);
        s.push_str("index");
        if has_z {
            s.push_str(if labelled {
                ",z_pred,z_true"
            } else {
                ",z_pred"
            });
        }
        for col in &self.outputs {
            match col.width {
                None => {
                    let _ = write!(s, ",{}", col.name);
                }
                Some(k) => {
                    for j in 0..k {
                        let _ = write!(s, ",{}_{j}", col.name);
                    }
                }
            }
        }
        s.push('\n');
        for i in 0..self.len() {
            let _ = write!(s, "{}", self.index[i]);
            if has_z {
                let _ = write!(s, ",{}", self.z_pred[i]);
                if labelled {
                    if let Some(z) = self.z_true[i] {
                        let _ = write!(s, ",{z}");
                    }
                }
            }
            for col in &self.outputs {
                let k = col.per_galaxy();
                for v in col.values.get(i * k..(i + 1) * k).unwrap_or(&[]) {
                    let _ = write!(s, ",{v}");
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
            outputs: Vec::new(),
        };
        let bytes = p.to_parquet("t").unwrap();
        let back = Predictions::from_parquet("t", Bytes::from(bytes.clone())).unwrap();
        assert_eq!(back.index, p.index);
        assert_eq!(back.partition, p.partition);
        assert_eq!(back.z_true, p.z_true);
        assert!(back.z_pred[1].is_nan());
        assert_eq!(back.z_pred[2], 0.3);

        // Metadata rides in the footer; the columns are the same bytes with or without it.
        let with = p
            .to_parquet_with("t", || vec![("cai.k".into(), "{\"rank\": 0}".into())])
            .unwrap();
        let (again, value) =
            Predictions::from_parquet_with("t", Bytes::from(with.clone()), "cai.k").unwrap();
        assert_eq!(value.as_deref(), Some("{\"rank\": 0}"));
        assert_eq!(again.index, p.index);
        let columns = |b: &[u8]| {
            let n = b.len();
            let footer = u32::from_le_bytes([b[n - 8], b[n - 7], b[n - 6], b[n - 5]]) as usize;
            b[..n - 8 - footer].to_vec()
        };
        assert_eq!(columns(&with), columns(&bytes));
        assert_ne!(with, bytes);
        let (_, none) =
            Predictions::from_parquet_with("t", Bytes::from(bytes.clone()), "cai.k").unwrap();
        assert_eq!(none, None);
        let (_, other) = Predictions::from_parquet_with("t", Bytes::from(with), "x").unwrap();
        assert_eq!(other, None);
    }

    #[test]
    fn rows_cut_a_set_into_pieces_that_append_back_to_it() {
        let p = Predictions::for_partition("p", 5, 1, vec![0.1, 0.2, 0.3, 0.4], None).with_outputs(
            vec![
                OutputColumn {
                    name: "probs".into(),
                    width: Some(2),
                    values: (0..8).map(|v| v as f32).collect(),
                },
                OutputColumn {
                    name: "s".into(),
                    width: None,
                    values: vec![1.0, 2.0, 3.0, 4.0],
                },
            ],
        );
        for cut in 0..=4 {
            let mut back = p.rows(0..cut);
            assert_eq!(back.len(), cut);
            back.append(p.rows(cut..9));
            assert_eq!(back, p, "cut at {cut}");
        }
        assert_eq!(p.rows(1..2).outputs[0].values, vec![2.0, 3.0]);
        assert!(p.rows(7..9).is_empty());
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
            outputs: Vec::new(),
        };
        assert_eq!(p.to_csv(), "index,z_pred,z_true\n0,0.5,0.25\n");
        p.z_true = vec![None];
        assert_eq!(p.to_csv(), "index,z_pred\n0,0.5\n");
    }

    #[test]
    fn output_columns_round_trip_and_name_the_csv() {
        let p = Predictions::for_partition("p", 5, 1, vec![f32::NAN; 3], None).with_outputs(vec![
            OutputColumn {
                name: "probs".into(),
                width: Some(2),
                values: vec![0.25, 0.75, 0.5, 0.5, 1.0, 0.0],
            },
            OutputColumn {
                name: "confidence".into(),
                width: None,
                values: vec![0.75, 0.5, 1.0],
            },
        ]);
        let back = Predictions::from_parquet("t", Bytes::from(p.to_parquet("t").unwrap())).unwrap();
        assert_eq!(back.outputs, p.outputs);
        assert_eq!(back.index, vec![5, 6, 7]);
        let mut twice = back.clone();
        twice.append(back);
        assert_eq!(twice.outputs[0].values.len(), 12);
        assert_eq!(
            p.to_csv(),
            "index,probs_0,probs_1,confidence\n5,0.25,0.75,0.75\n6,0.5,0.5,0.5\n7,1,0,1\n"
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let e = Predictions::from_parquet("x.parquet", Bytes::from_static(b"nope")).unwrap_err();
        assert!(e.to_string().contains("x.parquet"));
    }
}
