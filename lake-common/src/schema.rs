//! The data contracts: source columns, their Arrow/Parquet types, writer settings.
//!
//! Bronze's schema is *derived* from the source contract ([`SourceTable`]), so the
//! PostgreSQL types the extractor checks and the Parquet logical types readers see
//! cannot drift apart. Silver's schema is stated directly (SPEC §6). The Parquet
//! writer properties (zstd, statistics, row-group size) live here once, so every
//! file of the lake is written the same way.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{
    EnabledStatistics, WriterProperties, WriterPropertiesBuilder, WriterVersion,
};
use parquet::schema::types::ColumnPath;

use crate::paths::Dataset;

/// Rows per Parquet row group (SPEC §4: at most 128 Ki). Also the unit of memory:
/// the extractor never holds more than about one row group of rows.
pub const ROW_GROUP_ROWS: usize = 128 * 1024;

/// A data file is closed and the next one started past this many bytes (~128 MiB).
pub const TARGET_FILE_BYTES: usize = 128 * 1024 * 1024;

/// Name of the lineage column holding the batch number.
pub const BATCH_COLUMN: &str = "_batch";
/// Name of the lineage column holding the batch's snapshot time.
pub const INGESTED_AT_COLUMN: &str = "_ingested_at";

/// The Hive partition key of every dataset's folders (`date=YYYY-MM-DD`): a
/// reader with Hive partitioning on adds it as a column.
pub const PARTITION_COLUMN: &str = "date";

/// The PostgreSQL type a source column must have, and so the Arrow type it becomes.
///
/// The contract uses the first nine; the rest exist for columns Django adds
/// after the contract was written (SPEC §5.8), which bronze captures with the
/// mapping of [`PgType::for_added`] (the table in `docs/tables.md`, "Columns
/// added to a source table").
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PgType {
    /// `uuid` → UTF8 (canonical lowercase hyphenated).
    Uuid,
    /// An id: `bigint`, or `integer` on older schemas → always INT64.
    Id,
    /// `bigint` → INT64.
    Int8,
    /// `integer` → INT32.
    Int4,
    /// `numeric(p,s)` → DECIMAL(p,s), exactly.
    Numeric(u8, i8),
    /// `timestamp with time zone` → TIMESTAMP(MICROS, UTC).
    Timestamptz,
    /// `jsonb` → UTF8 holding the JSON text.
    Jsonb,
    /// `varchar(n)` or `text` → UTF8.
    Text,
    /// `boolean` → BOOLEAN.
    Bool,
    /// `smallint` → INT16 (Parquet INT32 annotated INT(16)).
    Int2,
    /// `real` → FLOAT.
    Float4,
    /// `double precision` → DOUBLE.
    Float8,
    /// `date` → DATE.
    Date,
    /// `timestamp without time zone` → TIMESTAMP(MICROS) not adjusted to UTC.
    Timestamp,
    /// `time without time zone` → TIME(MICROS).
    Time,
    /// `bytea` → BINARY.
    Bytea,
    /// Any type read as PostgreSQL's own text output (`column::text`) → UTF8:
    /// exact and readable for types Parquet has no equivalent of (interval,
    /// inet, money, enums, arrays, unconstrained numeric, …).
    AsText,
}

impl PgType {
    /// The Arrow type of the column in the lake.
    pub fn arrow_type(self) -> DataType {
        match self {
            Self::Uuid | Self::Jsonb | Self::Text | Self::AsText => DataType::Utf8,
            Self::Id | Self::Int8 => DataType::Int64,
            Self::Int4 => DataType::Int32,
            Self::Numeric(p, s) => DataType::Decimal128(p, s),
            Self::Timestamptz => utc_micros(),
            Self::Bool => DataType::Boolean,
            Self::Int2 => DataType::Int16,
            Self::Float4 => DataType::Float32,
            Self::Float8 => DataType::Float64,
            Self::Date => DataType::Date32,
            Self::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Self::Time => DataType::Time64(TimeUnit::Microsecond),
            Self::Bytea => DataType::Binary,
        }
    }

