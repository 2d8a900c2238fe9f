//! Streaming Parquet files to and from the lake.
//!
//! [`FileWriter`] encodes with parquet's `ArrowWriter` straight into upload-sized
//! parts ([`PartSink`]) and hands every full part to a multipart upload, so memory
//! is bounded by one row group and a part or two, not by the file. It hashes the
//! bytes on their way out, so the manifest's SHA-256 costs no second read.
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

use crate::schema::{ExportSchema, bronze_writer_properties, writer_properties};
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

/// The encoder's output: bytes are cut into parts of exactly the upload's part
/// size as they are written, hashed and counted on the way.
///
/// The encoder writes synchronously (a whole row group at a flush), while the
/// upload is async; full parts therefore wait in `full` until [`FileWriter`]
/// hands them over, which it does after every encoder call. A flush thus holds
/// at most one row group's worth of parts, and the encoder's pages are freed
/// as they are copied in: the row group is never held twice.
#[derive(Debug)]
struct PartSink {
    part_bytes: usize,
    /// The part being filled (allocated at the full part size when first written to).
    filling: Vec<u8>,
    /// Full parts waiting for the upload.
    full: Vec<Bytes>,
    hasher: Sha256,
    bytes: u64,
}

impl PartSink {
    fn new(part_bytes: usize) -> Self {
        Self {
            part_bytes,
            filling: Vec::new(),
            full: Vec::new(),
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

impl std::io::Write for PartSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hasher.update(buf);
        self.bytes += buf.len() as u64;
        let mut rest = buf;
        while !rest.is_empty() {
            if self.filling.capacity() == 0 {
                self.filling.reserve_exact(self.part_bytes);
            }
            let n = rest.len().min(self.part_bytes - self.filling.len());
            self.filling.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.filling.len() == self.part_bytes {
                self.full
                    .push(Bytes::from(std::mem::take(&mut self.filling)));
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Writes one Parquet file to the lake.
///
/// The encoder writes into a [`PartSink`]; after each call into the encoder the
/// full parts go to a multipart upload (started with the first full part), at
/// most [`UPLOAD_CONCURRENCY`] in flight besides the one being handed over. A
/// file smaller than one part ([`Lake::upload_part_bytes`]) is a single PUT.
pub struct FileWriter {
    path: Path,
    store: Arc<dyn ObjectStore>,
    writer: ArrowWriter<PartSink>,
    /// Started when the first part is full.
    upload: Option<WriteMultipart>,
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

    /// Starts a bronze file at `path` with the exported columns' Arrow schema
    /// and the table's [`bronze_writer_properties`].
    pub fn bronze(lake: &Lake, schema: &ExportSchema, path: Path) -> Result<Self, ParquetError> {
        Self::with_properties(
            lake,
            path,
            schema.arrow_schema(),
            bronze_writer_properties(schema.table),
        )
    }

    /// Starts a file at `path` with the given writer properties.
    pub fn with_properties(
        lake: &Lake,
        path: Path,
        schema: SchemaRef,
        properties: WriterProperties,
    ) -> Result<Self, ParquetError> {
        let sink = PartSink::new(lake.upload_part_bytes());
        let writer = ArrowWriter::try_new(sink, schema, Some(properties))?;
        Ok(Self {
            path,
            store: Arc::clone(lake.store()),
            writer,
            upload: None,
            rows: 0,
        })
    }

    /// Appends a batch; uploads the parts that a flushed row group filled.
    pub async fn write(&mut self, batch: &RecordBatch) -> Result<(), ParquetError> {
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch)?;
        self.upload_full_parts().await
    }

    /// Hands the full parts to the multipart upload (started on the first one),
    /// each after the previous one is on its way.
    async fn upload_full_parts(&mut self) -> Result<(), ParquetError> {
        if self.writer.inner().full.is_empty() {
            return Ok(());
        }
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                let started = self
                    .store
                    .put_multipart(&self.path)
                    .await
                    .map_err(external)?;
                let part_bytes = self.writer.inner().part_bytes;
                self.upload
                    .insert(WriteMultipart::new_with_chunk_size(started, part_bytes))
            }
        };
        for part in std::mem::take(&mut self.writer.inner_mut().full) {
            if let Err(e) = upload.wait_for_capacity(UPLOAD_CONCURRENCY).await {
                // A failed part fails the file: drop the parts already stored
                // instead of leaving them to a bucket lifecycle rule.
                if let Some(upload) = self.upload.take() {
                    let _ = upload.abort().await;
                }
                return Err(external(e));
            }
            // Exactly one part: sent as it is, without a copy.
            upload.put(part);
        }
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

    /// Gives the file up: aborts its multipart upload, if one was started, so
    /// neither the file nor its parts remain (nothing was visible yet).
    pub async fn abort(mut self) {
        if let Some(upload) = self.upload.take()
            && let Err(e) = upload.abort().await
        {
            tracing::warn!(path = %self.path, error = %e, "Could not abort the multipart upload");
        }
    }

    /// Writes the footer and completes the upload (or PUTs a small file whole).
    pub async fn finish(mut self) -> Result<WrittenFile, ParquetError> {
        self.writer.finish()?;
        self.upload_full_parts().await?;
        let sink = self.writer.inner_mut();
        let rest = std::mem::take(&mut sink.filling);
        let bytes = sink.bytes;
        let sha256 = hex(&std::mem::take(&mut sink.hasher).finalize());
        match self.upload.take() {
            None => {
                self.store
                    .put(&self.path, PutPayload::from(rest))
                    .await
                    .map_err(external)?;
            }
            Some(mut upload) => {
                if !rest.is_empty() {
                    upload.put(Bytes::from(rest));
                }
                upload.finish().await.map_err(external)?;
            }
        }
        Ok(WrittenFile {
            path: self.path,
            rows: self.rows,
            bytes,
            sha256,
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
    stream_builder(lake, path).await?.build()
}

/// Streams only the named columns of a lake file (the others are never
/// fetched), in the order of the file's schema.
pub async fn read_columns(
    lake: &Lake,
    path: &Path,
    columns: &[&str],
) -> Result<impl futures::Stream<Item = Result<RecordBatch, ParquetError>> + use<>, ParquetError> {
    let builder = stream_builder(lake, path).await?;
    let mask =
        parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    builder.with_projection(mask).build()
}

/// [`read_columns`] of a file a manifest lists with `size` bytes: no HEAD
/// request, and an object of another size fails to read (its footer is not
/// where the manifest says), which [`differs_from_listed`] then explains.
pub async fn read_listed_columns(
    lake: &Lake,
    path: &Path,
    size: u64,
    columns: &[&str],
) -> Result<impl futures::Stream<Item = Result<RecordBatch, ParquetError>> + use<>, ParquetError> {
    let builder = listed_builder(lake, path, size, 8192).await?;
    let mask =
        parquet::arrow::ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    builder.with_projection(mask).build()
}

/// Every column of a file a manifest lists with `size` bytes, `batch_rows`
/// rows at a time, and its Arrow schema (one row group in memory at most).
pub async fn read_listed(
    lake: &Lake,
    path: &Path,
    size: u64,
    batch_rows: usize,
) -> Result<
    (
        arrow::datatypes::SchemaRef,
        impl futures::Stream<Item = Result<RecordBatch, ParquetError>> + use<>,
    ),
    ParquetError,
> {
    let builder = listed_builder(lake, path, size, batch_rows).await?;
    let schema = Arc::clone(builder.schema());
    Ok((schema, builder.build()?))
}

/// The reader of a file a manifest lists with `size` bytes (no HEAD request).
#[allow(deprecated)]
async fn listed_builder(
    lake: &Lake,
    path: &Path,
    size: u64,
    batch_rows: usize,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>, ParquetError> {
    let reader = ParquetObjectReader::new(
        Arc::clone(lake.store()) as Arc<dyn ObjectStore>,
        path.clone(),
    )
    .with_file_size(size);
    Ok(ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .with_batch_size(batch_rows))
}

/// Why the object at `path` is not the file its manifest lists (`size` bytes,
/// `sha256`), or `None` when it is or the store cannot say. For the path after
/// a read failed: a HEAD, and, when the size matches and `hash` is set, a GET
/// to compare the SHA-256 (so a genuine file that this build cannot read is
/// never called replaced).
pub async fn differs_from_listed(
    lake: &Lake,
    path: &Path,
    size: u64,
    sha256: &str,
    hash: bool,
) -> Option<String> {
    let meta = lake.store().head(path).await.ok()?;
    if meta.size != size {
        return Some(format!(
            "it has {} bytes, its manifest lists {size}",
            meta.size
        ));
    }
    if !hash {
        return None;
    }
    let bytes = lake.get_bytes(path).await.ok()?;
    (sha256_hex(&bytes) != sha256)
        .then(|| "its SHA-256 differs from the one its manifest lists".to_owned())
}

/// The reader is deprecated in favour of a hand-written `AsyncFileReader`;
/// it is still the maintained object_store bridge of this parquet release.
#[allow(deprecated)]
async fn stream_builder(
    lake: &Lake,
    path: &Path,
) -> Result<ParquetRecordBatchStreamBuilder<ParquetObjectReader>, ParquetError> {
    let reader = ParquetObjectReader::new(
        Arc::clone(lake.store()) as Arc<dyn ObjectStore>,
        path.clone(),
    );
    Ok(ParquetRecordBatchStreamBuilder::new(reader)
        .await?
        .with_batch_size(8192))
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

    #[test]
    fn part_sink_cuts_exact_parts_and_hashes_everything() {
        use std::io::Write;
        let mut sink = PartSink::new(4);
        for chunk in [&b"ab"[..], b"cdefghij", b"", b"k"] {
            assert_eq!(sink.write(chunk).unwrap(), chunk.len());
        }
        let parts: Vec<&[u8]> = sink.full.iter().map(|p| &p[..]).collect();
        assert_eq!(parts, vec![&b"abcd"[..], b"efgh"]);
        assert_eq!(sink.filling, b"ijk");
        assert_eq!(sink.bytes, 11);
        assert_eq!(
            hex(&sink.hasher.finalize()),
            sha256_hex(b"abcdefghijk"),
            "the hash covers every byte, in order"
        );
    }

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
