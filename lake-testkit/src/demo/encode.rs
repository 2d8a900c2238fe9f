//! PostgreSQL binary encodings for the demo rows, used with `COPY … (FORMAT binary)`.
//!
//! Binary COPY is the fastest way into PostgreSQL: the rows are produced by the
//! test process (on its own core) while the server only stores them. The few
//! types tokio-postgres cannot encode out of the box are here: `numeric` from a
//! fixed-point [`Decimal`], `jsonb` from JSON text that is already serialised, and
//! ids that may be `int4` on older schemas (SPEC §2) or `bigint`.

use std::error::Error;

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::rows::Decimal;

/// `numeric` from a [`Decimal`] whose scale is a multiple of 4 (one base-10000
/// digit per 4 decimals, as PostgreSQL stores them).
impl ToSql for Decimal {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if !self.scale.is_multiple_of(4) {
            return Err(format!("scale {} is not a multiple of 4", self.scale).into());
        }
        let frac_groups = usize::from(self.scale / 4);
        let mut abs = self.units.unsigned_abs();
        // Base-10000 digits, least significant first: fraction groups, then integer.
        let mut digits: Vec<i16> = Vec::with_capacity(8);
        for _ in 0..frac_groups {
            digits.push((abs % 10_000) as i16);
            abs /= 10_000;
        }
        while abs > 0 {
            digits.push((abs % 10_000) as i16);
            abs /= 10_000;
        }
        let int_groups = digits.len() - frac_groups;
        // Weight = power of 10000 of the first digit sent; below 1 that is the
        // first fraction group (-1). Zero digits at either end are allowed on the
        // wire (the server normalises them).
        let weight = if int_groups == 0 {
            -1
        } else {
            i16::try_from(int_groups)? - 1
        };
        out.put_i16(i16::try_from(digits.len())?);
        out.put_i16(weight);
        out.put_u16(if self.units < 0 { 0x4000 } else { 0 });
        out.put_i16(i16::from(self.scale));
        for d in digits.iter().rev() {
            out.put_i16(*d);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

/// JSON text that is already serialised, for a `jsonb` (or `json`) column.
#[derive(Debug)]
pub(crate) struct JsonText<'a>(pub(crate) &'a str);

impl ToSql for JsonText<'_> {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        if *ty == Type::JSONB {
            out.put_u8(1); // jsonb binary format version
        }
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB || *ty == Type::JSON
    }

    to_sql_checked!();
}

/// An id for an `int2`/`int4`/`int8` column (some schemas still have int4 ids).
#[derive(Debug)]
pub(crate) struct Id(pub(crate) i64);

impl ToSql for Id {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        match *ty {
            Type::INT8 => out.put_i64(self.0),
            Type::INT4 => out.put_i32(i32::try_from(self.0)?),
            _ => out.put_i16(i16::try_from(self.0)?),
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::INT2 | Type::INT4 | Type::INT8)
    }

    to_sql_checked!();
}

/// A `timestamptz` from microseconds since the Unix epoch.
#[derive(Debug)]
pub(crate) struct Micros(pub(crate) i64);

/// Microseconds from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

impl ToSql for Micros {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn Error + Sync + Send>> {
        out.put_i64(self.0 - PG_EPOCH_OFFSET_US);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP
    }

    to_sql_checked!();
}