    /// Whether `format_type()` output of a live column satisfies this contract type.
    pub fn accepts(self, formatted: &str) -> bool {
        match self {
            Self::Uuid => formatted == "uuid",
            Self::Id => matches!(formatted, "bigint" | "integer"),
            Self::Int8 => formatted == "bigint",
            Self::Int4 => formatted == "integer",
            Self::Numeric(p, s) => formatted == format!("numeric({p},{s})"),
            Self::Timestamptz => formatted == "timestamp with time zone",
            Self::Jsonb => formatted == "jsonb",
            Self::Text => formatted == "text" || formatted.starts_with("character varying"),
            Self::Bool => formatted == "boolean",
            Self::Int2
            | Self::Float4
            | Self::Float8
            | Self::Date
            | Self::Timestamp
            | Self::Time
            | Self::Bytea
            | Self::AsText => Self::for_added(formatted, "") == Some(self),
        }
    }

    /// How a column the contract does not name is captured, from its
    /// `format_type()` text and its `pg_type.typcategory`; `None`: no mapping
    /// (composite, range and geometric types, unknown extension types), and
    /// the run stops naming the column.
    pub fn for_added(formatted: &str, category: &str) -> Option<Self> {
        let numeric = |f: &str| -> Option<Self> {
            let inner = f.strip_prefix("numeric(")?.strip_suffix(')')?;
            let (p, s) = inner.split_once(',')?;
            let (p, s): (u8, i8) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
            // Decimal128 holds 38 digits; a negative scale (PostgreSQL 15)
            // has no Parquet DECIMAL: both read as text, exactly.
            Some(if (1..=38).contains(&p) && (0..=p as i8).contains(&s) {
                Self::Numeric(p, s)
            } else {
                Self::AsText
            })
        };
        Some(match formatted {
            "uuid" => Self::Uuid,
            "bigint" => Self::Int8,
            "integer" => Self::Int4,
            "smallint" => Self::Int2,
            "real" => Self::Float4,
            "double precision" => Self::Float8,
            "boolean" => Self::Bool,
            "date" => Self::Date,
            "timestamp with time zone" => Self::Timestamptz,
            "timestamp without time zone" => Self::Timestamp,
            "time without time zone" => Self::Time,
            "bytea" => Self::Bytea,
            "jsonb" => Self::Jsonb,
            "text" | "json" | "name" | "xml" | "citext" | "character" => Self::Text,
            "numeric"
            | "money"
            | "interval"
            | "time with time zone"
            | "inet"
            | "cidr"
            | "macaddr"
            | "macaddr8"
            | "tsvector"
            | "oid" => Self::AsText,
            f if f.starts_with("character varying") || f.starts_with("character(") => Self::Text,
            f if f.starts_with("numeric(") => numeric(f)?,
            f if f.starts_with("timestamp(") && f.ends_with("with time zone") => Self::Timestamptz,
            f if f.starts_with("timestamp(") && f.ends_with("without time zone") => Self::Timestamp,
            f if f.starts_with("time(") && f.ends_with("without time zone") => Self::Time,
            f if f.starts_with("time(") || f.starts_with("interval") => Self::AsText,
            f if f.starts_with("bit") => Self::AsText,
            // Arrays (of anything), enums and bit strings by category.
            _ if matches!(category, "A" | "E" | "V") => Self::AsText,
            _ => return None,
        })
    }

    /// The contract's type, as a person would write it in an error message.
    pub fn describe(self) -> String {
        match self {
            Self::Uuid => "uuid".into(),
            Self::Id => "bigint (or integer)".into(),
            Self::Int8 => "bigint".into(),
            Self::Int4 => "integer".into(),
            Self::Numeric(p, s) => format!("numeric({p},{s})"),
            Self::Timestamptz => "timestamp with time zone".into(),
            Self::Jsonb => "jsonb".into(),
            Self::Text => "varchar or text".into(),
            Self::Bool => "boolean".into(),
            Self::Int2 => "smallint".into(),
            Self::Float4 => "real".into(),
            Self::Float8 => "double precision".into(),
            Self::Date => "date".into(),
            Self::Timestamp => "timestamp without time zone".into(),
            Self::Time => "time without time zone".into(),
            Self::Bytea => "bytea".into(),
            Self::AsText => "any type, read as its text output".into(),
        }
    }
}

