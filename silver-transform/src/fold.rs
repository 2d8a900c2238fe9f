//! Events → executions, exactly as SPEC §6 says.
//!
//! An [`Acc`] folds the events of one execution *in event order*
//! (`occurred_at, event_seq NULLS LAST, event_id`), so "first", "latest" and
//! "latest non-null" are plain assignments and need no per-field order keys; that
//! keeps an execution at about 350 bytes of memory.
//!
//! Order is established per UTC day: all live bronze files of one day are read, the
//! day's execution events are sorted by [`OrderKey`] and folded ([`fold_day`]).
//! Every event of day *d* precedes every event of day *d + 1*, so the per-day
//! results of one execution combine with [`Acc::absorb_later`] in day order. Days
//! are therefore independent units of work (they fold in parallel) and memory is
//! bounded by one day of bronze plus the executions being recomputed.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::bronze::{Event, EventColumns};
use crate::index::Gap;
use crate::key::{EventId, EventType, KeyHash, OrderKey, PartitionKey, day_of};

/// Which executions to fold.
#[derive(Debug, Clone)]
pub enum KeyFilter {
    /// Every execution.
    All,
    /// Only these execution keys.
    Keys(FxHashSet<KeyHash>),
    /// The executions of one key-hash part: `index` of `of` (a fold too large
    /// for the memory budget runs in such passes, [`crate::memory::Budget::passes`]).
    Part {
        /// This pass's part, `0..of`.
        index: u32,
        /// Parts in all.
        of: u32,
    },
}

impl KeyFilter {
    fn is_all(&self) -> bool {
        matches!(self, Self::All)
    }

    /// Whether the execution of `key` passes.
    fn passes(&self, key: KeyHash) -> bool {
        match self {
            Self::All => true,
            Self::Keys(keys) => keys.contains(&key),
            Self::Part { index, of } => part_of(key, *of) == *index,
        }
    }
}

/// The key-hash part (`0..of`) an execution's key falls in: parts are
/// consecutive ranges of key hashes, so the passes of a fold produce their
/// keys in key order, and the key index's segments (ranges of key hashes
/// too, [`crate::segments`]) are written as the passes end.
pub fn part_of(key: KeyHash, of: u32) -> u32 {
    let head = u64::from_be_bytes([
        key.0[0], key.0[1], key.0[2], key.0[3], key.0[4], key.0[5], key.0[6], key.0[7],
    ]);
    ((u128::from(head) * u128::from(of.max(1))) >> 64) as u32
}

/// Index of a decimal in [`Acc`]'s decimal array.
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Dec {
    /// `stop_price`: latest non-null.
    StopPrice = 0,
    /// `trigger_price`: latest non-null.
    TriggerPrice = 1,
    /// `quantity`: latest non-null.
    Quantity = 2,
    /// `fill_price`: latest non-null of EXECUTED events.
    FillPrice = 3,
    /// `slippage_pct`: latest non-null of EXECUTED events.
    SlippagePct = 4,
}

/// The bronze batches an execution's events came from (usually one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Batches {
    /// All events came from this batch.
    One(u64),
    /// Several batches, ascending, without duplicates (boxed: keeps the enum at
    /// 16 bytes for the common single batch).
    #[allow(clippy::box_collection)]
    Many(Box<Vec<u64>>),
}

impl Batches {
    fn add(&mut self, b: u64) {
        match self {
            Self::One(a) if *a == b => {}
            Self::One(a) => {
                let mut v = vec![*a, b];
                v.sort_unstable();
                *self = Self::Many(Box::new(v));
            }
            Self::Many(v) => {
                if let Err(pos) = v.binary_search(&b) {
                    v.insert(pos, b);
                }
            }
        }
    }

    fn merge(&mut self, other: &Batches) {
        match other {
            Self::One(b) => self.add(*b),
            Self::Many(bs) => bs.iter().for_each(|b| self.add(*b)),
        }
    }

    /// The batches, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        let (one, many) = match self {
            Self::One(b) => (Some(*b), &[][..]),
            Self::Many(v) => (None, v.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }
}

