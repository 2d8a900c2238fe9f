//! Identity and order of events and executions (SPEC §6).
//!
//! Everything that decides *which* execution an event belongs to, *where* an
//! execution is stored and *in which order* its events count lives here, so the
//! fold, the incremental planner and the key index cannot disagree:
//!
//! * the execution key (`execution_token`, or `operation:<operation_id>`) and its
//!   stable 128-bit hash ([`KeyHash`]), which the persisted key index uses;
//! * the event order `(occurred_at, event_seq NULLS LAST, event_id)` ([`OrderKey`]);
//! * the silver partition of an execution ([`PartitionKey`]);
//! * the shard that owns a client ([`Shard`]).

use std::cmp::Ordering;
use std::fmt;

use chrono::NaiveDate;
use lake_common::Partition;
use sha2::{Digest, Sha256};

/// Microseconds per UTC day.
pub const MICROS_PER_DAY: i64 = 86_400_000_000;
/// `NaiveDate::num_days_from_ce` of 1970-01-01.
const UNIX_EPOCH_DAYS_FROM_CE: i32 = 719_163;

/// The event types that make up executions; all other event types are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EventType {
    /// `STOP_TRIGGERED` → status `PENDING`.
    StopTriggered = 0,
    /// `EXECUTION_SUBMITTED` → `SUBMITTED`.
    ExecutionSubmitted = 1,
    /// `EXECUTED` → `EXECUTED`.
    Executed = 2,
    /// `FAILED` → `FAILED`.
    Failed = 3,
    /// `BLOCKED` → `BLOCKED`.
    Blocked = 4,
}

impl EventType {
    /// All execution event types, in discriminant order.
    pub const ALL: [EventType; 5] = [
        Self::StopTriggered,
        Self::ExecutionSubmitted,
        Self::Executed,
        Self::Failed,
        Self::Blocked,
    ];

    /// Parses an `event_type` value; `None` for the types silver ignores.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "STOP_TRIGGERED" => Some(Self::StopTriggered),
            "EXECUTION_SUBMITTED" => Some(Self::ExecutionSubmitted),
            "EXECUTED" => Some(Self::Executed),
            "FAILED" => Some(Self::Failed),
            "BLOCKED" => Some(Self::Blocked),
            _ => None,
        }
    }

    /// The source spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StopTriggered => "STOP_TRIGGERED",
            Self::ExecutionSubmitted => "EXECUTION_SUBMITTED",
            Self::Executed => "EXECUTED",
            Self::Failed => "FAILED",
            Self::Blocked => "BLOCKED",
        }
    }

    /// The execution status this event type leaves the execution in.
    pub fn status(self) -> &'static str {
        match self {
            Self::StopTriggered => "PENDING",
            Self::ExecutionSubmitted => "SUBMITTED",
            Self::Executed => "EXECUTED",
            Self::Failed => "FAILED",
            Self::Blocked => "BLOCKED",
        }
    }
}

/// The statuses of SPEC §6, the enum the quality rule checks against.
pub const STATUSES: [&str; 5] = ["PENDING", "SUBMITTED", "EXECUTED", "FAILED", "BLOCKED"];

/// A canonical event id (a UUID) as 16 big-endian bytes: byte order equals the
/// order of the canonical lowercase text, so comparisons need no string.
pub type EventId = [u8; 16];

/// Parses the canonical lowercase hyphenated UUID form (the bronze contract) and
/// nothing else: any other spelling would order differently than the text.
pub fn parse_event_id(s: &str) -> Option<EventId> {
    let b = s.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibble = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        out[nibble / 2] |= if nibble.is_multiple_of(2) { v << 4 } else { v };
        nibble += 1;
    }
    Some(out)
}

/// Writes the canonical text of an event id into `out`.
pub fn write_event_id(id: &EventId, out: &mut [u8; 36]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut o = 0;
    for (i, byte) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out[o] = b'-';
            o += 1;
        }
        out[o] = HEX[(byte >> 4) as usize];
        out[o + 1] = HEX[(byte & 0xf) as usize];
        o += 2;
    }
}

/// Formats an event id back into its canonical text.
pub fn format_event_id(id: &EventId) -> String {
    let mut buf = [0u8; 36];
    write_event_id(id, &mut buf);
    // Hex digits and hyphens are ASCII.
    String::from_utf8_lossy(&buf).into_owned()
}

/// The order of events inside an execution: `(occurred_at, event_seq NULLS LAST,
/// event_id)`. Event ids are unique, so the order is total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OrderKey {
    /// `occurred_at`, microseconds since the epoch (UTC).
    pub at: i64,
    /// `event_seq`.
    pub seq: Option<i64>,
    /// `event_id`.
    pub id: EventId,
}

impl Ord for OrderKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.at
            .cmp(&other.at)
            .then_with(|| match (self.seq, other.seq) {
                (Some(a), Some(b)) => a.cmp(&b),
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            })
            .then_with(|| self.id.cmp(&other.id))
    }
}

impl PartialOrd for OrderKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The execution key of an event: its token, or `operation:<id>` without one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecutionKey<'a> {
    /// `execution_token`.
    Token(&'a str),
    /// `operation:<operation_id>`.
    Operation(i64),
}

impl<'a> ExecutionKey<'a> {
    /// The key as stored in the `execution_key` column.
    pub fn to_text(self) -> String {
        match self {
            Self::Token(t) => t.to_owned(),
            Self::Operation(id) => format!("operation:{id}"),
        }
    }