/// One column of a contract: a source table's (bronze's columns are these) or
/// silver's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Column name, the same in PostgreSQL and in Parquet.
    pub name: &'static str,
    /// The PostgreSQL type: required of a source column; for silver, the type
    /// of the source values it holds. The Arrow type follows from it.
    pub pg: PgType,
    /// Whether NULL is allowed. A source column that allows NULL where the
    /// contract does not is drift too: the Parquet column is declared required.
    pub nullable: bool,
    /// What the column means, for the data dictionary (`docs/tables.md`).
    pub doc: &'static str,
}

const fn col(name: &'static str, pg: PgType, nullable: bool, doc: &'static str) -> Column {
    Column {
        name,
        pg,
        nullable,
        doc,
    }
}

/// A source table and the bronze dataset it feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceTable {
    /// Table name in PostgreSQL.
    pub table: &'static str,
    /// The bronze dataset.
    pub dataset: Dataset,
    /// Contract columns, in source order.
    pub columns: &'static [Column],
    /// Primary key column (unique and non-null, checked on every run).
    pub key: &'static str,
    /// The timestamptz column whose UTC date partitions the dataset and that leads the sort order.
    pub time_column: &'static str,
    /// The decimal column `--verify` sums per day.
    pub verify_sum_column: Option<&'static str>,
    /// Rows are updated in place (the outbox): every committed row version is
    /// captured, so the scan has no time bound, a re-execution may not
    /// reproduce the same bytes, and row identity compares whole versions.
    pub updated_in_place: bool,
    /// Columns with few distinct values, dictionary-encoded in bronze (see
    /// [`bronze_writer_properties`]); the lineage columns always are.
    pub dictionary: &'static [&'static str],
}

use PgType::*;

/// `stop_events` → `bronze/events` (SPEC §2, §4).
pub const STOP_EVENTS: SourceTable = SourceTable {
    table: "stop_events",
    dataset: Dataset::BronzeEvents,
    columns: &[
        col(
            "event_id",
            Uuid,
            false,
            "The event's primary key, canonical lowercase hyphenated text.",
        ),
        col(
            "event_seq",
            Int8,
            true,
            "Sequence number, unique when present; often NULL.",
        ),
        col(
            "occurred_at",
            Timestamptz,
            false,
            "When the app recorded the event (set at insert, before commit).",
        ),
        col(
            "operation_id",
            Id,
            false,
            "The stop operation (foreign key); INT64 even where the source is int4.",
        ),
        col("client_id", Id, false, "The tenant."),
        col("symbol", Text, false, "Trading pair, e.g. BTCUSDC."),
        col(
            "event_type",
            Text,
            false,
            "STOP_TRIGGERED, EXECUTION_SUBMITTED, EXECUTED, FAILED, BLOCKED, STALE_PRICE, KILL_SWITCH, SLIPPAGE_BREACH or CIRCUIT_BREAKER.",
        ),
        col(
            "trigger_price",
            Numeric(20, 8),
            true,
            "Price at which the stop triggered.",
        ),
        col(
            "stop_price",
            Numeric(20, 8),
            true,
            "The stop's configured price.",
        ),
        col("quantity", Numeric(20, 8), true, "Order quantity."),
        col("side", Text, true, "BUY or SELL."),
        col(
            "execution_token",
            Text,
            true,
            "Shared by all events of one execution (NULL or empty: the execution is its operation).",
        ),
        col(
            "payload_json",
            Jsonb,
            false,
            "The event's payload, as JSON text.",
        ),
        col(
            "request_payload_hash",
            Text,
            true,
            "Hash of the order request sent to the exchange.",
        ),
        col("exchange_order_id", Text, true, "The exchange's order id."),
        col(
            "fill_price",
            Numeric(20, 8),
            true,
            "Fill price reported by the exchange.",
        ),
        col(
            "slippage_pct",
            Numeric(10, 4),
            true,
            "Slippage of the fill, in percent, as the app computed it.",
        ),
        col(
            "source",
            Text,
            false,
            "What emitted the event: ws, cron or manual.",
        ),
        col(
            "error_message",
            Text,
            true,
            "Error text of a failed or blocked step.",
        ),
        col(
            "retry_count",
            Int4,
            false,
            "The app's retry counter for this step.",
        ),
    ],
    key: "event_id",
    time_column: "occurred_at",
    verify_sum_column: Some("quantity"),
    updated_in_place: false,
    dictionary: &[
        "client_id",
        "symbol",
        "event_type",
        "side",
        "source",
        "error_message",
        "retry_count",
    ],
};

