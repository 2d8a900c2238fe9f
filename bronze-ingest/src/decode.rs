//! Decoding PostgreSQL's binary COPY values straight into Arrow builders.
//!
//! `numeric` is decoded from its base-10000 digits into a scaled `i128`, never
//! through a float, so a DECIMAL(20,8) in Parquet holds exactly what PostgreSQL
//! holds. `NaN` (and ±Infinity) become NULL plus a quality finding. Timestamps
//! are PostgreSQL's microseconds since 2000-01-01 shifted to the Unix epoch.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use lake_common::schema::{ExportColumn, PgType};

/// Microseconds between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A value that does not fit the contract (the message says which and why).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(pub String);

type Result<T> = std::result::Result<T, DecodeError>;

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(DecodeError(msg.into()))
}

/// A decoded `numeric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numeric {
    /// A finite value as an integer at the requested scale.
    Value(i128),
    /// `NaN` or ±Infinity: not representable as a decimal.
    NotANumber,
}

/// Decodes a binary `numeric` into an integer scaled by `10^scale`, checking that
/// it fits `precision` digits and needs no rounding.
pub fn numeric(raw: &[u8], precision: u8, scale: i8) -> Result<Numeric> {
    if raw.len() < 8 {
        return err("numeric value is truncated");
    }
    let ndigits = i16::from_be_bytes([raw[0], raw[1]]) as i32;
    let weight = i16::from_be_bytes([raw[2], raw[3]]) as i32;
    let sign = u16::from_be_bytes([raw[4], raw[5]]);
    match sign {
        0x0000 | 0x4000 => {}
        0xC000 | 0xD000 | 0xF000 => return Ok(Numeric::NotANumber),
        other => return err(format!("numeric has unknown sign word {other:#x}")),
    }
    if raw.len() != 8 + 2 * ndigits.max(0) as usize {
        return err("numeric value has a bad length");
    }
    let mut value: i128 = 0;
    for i in 0..ndigits as usize {
        let d = i16::from_be_bytes([raw[8 + 2 * i], raw[9 + 2 * i]]) as i128;
        value = value
            .checked_mul(10_000)
            .and_then(|v| v.checked_add(d))
            .ok_or_else(|| DecodeError("numeric value overflows 128 bits".into()))?;
    }
    // value × 10000^(weight − ndigits + 1) is the number; we want it × 10^scale.
    let exponent = 4 * (weight - ndigits + 1) + scale as i32;
    if value != 0 {
        if exponent >= 0 {
            for _ in 0..exponent {
                value = value
                    .checked_mul(10)
                    .ok_or_else(|| DecodeError("numeric value overflows 128 bits".into()))?;
            }
        } else {
            for _ in 0..(-exponent) {
                if value % 10 != 0 {
                    return err(format!("numeric value has more than {scale} decimals"));
                }
                value /= 10;
            }
        }
    }
    if value >= 10_i128.pow(precision as u32) {
        return err(format!("numeric value has more than {precision} digits"));
    }
    Ok(Numeric::Value(if sign == 0x4000 { -value } else { value }))
}

/// Decodes a binary `uuid` into its canonical lowercase hyphenated text.
pub fn uuid(raw: &[u8], out: &mut String) -> Result<()> {
    let bytes: [u8; 16] = raw
        .try_into()
        .map_err(|_| DecodeError("uuid is not 16 bytes".into()))?;
    let mut buf = [0u8; 36];
    out.push_str(
        uuid::Uuid::from_bytes(bytes)
            .hyphenated()
            .encode_lower(&mut buf),
    );
    Ok(())
}

/// Decodes a binary `timestamptz` into Unix microseconds.
pub fn timestamptz(raw: &[u8]) -> Result<i64> {
    let bytes: [u8; 8] = raw
        .try_into()
        .map_err(|_| DecodeError("timestamp is not 8 bytes".into()))?;
    let pg = i64::from_be_bytes(bytes);
    if pg == i64::MAX || pg == i64::MIN {
        return err("timestamp is ±infinity, which Parquet cannot hold");
    }
    pg.checked_add(PG_EPOCH_OFFSET_MICROS)
        .ok_or_else(|| DecodeError("timestamp out of range".into()))
}

