//! The demo rows as a pure function of `(seed, row index)`.
//!
//! Keeping the generator a pure function is what makes the data reproducible
//! (same seed, same bytes, in any database) and appendable (row `i` does not
//! depend on how many rows a call generates). Randomness comes from a SplitMix64
//! hash of `(seed, key, salt)`; floating-point work is limited to `+ - * / sqrt`
//! and rounding, which IEEE 754 makes identical on every platform.
//!
//! Row indexes come in blocks of 12; a hash of the block picks one of
//! [`PATTERNS`], which cuts the block into executions of 1–4 consecutive indexes.
//! An execution is identified by `gid`, the index of its first row: attributes
//! shared by its events (client, symbol, side, prices, token, lifecycle, start
//! time) are hashed from `gid`, per-event ones (id, `event_seq`, jitter) from the
//! row index.

use std::fmt::Write as _;

/// How blocks of 12 row indexes are cut into executions (sizes 1–4; 1 = alert).
pub(crate) const PATTERNS: [&[u8]; 12] = [
    &[3, 3, 3, 3],
    &[3, 3, 2, 4],
    &[4, 3, 3, 2],
    &[2, 3, 3, 3, 1],
    &[3, 4, 3, 2],
    &[3, 3, 3, 2, 1],
    &[4, 4, 3, 1],
    &[3, 2, 3, 4],
    &[2, 2, 3, 3, 2],
    &[3, 3, 4, 2],
    &[1, 3, 3, 3, 2],
    &[3, 4, 4, 1],
];
/// Rows per block; every pattern sums to this.
pub(crate) const BLOCK: u64 = 12;

/// Symbols with a typical price in USDC (PEPE and SHIB exercise all 8 decimals).
const SYMBOLS: [(&str, f64); 25] = [
    ("BTCUSDC", 64_250.5),
    ("ETHUSDC", 3_120.75),
    ("SOLUSDC", 148.32),
    ("BNBUSDC", 585.4),
    ("XRPUSDC", 0.5231),
    ("ADAUSDC", 0.4412),
    ("DOGEUSDC", 0.1287),
    ("AVAXUSDC", 27.85),
    ("LINKUSDC", 14.62),
    ("DOTUSDC", 6.21),
    ("LTCUSDC", 71.9),
    ("TRXUSDC", 0.1243),
    ("NEARUSDC", 5.12),
    ("ATOMUSDC", 7.35),
    ("UNIUSDC", 9.88),
    ("APTUSDC", 7.02),
    ("ARBUSDC", 0.7843),
    ("OPUSDC", 1.63),
    ("SUIUSDC", 1.08),
    ("INJUSDC", 21.4),
    ("FILUSDC", 4.37),
    ("AAVEUSDC", 97.6),
    ("PEPEUSDC", 0.000_012_45),
    ("SHIBUSDC", 0.000_017_52),
    ("ETCUSDC", 22.9),
];

/// Number of distinct clients (ids `1..=CLIENTS`).
pub(crate) const CLIENTS: u64 = 20;

/// Event types, with the outbox event type and whether it is a stand-alone alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventType {
    StopTriggered,
    ExecutionSubmitted,
    Executed,
    Failed,
    Blocked,
    StalePrice,
    KillSwitch,
    SlippageBreach,
    CircuitBreaker,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::StopTriggered => "STOP_TRIGGERED",
            Self::ExecutionSubmitted => "EXECUTION_SUBMITTED",
            Self::Executed => "EXECUTED",
            Self::Failed => "FAILED",
            Self::Blocked => "BLOCKED",
            Self::StalePrice => "STALE_PRICE",
            Self::KillSwitch => "KILL_SWITCH",
            Self::SlippageBreach => "SLIPPAGE_BREACH",
            Self::CircuitBreaker => "CIRCUIT_BREAKER",
        }
    }

    fn outbox_type(self) -> &'static str {
        match self {
            Self::StopTriggered => "stop.stop_triggered",
            Self::ExecutionSubmitted => "stop.execution_submitted",
            Self::Executed => "stop.executed",
            Self::Failed => "stop.failed",
            Self::Blocked => "stop.blocked",
            Self::StalePrice => "stop.stale_price",
            Self::KillSwitch => "stop.kill_switch",
            Self::SlippageBreach => "stop.slippage_breach",
            Self::CircuitBreaker => "stop.circuit_breaker",
        }
    }

    fn is_alert(self) -> bool {
        matches!(
            self,
            Self::StalePrice | Self::KillSwitch | Self::SlippageBreach | Self::CircuitBreaker
        )
    }
}