/// A short string kept inline: symbols, sides, sources and exchange order ids
/// fit in 22 bytes, so an execution carries them without a heap allocation each
/// (hundreds of thousands of executions are held at once).
#[derive(Clone, PartialEq, Eq)]
pub enum InlineStr {
    /// Up to 22 bytes, stored in place.
    Inline {
        /// Used bytes.
        len: u8,
        /// UTF-8 bytes.
        buf: [u8; 22],
    },
    /// Longer strings.
    Heap(Box<str>),
}

impl InlineStr {
    /// Copies `s`.
    pub fn new(s: &str) -> Self {
        let b = s.as_bytes();
        if b.len() <= 22 {
            let mut buf = [0u8; 22];
            buf[..b.len()].copy_from_slice(b);
            Self::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            Self::Heap(s.into())
        }
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        match self {
            // The bytes were copied from a `&str`: always valid UTF-8.
            Self::Inline { len, buf } => {
                std::str::from_utf8(&buf[..*len as usize]).unwrap_or_default()
            }
            Self::Heap(s) => s,
        }
    }
}

impl std::fmt::Debug for InlineStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Sentinel of an unset "first event of type" timestamp (outside PostgreSQL's range).
const UNSET: i64 = i64::MIN;

/// The running fold of one execution; its fields are the silver row (SPEC §6).
#[derive(Debug, Clone, PartialEq)]
pub struct Acc {
    /// Order key of the first event: `execution_id`, `first_event_at`.
    pub first: OrderKey,
    /// `operation_id` of the first event.
    pub operation_id: i64,
    /// `client_id` of the first event (the partition's client).
    pub client_id: i64,
    /// Whether the events carry more than one `client_id` (a quality violation).
    pub multi_client: bool,
    /// `symbol` of the first event.
    pub symbol: InlineStr,
    /// `side` of the first event.
    pub side: Option<InlineStr>,
    /// `occurred_at` of the latest event.
    pub last_at: i64,
    /// `event_id` of the latest event.
    pub last_id: EventId,
    /// Type of the latest event (the status).
    pub last_type: EventType,
    /// `source` of the latest event.
    pub source: InlineStr,
    /// `occurred_at` of the first event of each type ([`UNSET`] if none).
    type_first_at: [i64; 5],
    /// Latest non-null decimals, indexed by [`Dec`]; `decimals_set` bit *i* says
    /// whether `decimals[i]` holds a value.
    decimals: [i128; 5],
    decimals_set: u8,
    /// Latest non-null `exchange_order_id` of EXECUTED events.
    pub exchange_order_id: Option<InlineStr>,
    /// Latest non-null `error_message`.
    pub error_message: Option<Box<str>>,
    /// Max `retry_count`.
    pub retry_count: i32,
    /// Number of events.
    pub event_count: u64,
    /// Bronze batches of the events (lineage).
    pub batches: Batches,
    /// The longest run of days without events between the first and the
    /// latest event (for the key index: the days a later fold must read).
    pub gap: Gap,
}

impl Acc {
    /// Starts an execution with its first event.
    pub fn start(ev: &Event<'_>) -> Self {
        let mut acc = Self {
            first: ev.order,
            operation_id: ev.operation_id,
            client_id: ev.client_id,
            multi_client: false,
            symbol: InlineStr::new(ev.symbol),
            side: ev.side.map(InlineStr::new),
            last_at: ev.order.at,
            last_id: ev.order.id,
            last_type: ev.ty,
            source: InlineStr::new(ev.source),
            type_first_at: [UNSET; 5],
            decimals: [0; 5],
            decimals_set: 0,
            exchange_order_id: None,
            error_message: None,
            retry_count: ev.retry_count,
            event_count: 0,
            batches: Batches::One(ev.batch),
            gap: Gap::NONE,
        };
        acc.absorb(ev);
        acc
    }

    /// Adds the next event; it must come after every event absorbed so far.
    pub fn absorb(&mut self, ev: &Event<'_>) {
        debug_assert!(self.event_count == 0 || ev.order > self.first);
        self.gap
            .keep_longer(Gap::between(day_of(self.last_at), day_of(ev.order.at)));
        self.last_at = ev.order.at;
        self.last_id = ev.order.id;
        self.last_type = ev.ty;
        if self.source.as_str() != ev.source {
            self.source = InlineStr::new(ev.source);
        }
        let t = ev.ty as usize;
        if self.type_first_at[t] == UNSET {
            self.type_first_at[t] = ev.order.at;
        }
        self.set_dec(Dec::StopPrice, ev.stop_price);
        self.set_dec(Dec::TriggerPrice, ev.trigger_price);
        self.set_dec(Dec::Quantity, ev.quantity);
        if ev.ty == EventType::Executed {
            self.set_dec(Dec::FillPrice, ev.fill_price);
            self.set_dec(Dec::SlippagePct, ev.slippage_pct);
            if let Some(id) = ev.exchange_order_id {
                self.exchange_order_id = Some(InlineStr::new(id));
            }
        }
        if let Some(msg) = ev.error_message {
            self.error_message = Some(msg.into());
        }
        self.retry_count = self.retry_count.max(ev.retry_count);
        self.event_count += 1;
        self.multi_client |= ev.client_id != self.client_id;
        self.batches.add(ev.batch);
    }

    /// Merges the fold of the same execution's *later* events (all of `later`'s
    /// events come after all of `self`'s, e.g. the next UTC day's).
    pub fn absorb_later(&mut self, later: Acc) {
        debug_assert!(later.first > self.first);
        self.gap
            .keep_longer(Gap::between(self.last_day(), day_of(later.first.at)));
        self.gap.keep_longer(later.gap);
        self.last_at = later.last_at;
        self.last_id = later.last_id;
        self.last_type = later.last_type;
        self.source = later.source;
        for (mine, theirs) in self.type_first_at.iter_mut().zip(later.type_first_at) {
            if *mine == UNSET {
                *mine = theirs;
            }
        }
        for i in 0..5 {
            if later.decimals_set & (1 << i) != 0 {
                self.decimals[i] = later.decimals[i];
                self.decimals_set |= 1 << i;
            }
        }
        if later.exchange_order_id.is_some() {
            self.exchange_order_id = later.exchange_order_id;
        }
        if later.error_message.is_some() {
            self.error_message = later.error_message;
        }
        self.retry_count = self.retry_count.max(later.retry_count);
        self.event_count += later.event_count;
        self.multi_client |= later.multi_client || later.client_id != self.client_id;
        self.batches.merge(&later.batches);
    }

    fn set_dec(&mut self, d: Dec, v: Option<i128>) {
        if let Some(v) = v {
            self.decimals[d as usize] = v;
            self.decimals_set |= 1 << d as usize;
        }
    }

    /// A decimal field as an integer at its scale (8, or 4 for `slippage_pct`).
    pub fn dec(&self, d: Dec) -> Option<i128> {
        (self.decimals_set & (1 << d as usize) != 0).then(|| self.decimals[d as usize])
    }

    /// `occurred_at` of the first event of type `t`.
    pub fn first_at(&self, t: EventType) -> Option<i64> {
        let v = self.type_first_at[t as usize];
        (v != UNSET).then_some(v)
    }

    /// `status`, from the latest event.
    pub fn status(&self) -> &'static str {
        self.last_type.status()
    }

    /// The execution's silver partition.
    pub fn partition(&self) -> PartitionKey {
        PartitionKey::of(self.client_id, self.first.at)
    }

    /// UTC day of the latest event.
    pub fn last_day(&self) -> i32 {
        day_of(self.last_at)
    }
}