/// `outbox` → `bronze/outbox`. Outbox rows are updated in place, so bronze holds
/// one row per captured row *version* (each update made by a newer transaction is
/// exported again by the batch that covers that transaction).
pub const OUTBOX: SourceTable = SourceTable {
    table: "outbox",
    dataset: Dataset::BronzeOutbox,
    columns: &[
        col("outbox_id", Uuid, false, "The outbox row's primary key."),
        col(
            "aggregate_type",
            Text,
            false,
            "Kind of the aggregate the message is about.",
        ),
        col("aggregate_id", Id, false, "Id of that aggregate."),
        col("event_type", Text, false, "Type of the message."),
        col(
            "correlation_id",
            Text,
            false,
            "Unique correlation id of the message.",
        ),
        col(
            "event_id",
            Uuid,
            true,
            "The stop event the message announces (foreign key to stop_events), if any.",
        ),
        col("routing_key", Text, false, "Broker routing key."),
        col("exchange", Text, false, "Broker exchange."),
        col("payload", Jsonb, false, "The message body, as JSON text."),
        col(
            "published",
            Bool,
            false,
            "Whether the message was published, as of this row version.",
        ),
        col(
            "published_at",
            Timestamptz,
            true,
            "When it was published, as of this row version.",
        ),
        col(
            "retry_count",
            Int4,
            false,
            "Publication attempts, as of this row version.",
        ),
        col(
            "last_error",
            Text,
            true,
            "Last publication error, as of this row version.",
        ),
        col(
            "created_at",
            Timestamptz,
            false,
            "When the outbox row was created (an update does not move it).",
        ),
    ],
    key: "outbox_id",
    time_column: "created_at",
    verify_sum_column: None,
    updated_in_place: true,
    dictionary: &[
        "aggregate_type",
        "event_type",
        "routing_key",
        "exchange",
        "retry_count",
        "last_error",
    ],
};

/// Both source tables, in export order.
pub const SOURCE_TABLES: [SourceTable; 2] = [STOP_EVENTS, OUTBOX];

impl SourceTable {
    /// The bronze Arrow schema: source columns in order, then the lineage columns.
    pub fn arrow_schema(&self) -> SchemaRef {
        with_lineage(fields(self.columns))
    }

    /// The contract column named `name`.
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }
}

/// A column of the live source table that the contract does not name (SPEC
/// §5.8): captured from the next batch on, after the contract columns, and
/// recorded in every batch manifest that holds it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AddedColumn {
    /// The column's name in PostgreSQL and in Parquet.
    pub name: String,
    /// PostgreSQL's `format_type()` of the column when it was captured.
    pub pg_type: String,
    /// How it is stored ([`PgType::for_added`]).
    pub stored_as: PgType,
}

impl AddedColumn {
    /// Whether files written with `self` and with `other` hold the column as
    /// the same Parquet type (a retype that keeps it is accepted).
    pub fn same_storage(&self, other: &Self) -> bool {
        self.stored_as.arrow_type() == other.stored_as.arrow_type()
    }
}

/// The columns a batch exports: the contract's, then the added ones.
#[derive(Debug, Clone)]
pub struct ExportSchema {
    /// The contract.
    pub table: &'static SourceTable,
    /// Columns the contract does not name, in source order.
    pub added: Vec<AddedColumn>,
}

/// One exported column.
#[derive(Debug, Clone, Copy)]
pub struct ExportColumn<'a> {
    /// Name.
    pub name: &'a str,
    /// Type.
    pub pg: PgType,
    /// Whether NULL is allowed (always, for an added column: older files lack it).
    pub nullable: bool,
}

impl ExportSchema {
    /// The contract columns only.
    pub fn contract(table: &'static SourceTable) -> Self {
        Self {
            table,
            added: Vec::new(),
        }
    }