use EventType::*;

/// The lifecycles an execution can follow; index = variant.
const LIFECYCLES: [&[EventType]; 11] = [
    &[StalePrice],
    &[SlippageBreach],
    &[CircuitBreaker],
    &[KillSwitch],
    &[StopTriggered, Blocked],
    &[StopTriggered, Failed],
    &[StopTriggered, ExecutionSubmitted, Executed],
    &[StopTriggered, ExecutionSubmitted, Failed],
    &[
        StopTriggered,
        ExecutionSubmitted,
        ExecutionSubmitted,
        Executed,
    ],
    &[
        StopTriggered,
        ExecutionSubmitted,
        ExecutionSubmitted,
        Failed,
    ],
    &[StopTriggered, ExecutionSubmitted, Executed, SlippageBreach],
];

/// Exchange errors of FAILED events: (code, message, retryable).
const FAILURES: [(i32, &str, bool); 6] = [
    (
        -2010,
        "Binance API error -2010: Account has insufficient balance for requested action.",
        false,
    ),
    (
        -1013,
        "Binance API error -1013: Filter failure: LOT_SIZE",
        false,
    ),
    (
        -1021,
        "Binance API error -1021: Timestamp for this request was 1000ms ahead of the server's time.",
        true,
    ),
    (
        -2019,
        "Binance API error -2019: Margin is insufficient.",
        false,
    ),
    (
        -1001,
        "Binance API error -1001: Internal error; unable to process your request. Please try again.",
        true,
    ),
    (
        0,
        "Timed out after 10s waiting for the order acknowledgement",
        true,
    ),
];

/// Reasons of BLOCKED events.
const BLOCK_REASONS: [&str; 4] = [
    "Kill switch is active for this client",
    "Circuit breaker is open for this symbol",
    "Stale price: last tick older than 15s",
    "Daily loss limit reached",
];

/// Fixed-point decimal: `units / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decimal {
    pub(crate) units: i64,
    pub(crate) scale: u8,
}

impl Decimal {
    /// Rounds `value` to `scale` decimals (half away from zero).
    fn round(value: f64, scale: u8) -> Self {
        let factor = 10f64.powi(i32::from(scale));
        Self {
            units: (value * factor).round() as i64,
            scale,
        }
    }

    fn to_f64(self) -> f64 {
        self.units as f64 / 10f64.powi(i32::from(self.scale))
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let factor = 10u64.pow(u32::from(self.scale));
        let abs = self.units.unsigned_abs();
        let sign = if self.units < 0 { "-" } else { "" };
        write!(
            f,
            "{sign}{}.{:0width$}",
            abs / factor,
            abs % factor,
            width = usize::from(self.scale)
        )
    }
}

/// One `stop_events` row. Times are microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Event {
    pub(crate) index: u64,
    pub(crate) event_id: uuid::Uuid,
    pub(crate) event_seq: Option<i64>,
    pub(crate) occurred_at_us: i64,
    pub(crate) operation_id: i64,
    pub(crate) client_id: i64,
    pub(crate) symbol: &'static str,
    pub(crate) event_type: EventType,
    pub(crate) trigger_price: Option<Decimal>,
    pub(crate) stop_price: Option<Decimal>,
    pub(crate) quantity: Option<Decimal>,
    pub(crate) side: Option<&'static str>,
    pub(crate) execution_token: Option<String>,
    pub(crate) payload_json: String,
    pub(crate) request_payload_hash: Option<String>,
    pub(crate) exchange_order_id: Option<String>,
    pub(crate) fill_price: Option<Decimal>,
    pub(crate) slippage_pct: Option<Decimal>,
    pub(crate) source: &'static str,
    pub(crate) error_message: Option<String>,
    pub(crate) retry_count: i32,
}

/// One `outbox` row. Times are microseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Outbox {
    pub(crate) outbox_id: uuid::Uuid,
    pub(crate) aggregate_type: &'static str,
    pub(crate) aggregate_id: i64,
    pub(crate) event_type: &'static str,
    pub(crate) correlation_id: String,
    pub(crate) event_id: uuid::Uuid,
    pub(crate) routing_key: String,
    pub(crate) exchange: &'static str,
    pub(crate) payload: String,
    pub(crate) published: bool,
    pub(crate) published_at_us: Option<i64>,
    pub(crate) retry_count: i32,
    pub(crate) last_error: Option<&'static str>,
    pub(crate) created_at_us: i64,
}

