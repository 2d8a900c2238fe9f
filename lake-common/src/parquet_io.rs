//! Streaming Parquet files to and from the lake.
//!
//! [`FileWriter`] encodes with parquet's `ArrowWriter` into a buffer of its own and
//! hands that buffer to a multipart upload whenever it holds a whole part, so
//! memory is bounded by one row group and a few parts, not by the file. It hashes
//! the bytes on their way out, so the manifest's SHA-256 costs no second read.
//! Nothing is visible under the path until [`FileWriter::finish`] completes the
//! upload (S3 multipart and the local store's rename are atomic).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parquet::arrow::ArrowWriter;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
// Deprecated in parquet 60 in favour of a hand-written AsyncFileReader; it still
// does exactly what we need (ranged GETs, footer prefetch) until that lands upstream.
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::schema::{SourceTable, bronze_writer_properties, writer_properties};
use crate::store::Lake;

/// Parts on their way to the store while the next one fills: one keeps the
/// network busy during encoding and bounds the upload's memory to two parts.
const UPLOAD_CONCURRENCY: usize = 1;

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Path relative to the lake root.
    pub path: Path,
    /// Rows written.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// Hex SHA-256 of the file.
    pub sha256: String,
}

/// Writes one Parquet file to the lake.
///
/// The encoder's output buffer is drained into the upload once it holds a part
/// ([`Lake::upload_part_bytes`]) and then cleared, keeping its capacity: the same
/// few buffers serve the whole file instead of one freshly grown buffer per row
/// group, which is what made the process's memory grow with the data (glibc keeps
/// what such churn frees). A file smaller than one part is a single PUT.
pub struct FileWriter {
    path: Path,
    store: Arc<dyn ObjectStore>,
    part_bytes: usize,
    writer: ArrowWriter<Vec<u8>>,
    /// Started when the first part is full.
    upload: Option<WriteMultipart>,
    hasher: Sha256,
    bytes: u64,
    rows: u64,
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWriter")
            .field("path", &self.path)
            .field("rows", &self.rows)
            .finish()
    }
}

impl FileWriter {
    /// Starts a file at `path` with the lake's [`writer_properties`] (nothing is
    /// visible until [`finish`](Self::finish)).
    pub fn create(lake: &Lake, path: Path, schema: SchemaRef) -> Result<Self, ParquetError> {
        Self::with_properties(lake, path, schema, writer_properties())
    }

    /// Starts a bronze file of `table` at `path`: the table's Arrow schema and
    /// [`bronze_writer_properties`].
    pub fn bronze(lake: &Lake, table: &SourceTable, path: Path) -> Result<Self, ParquetError> {
        Self::with_properties(
            lake,
            path,
            table.arrow_schema(),
            bronze_writer_properties(table),
        )
    }

    /// Starts a file at `path` with the given writer properties.
    pub fn with_properties(
        lake: &Lake,
        path: Path,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<Self, ParquetError> {
        let writer = ArrowWriter::try_new(Vec::new(), schema, Some(properties))?;
        Ok(Self {
            path,
            store: Arc::clone(lake.store()),
            part_bytes: lake.upload_part_bytes(),
            writer,
            upload: None,
            hasher: Sha256::new(),
            bytes: 0,
            rows: 0,
        })
    }

    /// Appends a batch; uploads a part when a flushed row group filled one.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch)?;
        if self.writer.inner().len() >= self.part_bytes {
            self.upload_buffered().await?;
        }
        Ok(())
    }

