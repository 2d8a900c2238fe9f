//! Streaming Parquet files to and from the lake.
//!
//! [`FileWriter`] is `AsyncArrowWriter` over object_store's `BufWriter`: row groups
//! stream into a multipart upload, so memory is bounded by one row group, not by
//! the file. It hashes the bytes on their way out, so the manifest's SHA-256 costs
//! no second read. Nothing is visible under the path until [`FileWriter::finish`]
//! completes the upload (S3 multipart and the local store's rename are atomic).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
// Deprecated in parquet 60 in favour of a hand-written AsyncFileReader; it still
// does exactly what we need (ranged GETs, footer prefetch) until that lands upstream.
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::async_writer::AsyncFileWriter;
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use crate::schema::writer_properties;
use crate::store::Lake;

/// Bytes buffered before a file becomes a multipart upload, and the part size:
/// S3's minimum, since every buffered part is memory (smaller files are one PUT).
pub const UPLOAD_PART_BYTES: usize = 5 * 1024 * 1024;

/// Parts uploaded at once: two keep the network busy while the next part fills,
/// and bound the upload's memory to a few parts whatever the file size.
const UPLOAD_CONCURRENCY: usize = 2;

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

/// `BufWriter` plus a running SHA-256 and byte count.
struct HashingSink {
    inner: BufWriter,
    hasher: Sha256,
    bytes: u64,
}

impl AsyncFileWriter for HashingSink {
    fn write(&mut self, bs: Bytes) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.hasher.update(&bs);
        self.bytes += bs.len() as u64;
        self.inner.write(bs)
    }

    fn complete(&mut self) -> BoxFuture<'_, parquet::errors::Result<()>> {
        self.inner.complete()
    }
}

/// Writes one Parquet file with the lake's writer properties.
pub struct FileWriter {
    path: Path,
    writer: AsyncArrowWriter<HashingSink>,
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

    /// Starts a file at `path` with the given writer properties.
    pub fn with_properties(
        lake: &Lake,
        path: Path,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<Self, ParquetError> {
        let upload =
            BufWriter::with_capacity(Arc::clone(lake.store()), path.clone(), UPLOAD_PART_BYTES)
                .with_max_concurrency(UPLOAD_CONCURRENCY);
        let sink = HashingSink {
            inner: upload,
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer = AsyncArrowWriter::try_new(sink, schema, Some(properties))?;
        Ok(Self {
            path,
            writer,
            rows: 0,
        })
    }

    /// Appends a batch (flushes a row group to the upload when it is full).
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).await
    }

    /// Bytes written so far plus the current row group's buffered estimate.
    pub fn approximate_size(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size()
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Writes the footer and completes the upload.
    pub async fn finish(mut self) -> Result<WrittenFile, ParquetError> {
        self.writer.finish().await?;
        let sink = self.writer.into_inner();
        Ok(WrittenFile {
            path: self.path,
            rows: self.rows,
            bytes: sink.bytes,
            sha256: hex(&sink.hasher.finalize()),
        })
    }
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
    use object_store::ObjectStoreExt;

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