fn int(raw: &[u8]) -> Result<i64> {
    match raw.len() {
        8 => Ok(i64::from_be_bytes(raw.try_into().unwrap_or_default())),
        4 => Ok(i32::from_be_bytes(raw.try_into().unwrap_or_default()) as i64),
        2 => Ok(i16::from_be_bytes(raw.try_into().unwrap_or_default()) as i64),
        n => err(format!("integer of {n} bytes")),
    }
}

fn text(raw: &[u8]) -> Result<&str> {
    std::str::from_utf8(raw).map_err(|_| DecodeError("text is not valid UTF-8".into()))
}

/// Days between 1970-01-01 and PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_OFFSET_DAYS: i32 = 10_957;

fn fixed<const N: usize>(raw: &[u8], what: &str) -> Result<[u8; N]> {
    raw.try_into()
        .map_err(|_| DecodeError(format!("{what} is not {N} bytes")))
}

/// Appends one exported column's values.
#[derive(Debug)]
pub enum ColumnBuilder {
    /// uuid → canonical text.
    Uuid(StringBuilder, String),
    /// jsonb → JSON text (binary jsonb is a version byte then the text).
    Jsonb(StringBuilder),
    /// varchar/text.
    Text(StringBuilder),
    /// bigint, or integer widened for ids.
    Int64(Int64Builder),
    /// integer.
    Int32(Int32Builder),
    /// numeric(p,s).
    Decimal(Decimal128Builder, u8, i8),
    /// timestamptz.
    Timestamp(TimestampMicrosecondBuilder),
    /// `timestamp without time zone`: the same microseconds, no time zone.
    LocalTimestamp(TimestampMicrosecondBuilder),
    /// smallint.
    Int16(Int16Builder),
    /// real.
    Float32(Float32Builder),
    /// double precision.
    Float64(Float64Builder),
    /// date.
    Date(Date32Builder),
    /// time without time zone (microseconds since midnight).
    Time(Time64MicrosecondBuilder),
    /// bytea.
    Binary(BinaryBuilder),
    /// boolean.
    Bool(BooleanBuilder),
}

/// What a value turned into, for the caller's quality bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// A value or a legitimate NULL.
    Ok,
    /// A `NaN`/Infinity numeric stored as NULL.
    NaN,
    /// A `±infinity` date or timestamp stored as NULL (Parquet has no such
    /// value); the caller refuses it in a NOT NULL column.
    Infinite,
}