    /// Every exported column, in file order.
    pub fn columns(&self) -> Vec<ExportColumn<'_>> {
        let contract = self.table.columns.iter().map(|c| ExportColumn {
            name: c.name,
            pg: c.pg,
            nullable: c.nullable,
        });
        let added = self.added.iter().map(|c| ExportColumn {
            name: &c.name,
            pg: c.stored_as,
            nullable: true,
        });
        contract.chain(added).collect()
    }

    /// The SELECT list: contract names as they are, added names quoted (Django
    /// may add any name), text-mapped columns cast to text.
    pub fn select_list(&self) -> String {
        let mut out: Vec<String> = self
            .table
            .columns
            .iter()
            .map(|c| c.name.to_owned())
            .collect();
        for c in &self.added {
            let ident = format!("\"{}\"", c.name.replace('"', "\"\""));
            out.push(if c.stored_as == PgType::AsText {
                format!("{ident}::text")
            } else {
                ident
            });
        }
        out.join(", ")
    }

    /// The bronze Arrow schema: exported columns, then the lineage columns.
    pub fn arrow_schema(&self) -> SchemaRef {
        with_lineage(
            self.columns()
                .iter()
                .map(|c| Field::new(c.name, c.pg.arrow_type(), c.nullable))
                .collect(),
        )
    }
}

/// `fields` followed by bronze's lineage columns.
fn with_lineage(mut fields: Vec<Field>) -> SchemaRef {
    fields.push(Field::new(BATCH_COLUMN, DataType::Int64, false));
    fields.push(Field::new(INGESTED_AT_COLUMN, utc_micros(), false));
    Arc::new(Schema::new(fields))
}

/// TIMESTAMP(MICROS, isAdjustedToUTC=true).
pub fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// `silver.stop_executions` (SPEC §6), in file order. `pg` is the source type
/// the values come from; the Arrow type follows from it as for bronze.
pub const SILVER_COLUMNS: &[Column] = &[
    col(
        "execution_id",
        Uuid,
        false,
        "event_id of the execution's first event: stable across runs.",
    ),
    col(
        "execution_key",
        Text,
        false,
        "execution_token, or operation:<operation_id> when the token is NULL or empty.",
    ),
    col("operation_id", Int8, false, "From the first event."),
    col("symbol", Text, false, "From the first event."),
    col("side", Text, true, "From the first event."),
    col(
        "status",
        Text,
        false,
        "From the latest event: STOP_TRIGGERED→PENDING, EXECUTION_SUBMITTED→SUBMITTED, EXECUTED, FAILED, BLOCKED.",
    ),
    col(
        "triggered_at",
        Timestamptz,
        true,
        "occurred_at of the first STOP_TRIGGERED event.",
    ),
    col(
        "submitted_at",
        Timestamptz,
        true,
        "occurred_at of the first EXECUTION_SUBMITTED event.",
    ),
    col(
        "executed_at",
        Timestamptz,
        true,
        "occurred_at of the first EXECUTED event.",
    ),
    col(
        "failed_at",
        Timestamptz,
        true,
        "occurred_at of the first FAILED event.",
    ),
    col(
        "blocked_at",
        Timestamptz,
        true,
        "occurred_at of the first BLOCKED event.",
    ),
    col("stop_price", Numeric(20, 8), true, "Latest non-null value."),
    col(
        "trigger_price",
        Numeric(20, 8),
        true,
        "Latest non-null value.",
    ),
    col("quantity", Numeric(20, 8), true, "Latest non-null value."),
    col(
        "exchange_order_id",
        Text,
        true,
        "Latest non-null value among EXECUTED events.",
    ),
    col(
        "fill_price",
        Numeric(20, 8),
        true,
        "Latest non-null value among EXECUTED events.",
    ),
    col(
        "slippage_pct",
        Numeric(10, 4),
        true,
        "Latest non-null value among EXECUTED events.",
    ),
    col("source", Text, false, "From the latest event."),
    col("error_message", Text, true, "Latest non-null value."),
    col(
        "retry_count",
        Int4,
        false,
        "Maximum over the execution's events.",
    ),
    col(
        "event_count",
        Int8,
        false,
        "Events folded into the execution (an event_id found twice in bronze counts once).",
    ),
    col(
        "first_event_at",
        Timestamptz,
        false,
        "occurred_at of the first event; its UTC date is the partition's date.",
    ),
    col(
        "last_event_at",
        Timestamptz,
        false,
        "occurred_at of the latest event.",
    ),
    col(
        "last_event_id",
        Uuid,
        false,
        "event_id of the latest event.",
    ),
];