/// Executions by key text. The folds live in chunks of [`CHUNK`] found
/// through a table of indexes: few large allocations instead of hundreds of
/// thousands of small long-lived ones (which fragment the heap), a table of
/// 24-byte entries, and growth without reallocating: one vector of all folds
/// would double its capacity and copy itself as it grows, briefly holding
/// the folds up to three times over (a run's peak memory).
#[derive(Debug, Default)]
pub struct Folded {
    slots: FxHashMap<Box<str>, u32>,
    chunks: Vec<Vec<Acc>>,
    len: usize,
}

/// Folds per chunk of [`Folded`] (about 1.5 MB).
const CHUNK: usize = 4096;

impl Folded {
    /// Number of executions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn at(&self, i: u32) -> &Acc {
        let i = i as usize;
        &self.chunks[i / CHUNK][i % CHUNK]
    }

    /// The fold of `key`.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Acc> {
        let i = *self.slots.get(key)? as usize;
        self.chunks.get_mut(i / CHUNK)?.get_mut(i % CHUNK)
    }

    /// Adds the fold of a key that is not present yet.
    pub fn insert_new(&mut self, key: Box<str>, acc: Acc) {
        debug_assert!(!self.slots.contains_key(&key));
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            // Grows by doubling up to CHUNK (a power of two), so a small
            // fold (a window, a frozen partition's) stays small.
            self.chunks.push(Vec::new());
        }
        if let Some(chunk) = self.chunks.last_mut() {
            chunk.push(acc);
        }
        self.slots.insert(key, self.len as u32);
        self.len += 1;
    }

    /// Every execution with its key text.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Acc)> {
        self.slots.iter().map(|(k, i)| (&**k, self.at(*i)))
    }

    /// Every execution.
    pub fn values(&self) -> impl Iterator<Item = &Acc> {
        self.chunks.iter().flatten()
    }

    /// Adds executions of other keys (a later fold round).
    pub fn extend(&mut self, other: Folded) {
        self.slots.reserve(other.len());
        for (key, acc) in other.into_entries() {
            self.insert_new(key, acc);
        }
    }

    /// These executions split in two: those whose key `take` names, and the rest.
    pub fn split(self, mut take: impl FnMut(&str) -> bool) -> (Self, Self) {
        let (mut taken, mut rest) = (Folded::default(), Folded::default());
        for (key, acc) in self.into_entries() {
            if take(&key) {
                taken.insert_new(key, acc);
            } else {
                rest.insert_new(key, acc);
            }
        }
        (taken, rest)
    }

    /// Consumes the executions with their keys (each chunk is freed once
    /// consumed).
    pub fn into_entries(self) -> impl Iterator<Item = (Box<str>, Acc)> {
        let mut keys: Vec<Option<Box<str>>> = (0..self.len).map(|_| None).collect();
        for (k, i) in self.slots {
            keys[i as usize] = Some(k);
        }
        keys.into_iter()
            .zip(self.chunks.into_iter().flatten())
            .filter_map(|(k, a)| k.map(|k| (k, a)))
    }
}