    /// The key text, borrowed for a token, formatted into `buf` for an operation.
    pub fn as_text<'b>(self, buf: &'b mut String) -> &'b str
    where
        'a: 'b,
    {
        match self {
            Self::Token(t) => t,
            Self::Operation(id) => {
                use std::fmt::Write as _;
                buf.clear();
                let _ = write!(buf, "operation:{id}");
                buf
            }
        }
    }

    /// The stable hash of the key text.
    pub fn hash(self) -> KeyHash {
        match self {
            Self::Token(t) => KeyHash::of(t),
            Self::Operation(id) => KeyHash::of(&format!("operation:{id}")),
        }
    }
}

/// The first 128 bits of SHA-256 of an execution key: the key index's name for an
/// execution. Stable across versions and platforms (it is persisted); collisions
/// are negligible (about 10⁻²⁴ for a billion keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyHash(pub [u8; 16]);

impl KeyHash {
    /// Hashes a key text.
    pub fn of(key: &str) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        Self(out)
    }
}

/// A silver partition: `client_id=<id>/date=<UTC date of first_event_at>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    /// `client_id` of the execution's first event.
    pub client_id: i64,
    /// UTC date of `first_event_at`, as days since 1970-01-01.
    pub day: i32,
}

impl PartitionKey {
    /// The partition of an execution whose first event is `first` of `client_id`.
    pub fn of(client_id: i64, first_at: i64) -> Self {
        Self {
            client_id,
            day: day_of(first_at),
        }
    }

    /// The partition's date.
    pub fn date(self) -> NaiveDate {
        date_of_day(self.day)
    }

    /// As the lake's path type.
    pub fn partition(self) -> Partition {
        Partition::client_date(self.client_id, self.date())
    }

    /// From a client and a date.
    pub fn from_date(client_id: i64, date: NaiveDate) -> Self {
        Self {
            client_id,
            day: day_of_date(date),
        }
    }
}

impl fmt::Display for PartitionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.partition().fmt(f)
    }
}

/// The UTC day (days since the epoch) of a microsecond timestamp.
pub fn day_of(micros: i64) -> i32 {
    // Timestamps of ±5.8 million years fit; PostgreSQL's range is far smaller.
    micros.div_euclid(MICROS_PER_DAY) as i32
}

/// Days since the epoch of a date.
pub fn day_of_date(date: NaiveDate) -> i32 {
    use chrono::Datelike;
    date.num_days_from_ce() - UNIX_EPOCH_DAYS_FROM_CE
}

/// The date of a day number.
pub fn date_of_day(day: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(day + UNIX_EPOCH_DAYS_FROM_CE).unwrap_or(NaiveDate::MIN)
}

/// One shard of a sharded run: owns the clients with `client_id mod count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, `0 ≤ index < count`.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// The only shard of an unsharded run.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Whether this shard owns `client_id` (Euclidean modulo: negative ids too).
    pub fn owns(self, client_id: i64) -> bool {
        client_id.rem_euclid(i64::from(self.count.max(1))) == i64::from(self.index)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard-{}-of-{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_order_like_text() {
        let a = "00000000-0000-4000-8000-00000000000a";
        let b = "0000000f-0000-4000-8000-000000000000";
        let c = "f0000000-0000-4000-8000-000000000000";
        let ids: Vec<_> = [a, b, c].map(|s| parse_event_id(s).unwrap()).into();
        assert!(ids[0] < ids[1] && ids[1] < ids[2]);
        for s in [a, b, c] {
            assert_eq!(format_event_id(&parse_event_id(s).unwrap()), s);
        }
        assert_eq!(
            parse_event_id("F0000000-0000-4000-8000-000000000000"),
            None,
            "uppercase is not canonical"
        );
        assert_eq!(parse_event_id("f0000000000040008000000000000000"), None);
        assert_eq!(parse_event_id("f0000000-0000-4000-8000-00000000000g"), None);
    }

    #[test]
    fn order_is_time_then_seq_nulls_last_then_id() {
        let id = |n: u8| {
            let mut x = [0u8; 16];
            x[15] = n;
            x
        };
        let k = |at, seq, n| OrderKey { at, seq, id: id(n) };
        let mut v = vec![
            k(2, None, 1),
            k(1, None, 0),
            k(1, Some(9), 5),
            k(1, Some(3), 7),
            k(1, None, 2),
            k(0, None, 9),
        ];
        v.sort();
        assert_eq!(
            v,
            vec![
                k(0, None, 9),
                k(1, Some(3), 7),
                k(1, Some(9), 5),
                k(1, None, 0),
                k(1, None, 2),
                k(2, None, 1)
            ]
        );
    }

    #[test]
    fn days_and_partitions() {
        let d = NaiveDate::from_ymd_opt(2025, 6, 30).unwrap();
        let day = day_of_date(d);
        assert_eq!(date_of_day(day), d);
        let midnight = i64::from(day) * MICROS_PER_DAY;
        assert_eq!(day_of(midnight), day);
        assert_eq!(day_of(midnight - 1), day - 1);
        assert_eq!(day_of(-1), -1, "before 1970 rounds down");
        assert_eq!(
            PartitionKey::of(7, midnight - 1).to_string(),
            "client_id=7/date=2025-06-29"
        );
    }

    #[test]
    fn shards_split_clients_without_overlap() {
        for client in -10..10 {
            let owners = (0..3)
                .filter(|&i| Shard { index: i, count: 3 }.owns(client))
                .count();
            assert_eq!(owners, 1, "client {client}");
            assert!(Shard::ALL.owns(client));
        }
    }

    #[test]
    fn key_hash_is_stable() {
        assert_eq!(
            ExecutionKey::Operation(42).hash(),
            KeyHash::of("operation:42")
        );
        // A persisted value: changing the hash would orphan every stored index.
        assert_eq!(
            format!("{:02x?}", &KeyHash::of("abc").0[..4]),
            "[ba, 78, 16, bf]"
        );
    }
}