static SILVER: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(fields(SILVER_COLUMNS))));

fn fields(columns: &[Column]) -> Vec<Field> {
    columns
        .iter()
        .map(|c| Field::new(c.name, c.pg.arrow_type(), c.nullable))
        .collect()
}

/// `silver.stop_executions` (SPEC §6) as stored in a partition file: the partition
/// columns `client_id` and `date` live in the path, not in the file.
pub fn silver_stop_executions() -> SchemaRef {
    SILVER.clone()
}

/// The quarantine schema: the silver columns plus `client_id` (a violating row may
/// have several) and the `violation` rule name.
pub fn silver_quarantine() -> SchemaRef {
    let mut fields: Vec<Field> = SILVER.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.insert(2, Field::new("client_id", DataType::Int64, false));
    fields.push(Field::new("violation", DataType::Utf8, false));
    Arc::new(Schema::new(fields))
}

/// The writer settings of the lake's derived files (silver, key indexes): zstd,
/// page statistics, 128 Ki-row row groups. Identical settings are part of what
/// makes a re-run byte-identical.
pub fn writer_properties() -> WriterProperties {
    base_properties(3).build()
}

/// Bronze row groups are also closed at this estimated encoded size (compressed
/// pages plus the open pages), which bounds the writer's memory whatever the row
/// width: a row group is buffered whole before it is written. About 5 k demo rows
/// and 460 KB of Parquet; SPEC §4 only caps the row count. The size is what keeps
/// a 3 M-row export within 20 % of a 100 k-row one's memory (docs/benchmarks.md);
/// it costs ad-hoc readers some speed, but bronze is read whole days at a time
/// (silver), hourly runs write small files anyway, and the compaction of closed
/// days (SPEC §11) is where large row groups belong.
pub const BRONZE_ROW_GROUP_BYTES: usize = 768 * 1024;

/// Bronze data pages are cut at this size. The open page of every column is
/// buffered uncompressed, and every column that compressed a page keeps a zstd
/// context sized to its pages (up to ~0.6 MB from 128 KiB on) until its row
/// group ends; small pages keep both small.
pub const BRONZE_PAGE_BYTES: usize = 128 * 1024;

/// Rows the bronze encoder takes at a time. A page is cut only between two such
/// steps, so this bounds how far a wide column (the JSON payload, ~300 bytes a
/// row) overshoots [`BRONZE_PAGE_BYTES`].
pub const BRONZE_WRITE_BATCH_ROWS: usize = 256;

/// The writer settings of bronze files, tuned for the export's throughput (it has
/// to keep pace with PostgreSQL's COPY on one core) and for a working set that
/// does not grow with the batch (see docs/benchmarks.md):
///
/// * zstd level 1: level 3 spent a third of the export's CPU for 1 % smaller files;
/// * dictionary encoding only on the columns listed in
///   [`SourceTable::dictionary`]: for unique ids, JSON and prices a dictionary
///   costs a hash per value, overflows its page and falls back to plain
///   anyway (the files came out 7 % *smaller* without it);
/// * row groups closed at [`BRONZE_ROW_GROUP_BYTES`] as well as at 128 Ki rows,
///   pages of [`BRONZE_PAGE_BYTES`], fed [`BRONZE_WRITE_BATCH_ROWS`] at a time.
pub fn bronze_writer_properties(table: &SourceTable) -> WriterProperties {
    bronze_dictionaries(base_properties(1), table)
        .set_max_row_group_bytes(Some(BRONZE_ROW_GROUP_BYTES))
        .set_data_page_size_limit(BRONZE_PAGE_BYTES)
        .set_write_batch_size(BRONZE_WRITE_BATCH_ROWS)
        .build()
}

/// The writer settings of compacted bronze files (`lake-maintain`, SPEC §11),
/// written once per closed day off the export's path and for ad-hoc readers:
/// bronze's dictionary choice, zstd level 3 and whole 128 Ki-row row groups.
/// (The derived files' settings, dictionaries on every column, came out 11 %
/// larger than the hourly files they replaced; these 7 % smaller:
/// docs/benchmarks-compaction.md.)
pub fn compacted_writer_properties(table: &SourceTable) -> WriterProperties {
    bronze_dictionaries(base_properties(3), table).build()
}