/// Errors of folding.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FoldError {
    /// A bronze value breaks the contract (e.g. a non-canonical event id).
    #[error("{0}")]
    Contract(String),
    /// The batch was read without the fold columns.
    #[error("bronze events were read without the columns the fold needs")]
    Projection,
}

/// One day's fold.
#[derive(Debug, Default)]
pub struct Day {
    /// The day's partial executions.
    pub folded: Folded,
    /// Events folded.
    pub events: u64,
    /// Events present more than once, identical (the same event in two bronze
    /// files: a lake written before bronze dropped rows a table rewrite
    /// re-inserted); each is folded once.
    pub duplicates: u64,
    /// The ids of the events folded: the windows of one day check with them
    /// that no event is in two windows (two versions with different
    /// `occurred_at`), as [`fold_day`] checks within one.
    pub ids: Vec<EventId>,
}

/// Folds all execution events of one UTC day (all live files of the day, in any
/// order) that pass `filter`. An event present twice with the same order key is
/// folded once; an `event_id` present twice with *different* order keys (its
/// `occurred_at` or `event_seq` changed) is an error that names it.
pub fn fold_day(columns: &[EventColumns], filter: &KeyFilter) -> Result<Day, FoldError> {
    let mut rows: Vec<(OrderKey, u32, u32, EventType)> = Vec::new();
    // Whether a key passes the filter, hashed once per key rather than per event.
    let mut passes: FxHashMap<crate::key::ExecutionKey<'_>, bool> = FxHashMap::default();
    for (b, cols) in columns.iter().enumerate() {
        for i in 0..cols.len() {
            let Some(ty) = cols.event_type(i) else {
                continue;
            };
            if !filter.is_all() {
                let key = cols.key(i);
                let pass = *passes
                    .entry(key)
                    .or_insert_with(|| filter.passes(key.hash()));
                if !pass {
                    continue;
                }
            }
            let order = cols.order(i).map_err(FoldError::Contract)?;
            rows.push((order, b as u32, i as u32, ty));
        }
    }
    rows.sort_unstable_by_key(|a| a.0);
    let before = rows.len();
    rows.dedup_by_key(|a| a.0);
    let duplicates = (before - rows.len()) as u64;
    check_unique_ids(&rows)?;
    let mut out = Folded::default();
    let mut op_key = String::new();
    for &(order, b, i, ty) in &rows {
        let cols = &columns[b as usize];
        let i = i as usize;
        let ev = cols.event(i, order, ty).ok_or(FoldError::Projection)?;
        let key = cols.key(i).as_text(&mut op_key);
        match out.get_mut(key) {
            Some(acc) => acc.absorb(&ev),
            None => out.insert_new(key.into(), Acc::start(&ev)),
        }
    }
    debug_assert!(filter.is_all() || out.len() <= rows.len());
    Ok(Day {
        folded: out,
        events: rows.len() as u64,
        duplicates,
        ids: rows.iter().map(|r| r.0.id).collect(),
    })
}