/// Salts: one per independent random quantity.
mod salt {
    pub(super) const PATTERN: u64 = 1;
    pub(super) const CLIENT: u64 = 2;
    pub(super) const SYMBOL: u64 = 3;
    pub(super) const SIDE: u64 = 4;
    pub(super) const SOURCE: u64 = 5;
    pub(super) const TOKEN_NULL: u64 = 6;
    pub(super) const VARIANT: u64 = 7;
    pub(super) const PRICE: u64 = 8;
    pub(super) const TRIGGER: u64 = 9;
    pub(super) const NOTIONAL: u64 = 10;
    pub(super) const SLIP: [u64; 3] = [11, 12, 13];
    pub(super) const SLIP_TAIL: u64 = 14;
    pub(super) const ERROR: u64 = 15;
    pub(super) const START: u64 = 16;
    pub(super) const ORDER: u64 = 17;
    pub(super) const TOKEN: [u64; 2] = [18, 19];
    pub(super) const SEQ_NULL: u64 = 20;
    pub(super) const JITTER: u64 = 21;
    pub(super) const TICK: u64 = 22;
    pub(super) const EVENT_ID: [u64; 2] = [23, 24];
    pub(super) const REQUEST_HASH: [u64; 4] = [25, 26, 27, 28];
    pub(super) const OUTBOX_KEEP: u64 = 30;
    pub(super) const OUTBOX_ID: [u64; 2] = [31, 32];
    pub(super) const CORRELATION: [u64; 2] = [33, 34];
    pub(super) const OUTBOX_LATENCY: u64 = 35;
    pub(super) const OUTBOX_PUBLISHED: u64 = 36;
    pub(super) const OUTBOX_DELAY: u64 = 37;
    pub(super) const OUTBOX_RETRY: u64 = 38;
}

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: a bijective, well-mixing 64-bit hash.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Generates rows for one seed and time window.
#[derive(Debug, Clone)]
pub(crate) struct Generator {
    seed: u64,
    window_end_us: i64,
    window_us: i64,
}

/// Attributes shared by all events of one execution.
struct Execution {
    gid: u64,
    variant: usize,
    client_id: i64,
    symbol: &'static str,
    side: &'static str,
    source: &'static str,
    token: Option<String>,
    start_us: i64,
    stop_price: Decimal,
    trigger_price: Decimal,
    quantity: Decimal,
    fill_price: Decimal,
    slippage_pct: Decimal,
    order_id: String,
    u_error: f64,
}

impl Generator {
    /// A generator for `seed` whose events fall in the `window_us` microseconds
    /// before `window_end_us` (minus 2-minute margins).
    pub(crate) fn new(seed: u64, window_end_us: i64, window_us: i64) -> Self {
        Self {
            seed: mix(seed ^ GOLDEN),
            window_end_us,
            window_us,
        }
    }

    fn hash(&self, key: u64, salt: u64) -> u64 {
        mix(mix(key ^ self.seed).wrapping_add(salt.wrapping_mul(GOLDEN)))
    }