    /// Moves the encoded bytes into the multipart upload (started on the first
    /// part), after waiting for the previous part to be on its way.
    async fn upload_buffered(&mut self) -> Result<(), ParquetError> {
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let started = self
                    .store
                    .put_multipart(&self.path)
                    .await
                    .map_err(external)?;
                self.upload.insert(WriteMultipart::new_with_chunk_size(
                    started,
                    self.part_bytes,
                ))
            }
        };
        upload
            .wait_for_capacity(UPLOAD_CONCURRENCY)
            .await
            .map_err(external)?;
        let buffer = self.writer.inner_mut();
        self.hasher.update(&buffer[..]);
        self.bytes += buffer.len() as u64;
        upload.write(buffer);
        buffer.clear();
        Ok(())
    }

    /// Bytes written so far plus the current row group's buffered estimate.
    pub fn approximate_size(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the footer and completes the upload (or PUTs a small file whole).
    pub async fn finish(mut self) -> Result<WrittenFile, ParquetError> {
        self.writer.finish()?;
        let rest = std::mem::take(self.writer.inner_mut());
        self.hasher.update(&rest);
        self.bytes += rest.len() as u64;
        match self.upload.take() {
            None => {
                self.store
                    .put(&self.path, PutPayload::from(rest))
                    .await
                    .map_err(external)?;
            }
            Some(mut upload) => {
                upload.write(&rest);
                upload.finish().await.map_err(external)?;
            }
        }
        Ok(WrittenFile {
            path: self.path,
            rows: self.rows,
            bytes: self.bytes,
            sha256: hex(&self.hasher.finalize()),
        })
    }
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a byte slice (to check a file against its manifest entry).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Streams the record batches of a lake file (bounded memory: one row group).
pub async fn read_stream(
    lake: &Lake,
    path: &Path,
) -> Result<impl futures::Stream<Item = Result<RecordBatch, ParquetError>> + use<>, ParquetError> {
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(
        Arc::clone(lake.store()) as Arc<dyn ObjectStore>,
        path.clone(),
    );
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    builder.with_batch_size(8192).build()
}

/// Reads a whole (small) lake file into memory.
pub async fn read_all(lake: &Lake, path: &Path) -> Result<Vec<RecordBatch>, ParquetError> {
    read_stream(lake, path).await?.try_collect().await
}

/// Reads Parquet bytes already in memory.
pub fn read_bytes(bytes: Bytes) -> Result<Vec<RecordBatch>, ParquetError> {
    ParquetRecordBatchReaderBuilder::try_new(bytes)?
        .build()?
        .map(|b| b.map_err(ParquetError::from))
        .collect()
}

/// Counts rows of many files from their footers only (no data read), 8 at a time.
pub async fn count_rows(lake: &Lake, paths: Vec<Path>) -> Result<u64, ParquetError> {
    let counts: Vec<u64> = futures::stream::iter(paths)
        .map(|p| async move {
            #[allow(deprecated)]
            let reader = ParquetObjectReader::new(Arc::clone(lake.store()), p);
            let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
            Ok::<u64, ParquetError>(builder.metadata().file_metadata().num_rows() as u64)
        })
        .buffered(8)
        .try_collect()
        .await?;
    Ok(counts.into_iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    #[tokio::test]
    async fn write_then_read_back_with_checksum() {
        let lake = Lake::in_memory();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(vec![1, 2, 3])),
                Arc::new(StringArray::from(vec![Some("a"), None, Some("ü")])),
            ],
        )
        .unwrap();
        let path = Path::from("t/x.parquet");
        let mut w = FileWriter::create(&lake, path.clone(), schema).unwrap();
        w.write(&batch).await.unwrap();
        assert!(
            lake.store().head(&path).await.is_err(),
            "invisible before finish"
        );
        let written = w.finish().await.unwrap();
        let bytes = lake.get_bytes(&path).await.unwrap();
        assert_eq!(written.bytes, bytes.len() as u64);
        assert_eq!(written.sha256, sha256_hex(&bytes));
        assert_eq!(written.rows, 3);
        assert_eq!(read_all(&lake, &path).await.unwrap(), vec![batch.clone()]);
        assert_eq!(read_bytes(bytes).unwrap(), vec![batch]);
        assert_eq!(
            count_rows(&lake, vec![path.clone(), path]).await.unwrap(),
            6
        );
    }
}