/// Dictionary encoding only on the columns [`SourceTable::dictionary`] lists
/// and the lineage columns.
fn bronze_dictionaries(
    mut builder: WriterPropertiesBuilder,
    table: &SourceTable,
) -> WriterPropertiesBuilder {
    builder = builder.set_dictionary_enabled(false);
    for column in table
        .dictionary
        .iter()
        .chain(&[BATCH_COLUMN, INGESTED_AT_COLUMN])
    {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), true);
    }
    builder
}

fn base_properties(zstd_level: i32) -> WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(zstd_level).unwrap_or_default(),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(concat!("robson-lake ", env!("CARGO_PKG_VERSION")).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, BooleanArray, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
        TimestampMicrosecondArray, new_null_array,
    };
    use bytes::Bytes;
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::{LogicalType, TimeUnit as PqTimeUnit};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// One row of plausible values for any schema.
    fn one_row(schema: &SchemaRef) -> RecordBatch {
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.data_type() {
                    DataType::Utf8 => Arc::new(StringArray::from(vec!["x"])),
                    DataType::Int64 => Arc::new(Int64Array::from(vec![1])),
                    DataType::Int32 => Arc::new(Int32Array::from(vec![1])),
                    DataType::Boolean => Arc::new(BooleanArray::from(vec![true])),
                    DataType::Decimal128(p, s) => Arc::new(
                        Decimal128Array::from(vec![12345678_i128])
                            .with_precision_and_scale(*p, *s)
                            .unwrap(),
                    ),
                    DataType::Timestamp(_, _) => Arc::new(
                        TimestampMicrosecondArray::from(vec![1_700_000_000_000_000])
                            .with_timezone("UTC"),
                    ),
                    other => new_null_array(other, 1),
                }
            })
            .collect();
        RecordBatch::try_new(schema.clone(), cols).unwrap()
    }

    /// Writes a batch with the lake's properties and returns the Parquet file bytes.
    fn write(schema: &SchemaRef) -> Bytes {
        let mut buf = Vec::new();
        let mut w =
            ArrowWriter::try_new(&mut buf, schema.clone(), Some(writer_properties())).unwrap();
        w.write(&one_row(schema)).unwrap();
        w.close().unwrap();
        Bytes::from(buf)
    }

    /// The footer's logical type per leaf column.
    fn logical_types(file: Bytes) -> Vec<(String, Option<LogicalType>, bool)> {
        let reader = SerializedFileReader::new(file).unwrap();
        let meta = reader.metadata();
        let rg = meta.row_group(0);
        assert!(matches!(rg.column(0).compression(), Compression::ZSTD(_)));
        assert!(rg.column(0).statistics().is_some(), "statistics are on");
        meta.file_metadata()
            .schema_descr()
            .columns()
            .iter()
            .map(|c| {
                let required = c.self_type().get_basic_info().repetition()
                    == parquet::basic::Repetition::REQUIRED;
                (c.name().to_owned(), c.logical_type_ref().cloned(), required)
            })
            .collect()
    }

    fn lt<'a>(
        types: &'a [(String, Option<LogicalType>, bool)],
        name: &str,
    ) -> &'a (String, Option<LogicalType>, bool) {
        types
            .iter()
            .find(|(n, _, _)| n == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    /// The Parquet physical type the arrow writer picks for a column.
    fn physical(schema: &SchemaRef, name: &str) -> parquet::basic::Type {
        let descr = parquet::arrow::ArrowSchemaConverter::new()
            .convert(schema)
            .unwrap();
        descr
            .columns()
            .iter()
            .find(|c| c.name() == name)
            .unwrap()
            .physical_type()
    }

    fn ts_utc_micros() -> Option<LogicalType> {
        Some(LogicalType::timestamp(true, PqTimeUnit::MICROS))
    }

    #[test]
    fn bronze_events_parquet_types() {
        let schema = STOP_EVENTS.arrow_schema();
        let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names.first(), Some(&"event_id"));
        assert_eq!(&names[names.len() - 2..], &["_batch", "_ingested_at"]);
        let file = write(&schema);
        let types = logical_types(file.clone());
        assert_eq!(lt(&types, "event_id").1, Some(LogicalType::String));
        assert_eq!(lt(&types, "payload_json").1, Some(LogicalType::String));
        assert_eq!(lt(&types, "quantity").1, Some(LogicalType::decimal(8, 20)));
        assert_eq!(
            lt(&types, "slippage_pct").1,
            Some(LogicalType::decimal(4, 10))
        );
        assert_eq!(lt(&types, "occurred_at").1, ts_utc_micros());
        assert_eq!(lt(&types, "_ingested_at").1, ts_utc_micros());
        assert_eq!(
            physical(&schema, "operation_id"),
            parquet::basic::Type::INT64
        );
        assert_eq!(
            physical(&schema, "retry_count"),
            parquet::basic::Type::INT32
        );
        assert!(lt(&types, "event_id").2, "event_id is required");
        assert!(!lt(&types, "event_seq").2, "event_seq is optional");
        // The Arrow schema round-trips through the file exactly.
        let back = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        assert_eq!(back.schema().fields(), schema.fields());
    }

    #[test]
    fn bronze_outbox_parquet_types() {
        let schema = OUTBOX.arrow_schema();
        let types = logical_types(write(&schema));
        assert_eq!(lt(&types, "outbox_id").1, Some(LogicalType::String));
        assert_eq!(lt(&types, "published").1, None, "plain BOOLEAN");
        assert_eq!(lt(&types, "published_at").1, ts_utc_micros());
        assert_eq!(
            physical(&schema, "aggregate_id"),
            parquet::basic::Type::INT64
        );
    }

    #[test]
    fn silver_parquet_types() {
        let schema = silver_stop_executions();
        assert!(
            schema.field_with_name("client_id").is_err(),
            "partition column not in file"
        );
        let types = logical_types(write(&schema));
        assert_eq!(
            lt(&types, "fill_price").1,
            Some(LogicalType::decimal(8, 20))
        );
        assert_eq!(lt(&types, "executed_at").1, ts_utc_micros());
        let q = silver_quarantine();
        assert!(q.field_with_name("violation").is_ok() && q.field_with_name("client_id").is_ok());
        logical_types(write(&q));
    }

    #[test]
    fn contract_type_matching() {
        assert!(Numeric(20, 8).accepts("numeric(20,8)"));
        assert!(!Numeric(20, 8).accepts("numeric(30,10)"));
        assert!(!Numeric(20, 8).accepts("double precision"));
        assert!(Id.accepts("integer") && Id.accepts("bigint") && !Id.accepts("numeric"));
        assert!(Text.accepts("character varying(20)") && Text.accepts("text"));
        assert!(Timestamptz.accepts("timestamp with time zone"));
        assert!(!Timestamptz.accepts("timestamp without time zone"));
        assert_eq!(STOP_EVENTS.column("quantity").unwrap().pg, Numeric(20, 8));
    }

    /// Bronze dictionary-encodes exactly the listed low-cardinality columns and
    /// the lineage columns, with zstd; a misspelt name would silently be plain.
    #[test]
    fn bronze_dictionary_columns() {
        for table in SOURCE_TABLES {
            for name in table.dictionary {
                assert!(table.column(name).is_some(), "{name} is not a column");
            }
            let schema = table.arrow_schema();
            let mut buf = Vec::new();
            let props = bronze_writer_properties(&table);
            let mut w = ArrowWriter::try_new(&mut buf, schema.clone(), Some(props)).unwrap();
            w.write(&one_row(&schema)).unwrap();
            w.close().unwrap();
            let reader = SerializedFileReader::new(Bytes::from(buf)).unwrap();
            let rg = reader.metadata().row_group(0);
            for c in rg.columns() {
                let name = c.column_path().string();
                let expected = table.dictionary.contains(&name.as_str())
                    || name == BATCH_COLUMN
                    || name == INGESTED_AT_COLUMN;
                assert_eq!(
                    c.dictionary_page_offset().is_some(),
                    expected,
                    "{}.{name}",
                    table.table
                );
                assert_eq!(
                    c.compression(),
                    Compression::ZSTD(ZstdLevel::try_new(1).unwrap())
                );
            }
        }
    }
}