    /// Uniform in [0, 1).
    fn unit(&self, key: u64, salt: u64) -> f64 {
        (self.hash(key, salt) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn hex(&self, key: u64, salts: &[u64]) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(16 * salts.len());
        for &s in salts {
            let h = self.hash(key, s);
            for shift in (0..16).rev() {
                out.push(char::from(DIGITS[((h >> (shift * 4)) & 0xf) as usize]));
            }
        }
        out
    }

    fn uuid(&self, key: u64, salts: [u64; 2]) -> uuid::Uuid {
        let bytes = (u128::from(self.hash(key, salts[0])) << 64
            | u128::from(self.hash(key, salts[1])))
        .to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    /// Position of row `index` in its execution, and the execution's size.
    fn position(&self, index: u64) -> (u64, u8) {
        let pattern =
            PATTERNS[(self.hash(index / BLOCK, salt::PATTERN) % PATTERNS.len() as u64) as usize];
        let mut slot = index % BLOCK;
        for &size in pattern {
            if slot < u64::from(size) {
                return (slot, size);
            }
            slot -= u64::from(size);
        }
        unreachable!("patterns sum to BLOCK")
    }

    fn execution(&self, gid: u64, size: u8) -> Execution {
        let u = |salt| self.unit(gid, salt);
        let variant = {
            let v = u(salt::VARIANT);
            match size {
                1 => [0.45, 0.70, 0.90].iter().filter(|&&t| v >= t).count(),
                2 => 4 + usize::from(v >= 0.85),
                3 => 6 + usize::from(v >= 0.88),
                _ => 8 + [0.65, 0.88].iter().filter(|&&t| v >= t).count(),
            }
        };
        // Skewed towards low client ids and the first symbols, as real activity is.
        let uc = u(salt::CLIENT);
        let client_id = 1 + (CLIENTS as f64 * uc * uc.sqrt()) as i64;
        let us = u(salt::SYMBOL);
        let (symbol, base_price) = SYMBOLS[(SYMBOLS.len() as f64 * us * us) as usize];
        let sell = u(salt::SIDE) < 0.72;
        let side = if sell { "SELL" } else { "BUY" };
        let source = match u(salt::SOURCE) {
            x if x < 0.80 => "ws",
            x if x < 0.95 => "cron",
            _ => "manual",
        };
        let token = (size > 1 && u(salt::TOKEN_NULL) >= 0.03).then(|| self.hex(gid, &salt::TOKEN));
        let margin = 120_000_000_i64;
        let start_us = self.window_end_us
            - margin
            - (u(salt::START) * (self.window_us - 2 * margin) as f64).round() as i64;

        let price = base_price * (0.8 + 0.4 * u(salt::PRICE));
        let cross = 0.0025 * u(salt::TRIGGER);
        let trigger = price * if sell { 1.0 - cross } else { 1.0 + cross };
        let un = u(salt::NOTIONAL);
        let notional = 20.0 + 4980.0 * un * un;
        // Slippage in percent, negative = adverse for a SELL, positive for a BUY.
        let adverse = if sell { -1.0 } else { 1.0 };
        let slippage = if variant == 1 || variant == 10 {
            (2.5 + 5.5 * u(salt::SLIP[0])) * adverse
        } else {
            let tail = if u(salt::SLIP_TAIL) < 0.01 { 3.0 } else { 1.0 };
            (u(salt::SLIP[0]) + u(salt::SLIP[1]) + u(salt::SLIP[2]) - 1.5) * 1.2 * tail
        };
        let trigger_price = Decimal::round(trigger, 8);
        Execution {
            gid,
            variant,
            client_id,
            symbol,
            side,
            source,
            token,
            start_us,
            stop_price: Decimal::round(price, 8),
            trigger_price,
            quantity: Decimal::round(notional / price, 8),
            fill_price: Decimal::round(trigger_price.to_f64() * (1.0 + slippage / 100.0), 8),
            slippage_pct: Decimal::round(slippage, 4),
            order_id: (10_000_000_000 + self.hash(gid, salt::ORDER) % 89_999_999_999).to_string(),
            u_error: u(salt::ERROR),
        }
    }

    /// The `stop_events` row with index `index`.
    pub(crate) fn event(&self, index: u64) -> Event {
        self.event_with(index, true)
    }

    /// The row, with an empty `payload_json` unless `with_payload` (the outbox
    /// pass does not need it).
    pub(crate) fn event_with(&self, index: u64, with_payload: bool) -> Event {
        let (pos, size) = self.position(index);
        let x = self.execution(index - pos, size);
        let event_type = LIFECYCLES[x.variant][pos as usize];
        let alert_without_prices = matches!(event_type, KillSwitch | CircuitBreaker);
        let has_fill = matches!(event_type, Executed | SlippageBreach);
        let retry_count = i32::from((x.variant == 8 || x.variant == 9) && pos >= 2);
        let failure = FAILURES[(x.u_error * FAILURES.len() as f64) as usize];
        let error_message = match event_type {
            Failed => Some(failure.1.to_owned()),
            Blocked => {
                Some(BLOCK_REASONS[(x.u_error * BLOCK_REASONS.len() as f64) as usize].to_owned())
            }
            CircuitBreaker => Some(format!(
                "Circuit breaker opened after {} consecutive exchange errors within 60s",
                3 + (x.u_error * 5.0) as u32
            )),
            KillSwitch => Some("Kill switch engaged by operator".to_owned()),
            _ => None,
        };
        let tick_age_ms = if event_type == StalePrice {
            15_000 + (self.unit(index, salt::TICK) * 60_000.0) as u32
        } else {
            (self.unit(index, salt::TICK) * 400.0) as u32
        };
        let occurred_at_us = x.start_us
            + (pos as f64 * 1_500_000.0 + self.unit(index, salt::JITTER) * 1_000_000.0).round()
                as i64;

        let mut event = Event {
            index,
            event_id: self.uuid(index, salt::EVENT_ID),
            event_seq: (self.unit(index, salt::SEQ_NULL) >= 0.10).then_some(index as i64 + 1),
            occurred_at_us,
            operation_id: x.gid as i64 + 1,
            client_id: x.client_id,
            symbol: x.symbol,
            event_type,
            trigger_price: (!alert_without_prices).then_some(x.trigger_price),
            stop_price: (!alert_without_prices).then_some(x.stop_price),
            quantity: (!alert_without_prices && event_type != StalePrice).then_some(x.quantity),
            side: (!alert_without_prices).then_some(x.side),
            execution_token: x.token.clone(),
            payload_json: String::new(),
            request_payload_hash: (event_type == ExecutionSubmitted)
                .then(|| self.hex(index, &salt::REQUEST_HASH)),
            exchange_order_id: has_fill.then(|| x.order_id.clone()),
            fill_price: has_fill.then_some(x.fill_price),
            slippage_pct: has_fill.then_some(x.slippage_pct),
            source: x.source,
            error_message,
            retry_count,
        };
        if with_payload {
            event.payload_json = payload(&event, &x, tick_age_ms, failure);
        }
        event
    }

    /// The `outbox` row of `event`, or `None` for the ~8 % already cleaned up.
    pub(crate) fn outbox(&self, event: &Event) -> Option<Outbox> {
        let i = event.index;
        if self.unit(i, salt::OUTBOX_KEEP) < 0.08 {
            return None;
        }
        let created_at_us =
            event.occurred_at_us + 1_000 + (self.unit(i, salt::OUTBOX_LATENCY) * 40_000.0) as i64;
        let published = self.unit(i, salt::OUTBOX_PUBLISHED) >= 0.03;
        let delay = self.unit(i, salt::OUTBOX_DELAY);
        let retried = self.unit(i, salt::OUTBOX_RETRY) < 0.02;
        let event_type = event.event_type;
        let mut payload = String::with_capacity(256);
        let _ = write!(
            payload,
            r#"{{"schema":"robson.stop_event/1","event_id":"{}","event_type":"{}","occurred_at":"{}","client_id":{},"symbol":"{}","execution_token":{}}}"#,
            event.event_id,
            event_type.as_str(),
            rfc3339(event.occurred_at_us),
            event.client_id,
            event.symbol,
            json_opt_str(event.execution_token.as_deref()),
        );
        Some(Outbox {
            outbox_id: self.uuid(i, salt::OUTBOX_ID),
            aggregate_type: "stop_execution",
            aggregate_id: event.operation_id,
            event_type: event_type.outbox_type(),
            correlation_id: format!("corr-{}", self.hex(i, &salt::CORRELATION)),
            event_id: event.event_id,
            routing_key: format!("{}.{}", event_type.outbox_type(), event.client_id),
            exchange: if event_type.is_alert() {
                "robson.alerts"
            } else {
                "robson.stops"
            },
            payload,
            published,
            published_at_us: published
                .then(|| created_at_us + 20_000 + (delay * 1_500_000.0) as i64),
            retry_count: if !published {
                1 + (delay * 5.0) as i32
            } else {
                i32::from(retried)
            },
            last_error: if !published {
                Some(
                    "AMQP channel closed: 404 NOT_FOUND - no exchange 'robson.stops' in vhost 'robson'",
                )
            } else {
                retried.then_some("Connection reset by peer (os error 104)")
            },
            created_at_us,
        })
    }
}

/// The event's `payload_json`: what the stop service logged about it.
fn payload(e: &Event, x: &Execution, tick_age_ms: u32, failure: (i32, &str, bool)) -> String {
    let mut out = String::with_capacity(320);
    out.push('{');
    if let (Some(stop), Some(trigger)) = (e.stop_price, e.trigger_price) {
        let _ = write!(
            out,
            r#""stop":{{"type":"STOP_MARKET","stop_price":{stop},"trigger_price":{trigger}"#
        );
        if let Some(quantity) = e.quantity {
            let _ = write!(out, r#","quantity":{quantity}"#);
        }
        let _ = write!(
            out,
            r#"}},"market":{{"last":{trigger},"tick_age_ms":{tick_age_ms}}},"#
        );
    }
    if let (Some(fill), Some(slippage), Some(order)) =
        (e.fill_price, e.slippage_pct, &e.exchange_order_id)
    {
        let commission = Decimal::round(fill.to_f64() * x.quantity.to_f64() * 0.001, 8);
        let _ = write!(
            out,
            r#""fill":{{"price":{fill},"slippage_pct":{slippage},"order_id":"{order}","commission":{{"asset":"USDC","amount":{commission}}}}},"#
        );
    }
    match e.event_type {
        Failed => {
            let _ = write!(
                out,
                r#""error":{{"code":{},"message":{},"retryable":{}}},"#,
                failure.0,
                json_str(failure.1),
                failure.2
            );
        }
        Blocked | CircuitBreaker | KillSwitch => {
            let _ = write!(
                out,
                r#""reason":{},"#,
                json_opt_str(e.error_message.as_deref())
            );
        }
        _ => {}
    }
    let _ = write!(
        out,
        r#""worker":"robson-stop-{}","version":"1.8.2","attempt":{}}}"#,
        x.gid % 3,
        e.retry_count + 1
    );
    out
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt_str(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), json_str)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` for microseconds since the epoch (proleptic
/// Gregorian calendar, Howard Hinnant's `civil_from_days`).
fn rfc3339(us: i64) -> String {
    let (days, micros) = (us.div_euclid(86_400_000_000), us.rem_euclid(86_400_000_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let secs = micros / 1_000_000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        micros % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const END: i64 = 1_751_241_600_000_000;
    const WINDOW: i64 = 30 * 24 * 3600 * 1_000_000;

    #[test]
    fn patterns_fill_blocks_with_executions_of_one_to_four() {
        for pattern in PATTERNS {
            assert_eq!(pattern.iter().map(|&n| u64::from(n)).sum::<u64>(), BLOCK);
            assert!(pattern.iter().all(|&n| (1..=4).contains(&n)));
        }
        for lifecycle in LIFECYCLES {
            assert!(!lifecycle.is_empty() && lifecycle.len() <= 4);
        }
    }

    #[test]
    fn executions_share_attributes_and_run_in_order() {
        let g = Generator::new(42, END, WINDOW);
        let events: Vec<Event> = (0..1200).map(|i| g.event(i)).collect();
        for pair in events.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.operation_id == b.operation_id {
                assert_eq!(
                    (a.client_id, a.symbol, &a.execution_token),
                    (b.client_id, b.symbol, &b.execution_token)
                );
                assert!(
                    b.occurred_at_us > a.occurred_at_us
                        && b.occurred_at_us - a.occurred_at_us < 3_000_000
                );
            } else {
                assert_eq!(
                    b.operation_id,
                    b.index as i64 + 1,
                    "an execution starts at its gid"
                );
            }
        }
        assert_eq!(g.event(7), Generator::new(42, END, WINDOW).event(7));
        assert_ne!(
            g.event(7).event_id,
            Generator::new(43, END, WINDOW).event(7).event_id
        );
    }

    #[test]
    fn decimals_and_json_are_well_formed() {
        assert_eq!(
            Decimal {
                units: 123_456_789,
                scale: 8
            }
            .to_string(),
            "1.23456789"
        );
        assert_eq!(
            Decimal {
                units: -5,
                scale: 4
            }
            .to_string(),
            "-0.0005"
        );
        assert_eq!(Decimal::round(0.000_012_345_6, 8).units, 1235);
        assert_eq!(json_str("a\"b\\c\n"), r#""a\"b\\c\u000a""#);
        assert_eq!(rfc3339(END), "2025-06-30T00:00:00.000000Z");
        assert_eq!(rfc3339(951_827_696_123_456), "2000-02-29T12:34:56.123456Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        let g = Generator::new(1, END, WINDOW);
        for i in 0..500 {
            let e = g.event(i);
            assert!(
                e.payload_json.starts_with('{') && e.payload_json.ends_with('}'),
                "{}",
                e.payload_json
            );
            assert!(!e.payload_json.contains(",}"), "{}", e.payload_json);
            if let Some(o) = g.outbox(&e) {
                assert!(o.payload.contains(&e.event_id.to_string()));
            }
        }
    }
}