impl ColumnBuilder {
    /// A builder for `column` with room for `capacity` rows.
    pub fn new(column: &ExportColumn<'_>, capacity: usize) -> Self {
        let strings = || StringBuilder::with_capacity(capacity, capacity * 16);
        match column.pg {
            PgType::Uuid => Self::Uuid(
                StringBuilder::with_capacity(capacity, capacity * 36),
                String::with_capacity(36),
            ),
            PgType::Jsonb => Self::Jsonb(StringBuilder::with_capacity(capacity, capacity * 128)),
            PgType::Text | PgType::AsText => Self::Text(strings()),
            PgType::Id | PgType::Int8 => Self::Int64(Int64Builder::with_capacity(capacity)),
            PgType::Int4 => Self::Int32(Int32Builder::with_capacity(capacity)),
            PgType::Numeric(p, s) => {
                Self::Decimal(Decimal128Builder::with_capacity(capacity), p, s)
            }
            PgType::Timestamptz => {
                Self::Timestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            PgType::Bool => Self::Bool(BooleanBuilder::with_capacity(capacity)),
            PgType::Timestamp => {
                Self::LocalTimestamp(TimestampMicrosecondBuilder::with_capacity(capacity))
            }
            PgType::Int2 => Self::Int16(Int16Builder::with_capacity(capacity)),
            PgType::Float4 => Self::Float32(Float32Builder::with_capacity(capacity)),
            PgType::Float8 => Self::Float64(Float64Builder::with_capacity(capacity)),
            PgType::Date => Self::Date(Date32Builder::with_capacity(capacity)),
            PgType::Time => Self::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            PgType::Bytea => Self::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16)),
        }
    }

    /// Appends one value (`None` = SQL NULL).
    pub fn append(&mut self, raw: Option<&[u8]>) -> Result<Appended> {
        let Some(raw) = raw else {
            self.append_null();
            return Ok(Appended::Ok);
        };
        if self.is_infinite(raw) {
            self.append_null();
            return Ok(Appended::Infinite);
        }
        match self {
            Self::Uuid(b, scratch) => {
                scratch.clear();
                uuid(raw, scratch)?;
                b.append_value(scratch.as_str());
            }
            Self::Jsonb(b) => match raw.split_first() {
                Some((1, json)) => b.append_value(text(json)?),
                _ => return err("jsonb value has an unknown binary version"),
            },
            Self::Text(b) => b.append_value(text(raw)?),
            Self::Int64(b) => b.append_value(int(raw)?),
            Self::Int32(b) => b.append_value(
                i32::try_from(int(raw)?)
                    .map_err(|_| DecodeError("integer out of INT32 range".into()))?,
            ),
            Self::Decimal(b, p, s) => match numeric(raw, *p, *s)? {
                Numeric::Value(v) => b.append_value(v),
                Numeric::NotANumber => {
                    b.append_null();
                    return Ok(Appended::NaN);
                }
            },
            Self::Timestamp(b) => b.append_value(timestamptz(raw)?),
            Self::Bool(b) => match raw {
                [0] => b.append_value(false),
                [1] => b.append_value(true),
                _ => return err("boolean is not one byte"),
            },
            Self::LocalTimestamp(b) => b.append_value(timestamptz(raw)?),
            Self::Int16(b) => b.append_value(i16::from_be_bytes(fixed(raw, "smallint")?)),
            Self::Float32(b) => b.append_value(f32::from_be_bytes(fixed(raw, "real")?)),
            Self::Float64(b) => {
                b.append_value(f64::from_be_bytes(fixed(raw, "double precision")?));
            }
            Self::Date(b) => {
                let days = i32::from_be_bytes(fixed(raw, "date")?);
                b.append_value(
                    days.checked_add(PG_EPOCH_OFFSET_DAYS)
                        .ok_or_else(|| DecodeError("date out of range".into()))?,
                );
            }
            Self::Time(b) => b.append_value(i64::from_be_bytes(fixed(raw, "time")?)),
            Self::Binary(b) => b.append_value(raw),
        }
        Ok(Appended::Ok)
    }

    /// Whether `raw` is PostgreSQL's `infinity` or `-infinity` of a date or
    /// timestamp column.
    fn is_infinite(&self, raw: &[u8]) -> bool {
        match self {
            Self::Timestamp(_) | Self::LocalTimestamp(_) => {
                <[u8; 8]>::try_from(raw).is_ok_and(|b| {
                    let v = i64::from_be_bytes(b);
                    v == i64::MAX || v == i64::MIN
                })
            }
            Self::Date(_) => <[u8; 4]>::try_from(raw).is_ok_and(|b| {
                let v = i32::from_be_bytes(b);
                v == i32::MAX || v == i32::MIN
            }),
            _ => false,
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Uuid(b, _) | Self::Jsonb(b) | Self::Text(b) => b.append_null(),
            Self::Int64(b) => b.append_null(),
            Self::Int32(b) => b.append_null(),
            Self::Decimal(b, _, _) => b.append_null(),
            Self::Timestamp(b) | Self::LocalTimestamp(b) => b.append_null(),
            Self::Bool(b) => b.append_null(),
            Self::Int16(b) => b.append_null(),
            Self::Float32(b) => b.append_null(),
            Self::Float64(b) => b.append_null(),
            Self::Date(b) => b.append_null(),
            Self::Time(b) => b.append_null(),
            Self::Binary(b) => b.append_null(),
        }
    }

    /// Rows appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        match self {
            Self::Uuid(b, _) | Self::Jsonb(b) | Self::Text(b) => b.len(),
            Self::Int64(b) => b.len(),
            Self::Int32(b) => b.len(),
            Self::Decimal(b, _, _) => b.len(),
            Self::Timestamp(b) | Self::LocalTimestamp(b) => b.len(),
            Self::Bool(b) => b.len(),
            Self::Int16(b) => b.len(),
            Self::Float32(b) => b.len(),
            Self::Float64(b) => b.len(),
            Self::Date(b) => b.len(),
            Self::Time(b) => b.len(),
            Self::Binary(b) => b.len(),
        }
    }

    /// True if nothing was appended since the last finish.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the built array, leaving the builder empty for the next chunk.
    pub fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Uuid(b, _) | Self::Jsonb(b) | Self::Text(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Decimal(b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(*p, *s)
                    .expect("contract decimals have precision <= 38"),
            ),
            Self::Timestamp(b) => Arc::new(b.finish().with_timezone("UTC")),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::LocalTimestamp(b) => Arc::new(b.finish()),
            Self::Int16(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Date(b) => Arc::new(b.finish()),
            Self::Time(b) => Arc::new(b.finish()),
            Self::Binary(b) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Encodes a decimal string the way PostgreSQL's numeric_send does.
    fn encode(s: &str) -> Vec<u8> {
        let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        let dscale = frac.len() as i16;
        // Pad the integer part on the left and the fraction on the right to groups of 4.
        let int_pad = format!("{}{}", "0".repeat((4 - int.len() % 4) % 4), int);
        let frac_pad = format!("{}{}", frac, "0".repeat((4 - frac.len() % 4) % 4));
        let mut digits: Vec<i16> = int_pad
            .as_bytes()
            .chunks(4)
            .chain(frac_pad.as_bytes().chunks(4))
            .map(|c| std::str::from_utf8(c).unwrap().parse().unwrap())
            .collect();
        let mut weight = (int_pad.len() / 4) as i16 - 1;
        while digits.first() == Some(&0) {
            digits.remove(0);
            weight -= 1;
        }
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            weight = 0;
        }
        let mut out = Vec::new();
        out.extend((digits.len() as i16).to_be_bytes());
        out.extend(weight.to_be_bytes());
        out.extend((if neg { 0x4000u16 } else { 0 }).to_be_bytes());
        out.extend(dscale.to_be_bytes());
        for d in digits {
            out.extend(d.to_be_bytes());
        }
        out
    }

    #[test]
    fn numeric_extremes_are_exact() {
        for (s, v) in [
            ("999999999999.99999999", 99_999_999_999_999_999_999_i128),
            ("-999999999999.99999999", -99_999_999_999_999_999_999_i128),
            ("0.00000001", 1),
            ("0", 0),
            ("12345.6", 1_234_560_000_000),
            ("10000", 1_000_000_000_000),
        ] {
            assert_eq!(
                numeric(&encode(s), 20, 8).unwrap(),
                Numeric::Value(v),
                "{s}"
            );
        }
        assert_eq!(
            numeric(&encode("-1.2345"), 10, 4).unwrap(),
            Numeric::Value(-12345)
        );
    }

    #[test]
    fn numeric_rejects_what_does_not_fit() {
        assert!(
            numeric(&encode("0.000000001"), 20, 8).is_err(),
            "too many decimals"
        );
        assert!(
            numeric(&encode("1000000000000"), 20, 8).is_err(),
            "too many digits"
        );
        let nan = [0, 0, 0, 0, 0xC0, 0, 0, 0];
        assert_eq!(numeric(&nan, 20, 8).unwrap(), Numeric::NotANumber);
        assert!(numeric(&[0, 1], 20, 8).is_err());
    }

    #[test]
    fn timestamps_shift_to_unix_epoch() {
        assert_eq!(
            timestamptz(&0i64.to_be_bytes()).unwrap(),
            PG_EPOCH_OFFSET_MICROS
        );
        assert!(timestamptz(&i64::MAX.to_be_bytes()).is_err());
    }

    #[test]
    fn builders_append_and_null() {
        let col = ExportColumn {
            name: "q",
            pg: PgType::Numeric(20, 8),
            nullable: true,
        };
        let mut b = ColumnBuilder::new(&col, 4);
        assert_eq!(b.append(Some(&encode("1.5"))).unwrap(), Appended::Ok);
        assert_eq!(
            b.append(Some(&[0, 0, 0, 0, 0xC0, 0, 0, 0])).unwrap(),
            Appended::NaN
        );
        b.append(None).unwrap();
        let a = b.finish();
        assert_eq!((a.len(), a.null_count()), (3, 2));
        let mut u = ColumnBuilder::new(
            &ExportColumn {
                name: "u",
                pg: PgType::Uuid,
                nullable: false,
            },
            1,
        );
        u.append(Some(&[0xAB; 16])).unwrap();
        let a = u.finish();
        let s = a
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap();
        assert_eq!(s.value(0), "abababab-abab-abab-abab-abababababab");
        let mut j = ColumnBuilder::new(
            &ExportColumn {
                name: "j",
                pg: PgType::Jsonb,
                nullable: false,
            },
            1,
        );
        assert!(j.append(Some(b"\x02{}")).is_err());
        j.append(Some(b"\x01{\"a\": 1}")).unwrap();
    }
}