/// Fails if one `event_id` appears under two order keys (after exact duplicates
/// were removed): bronze then holds two different versions of one event.
fn check_unique_ids(rows: &[(OrderKey, u32, u32, EventType)]) -> Result<(), FoldError> {
    let mut ids: Vec<&EventId> = rows.iter().map(|r| &r.0.id).collect();
    ids.sort_unstable();
    match ids.windows(2).find(|w| w[0] == w[1]) {
        None => Ok(()),
        Some(w) => Err(two_versions(w[0])),
    }
}

/// The error for an event that bronze holds in two versions.
pub fn two_versions(id: &EventId) -> FoldError {
    let mut buf = [0u8; 36];
    crate::key::write_event_id(id, &mut buf);
    FoldError::Contract(format!(
        "event {} is in bronze twice with different occurred_at or event_seq: \
         bronze holds two versions of one event; re-export its day with \
         `bronze-ingest --date`",
        String::from_utf8_lossy(&buf)
    ))
}

/// Adds one day's partial executions to the running result; `day` must be later
/// than every day already in `total`.
pub fn combine(total: &mut Folded, day: Folded) {
    if total.is_empty() {
        *total = day;
        return;
    }
    total.slots.reserve(day.len());
    for (key, acc) in day.into_entries() {
        match total.get_mut(&key) {
            Some(earlier) => earlier.absorb_later(acc),
            None => total.insert_new(key, acc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_event_id;

    fn id(n: u8) -> EventId {
        parse_event_id(&format!("00000000-0000-4000-8000-0000000000{n:02x}")).unwrap()
    }

    fn ev(at: i64, seq: Option<i64>, n: u8, ty: EventType) -> Event<'static> {
        Event {
            order: OrderKey { at, seq, id: id(n) },
            ty,
            operation_id: 7,
            client_id: 1,
            symbol: "BTCUSDC",
            side: Some("SELL"),
            trigger_price: None,
            stop_price: None,
            quantity: None,
            exchange_order_id: None,
            fill_price: None,
            slippage_pct: None,
            source: "ws",
            error_message: None,
            retry_count: 0,
            batch: 1,
        }
    }

    fn fold_in_order(events: &[Event<'_>]) -> Acc {
        let mut acc = Acc::start(&events[0]);
        events[1..].iter().for_each(|e| acc.absorb(e));
        acc
    }

    #[test]
    fn latest_values_and_first_timestamps() {
        let mut e1 = ev(10, None, 1, EventType::StopTriggered);
        e1.stop_price = Some(100);
        e1.quantity = Some(5);
        e1.error_message = Some("first");
        let mut e2 = ev(20, None, 2, EventType::Failed);
        e2.fill_price = Some(1); // not EXECUTED: ignored
        e2.error_message = Some("boom");
        e2.retry_count = 3;
        e2.source = "cron";
        let mut e3 = ev(30, None, 3, EventType::Executed);
        e3.fill_price = Some(99);
        e3.slippage_pct = Some(-12);
        e3.exchange_order_id = Some("X1");
        e3.stop_price = Some(101);
        e3.batch = 4;
        e3.client_id = 2;
        let acc = fold_in_order(&[e1, e2, e3]);
        assert_eq!(acc.status(), "EXECUTED");
        assert_eq!(acc.first_at(EventType::StopTriggered), Some(10));
        assert_eq!(acc.first_at(EventType::Failed), Some(20));
        assert_eq!(acc.first_at(EventType::Executed), Some(30));
        assert_eq!(acc.first_at(EventType::Blocked), None);
        assert_eq!(acc.dec(Dec::StopPrice), Some(101));
        assert_eq!(acc.dec(Dec::Quantity), Some(5));
        assert_eq!(acc.dec(Dec::TriggerPrice), None);
        assert_eq!(acc.dec(Dec::FillPrice), Some(99));
        assert_eq!(acc.dec(Dec::SlippagePct), Some(-12));
        assert_eq!(acc.error_message.as_deref(), Some("boom"));
        assert_eq!(acc.source.as_str(), "ws");
        assert_eq!(acc.retry_count, 3);
        assert_eq!(acc.event_count, 3);
        assert!(acc.multi_client);
        assert_eq!(acc.client_id, 1);
        assert_eq!(acc.batches, Batches::Many(Box::new(vec![1, 4])));
    }

    #[test]
    fn the_longest_run_of_days_without_events_whatever_the_cut() {
        const DAY: i64 = 86_400_000_000;
        // Events on days 0, 1, 5, 6 and 40: gaps 2..=4 and 7..=39.
        let events: Vec<Event<'_>> = [0, 1, 5, 6, 40]
            .iter()
            .enumerate()
            .map(|(n, d)| ev(d * DAY + 7, None, n as u8 + 1, EventType::StopTriggered))
            .collect();
        let whole = fold_in_order(&events);
        assert_eq!(whole.gap, Gap { from: 7, len: 33 });
        for cut in 1..events.len() {
            let mut left = fold_in_order(&events[..cut]);
            left.absorb_later(fold_in_order(&events[cut..]));
            assert_eq!(left.gap, whole.gap, "cut at {cut}");
        }
        assert_eq!(fold_in_order(&events[..2]).gap, Gap::NONE);
    }

    #[test]
    fn inline_strings() {
        for s in [
            "",
            "BTCUSDC",
            "exactly-twenty-two-by",
            "twenty-three bytes long",
            "ünï",
        ] {
            assert_eq!(InlineStr::new(s).as_str(), s);
        }
        assert!(matches!(
            InlineStr::new("BTCUSDC"),
            InlineStr::Inline { .. }
        ));
        assert_eq!(std::mem::size_of::<Option<InlineStr>>(), 24);
    }

    #[test]
    fn split_folds_combine_like_one_fold() {
        let mut events = vec![
            ev(10, Some(1), 1, EventType::StopTriggered),
            ev(20, None, 2, EventType::ExecutionSubmitted),
            ev(30, None, 3, EventType::Failed),
            ev(40, None, 4, EventType::Executed),
        ];
        events[1].trigger_price = Some(3);
        events[2].error_message = Some("late");
        events[3].fill_price = Some(8);
        events[3].source = "manual";
        events[3].batch = 2;
        let whole = fold_in_order(&events);
        for cut in 1..events.len() {
            let mut left = fold_in_order(&events[..cut]);
            left.absorb_later(fold_in_order(&events[cut..]));
            assert_eq!(left, whole, "cut at {cut}");
        }
    }
}
