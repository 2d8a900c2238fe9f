-- Appends rows [$1, $2] of the demo data set with seed $3 to stop_events, and
-- outbox rows for most of them. Everything is a pure function of (seed, row
-- index), so the same seed and range always produce the same rows, and
-- generating [0, n) then [n, m) gives the same rows as [0, m) at once.
--
-- $1 first row index (bigint), $2 last row index (bigint), $3 seed (bigint),
-- $4 end of the time window (timestamptz), $5 window length in seconds (float8).
--
-- Rows come in blocks of 12 indexes; a per-block hash picks how the block is cut
-- into executions of 1-4 events (__NCOMP__ patterns, __POS__ = position of each
-- index inside its execution, __SIZE__ = that execution's size). An execution is
-- identified by gid = index of its first row; every attribute shared by its events
-- is hashed from gid, per-event ones from the row index.
-- pg_temp.demo_u(key, salt, seed) is a uniform double in [0, 1).
-- The derived tables end in OFFSET 0 so each level is computed once per row
-- instead of being inlined (and recomputed) into every expression above it.
WITH ev AS (
INSERT INTO stop_events (
    event_id, event_seq, occurred_at, operation_id, client_id, symbol, event_type,
    trigger_price, stop_price, quantity, side, execution_token, payload_json,
    request_payload_hash, exchange_order_id, fill_price, slippage_pct, source,
    error_message, retry_count)
SELECT
    f.event_id, f.event_seq, f.occurred_at, f.operation_id, f.client_id, f.symbol, f.event_type,
    f.trigger_price, f.stop_price, f.quantity, f.side, f.execution_token,
    jsonb_build_object(
        'schema', 'robson.stop_event.v2',
        'event_type', f.event_type,
        'operation', jsonb_build_object(
            'id', f.operation_id, 'client_id', f.client_id, 'symbol', f.symbol,
            'side', f.side, 'execution_token', f.execution_token),
        'stop', CASE WHEN f.stop_price IS NOT NULL THEN jsonb_build_object(
            'type', 'STOP_MARKET', 'stop_price', f.stop_price,
            'trigger_price', f.trigger_price, 'quantity', f.quantity) END,
        'market', CASE WHEN f.trigger_price IS NOT NULL THEN jsonb_build_object(
            'bid', round(f.trigger_price * 0.9999, 8),
            'ask', round(f.trigger_price * 1.0001, 8),
            'tick_age_ms', f.tick_age_ms) END,
        'origin', jsonb_build_object(
            'source', f.source, 'worker', 'robson-stop-' || (f.gid % 3), 'version', '1.8.2'),
        'attempt', f.retry_count + 1)
    || CASE WHEN f.fill_price IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('fill', jsonb_build_object(
            'price', f.fill_price, 'quantity', f.quantity, 'slippage_pct', f.slippage_pct,
            'exchange_order_id', f.exchange_order_id,
            'commission', jsonb_build_object('asset', 'USDC', 'amount', round(f.fill_price * f.quantity * 0.001, 8))))
       END
    || CASE WHEN f.error_message IS NULL THEN '{}'::jsonb ELSE jsonb_build_object('error', jsonb_build_object(
            'code', f.error_code, 'message', f.error_message,
            'retryable', f.event_type = 'FAILED' AND f.error_code IN (-1001, -1021, 0)))
       END,
    f.request_payload_hash, f.exchange_order_id, f.fill_price, f.slippage_pct, f.source,
    f.error_message, f.retry_count
FROM (
    -- Level 5: final column values, masked by event type.
    SELECT
        d.gid,
        encode(set_byte(set_byte(d.id_hash, 6, (get_byte(d.id_hash, 6) & 15) | 64),
                        8, (get_byte(d.id_hash, 8) & 63) | 128), 'hex')::uuid AS event_id,
        CASE WHEN d.u_seq < 0.10 THEN NULL ELSE d.i + 1 END AS event_seq,
        $4::timestamptz - make_interval(secs => 120 + d.u_time * ($5::float8 - 240))
                        + make_interval(secs => d.pos * 1.5 + d.u_jitter) AS occurred_at,
        d.gid + 1 AS operation_id,
        d.client_id,
        d.symbol,
        d.event_type,
        CASE WHEN d.event_type NOT IN ('KILL_SWITCH', 'CIRCUIT_BREAKER') THEN d.trigger_price END AS trigger_price,
        CASE WHEN d.event_type NOT IN ('KILL_SWITCH', 'CIRCUIT_BREAKER') THEN d.stop_price END AS stop_price,
        CASE WHEN d.event_type NOT IN ('KILL_SWITCH', 'CIRCUIT_BREAKER', 'STALE_PRICE') THEN d.quantity END AS quantity,
        CASE WHEN d.event_type NOT IN ('KILL_SWITCH', 'CIRCUIT_BREAKER') THEN d.side END AS side,
        d.execution_token,
        CASE WHEN d.event_type = 'EXECUTION_SUBMITTED'
             THEN encode(sha256(int8send(d.i) || int8send($3::bigint)), 'hex') END AS request_payload_hash,
        CASE WHEN d.event_type IN ('EXECUTED', 'SLIPPAGE_BREACH') THEN d.exchange_order_id END AS exchange_order_id,
        CASE WHEN d.event_type IN ('EXECUTED', 'SLIPPAGE_BREACH') THEN d.fill_price END AS fill_price,
        CASE WHEN d.event_type IN ('EXECUTED', 'SLIPPAGE_BREACH') THEN d.slippage_pct END AS slippage_pct,
        d.source,
        CASE d.event_type
            WHEN 'FAILED' THEN (ARRAY[
                'Binance API error -2010: Account has insufficient balance for requested action.',
                'Binance API error -1013: Filter failure: LOT_SIZE',
                'Binance API error -1021: Timestamp for this request was 1000ms ahead of the server''s time.',
                'Binance API error -2019: Margin is insufficient.',
                'Binance API error -1001: Internal error; unable to process your request. Please try again.',
                'Timed out after 10s waiting for the order acknowledgement'])[1 + floor(d.u_error * 6)::int]
            WHEN 'BLOCKED' THEN (ARRAY[
                'Kill switch is active for this client',
                'Circuit breaker is open for this symbol',
                'Stale price: last tick older than 15s',
                'Daily loss limit reached'])[1 + floor(d.u_error * 4)::int]
            WHEN 'CIRCUIT_BREAKER' THEN 'Circuit breaker opened after ' || (3 + floor(d.u_error * 5)::int)
                || ' consecutive exchange errors within 60s'
            WHEN 'KILL_SWITCH' THEN 'Kill switch engaged by operator'
        END AS error_message,
        CASE d.event_type
            WHEN 'FAILED' THEN (ARRAY[-2010, -1013, -1021, -2019, -1001, 0])[1 + floor(d.u_error * 6)::int]
            ELSE 0
        END AS error_code,
        CASE WHEN d.variant IN (9, 10) AND d.pos >= 2 THEN 1 ELSE 0 END AS retry_count,
        CASE WHEN d.event_type = 'STALE_PRICE' THEN 15000 + floor(d.u_tick * 60000)::int
             ELSE floor(d.u_tick * 400)::int END AS tick_age_ms
    FROM (
        -- Level 4: prices, event type and per-execution values.
        SELECT
            c.i, c.pos, c.gid, c.client_id, c.side, c.source, c.variant, c.execution_token,
            c.u_seq, c.u_time, c.u_jitter, c.u_error, c.u_tick,
            (ARRAY['BTCUSDC', 'ETHUSDC', 'SOLUSDC', 'BNBUSDC', 'XRPUSDC', 'ADAUSDC', 'DOGEUSDC',
                   'AVAXUSDC', 'LINKUSDC', 'DOTUSDC', 'LTCUSDC', 'TRXUSDC', 'NEARUSDC', 'ATOMUSDC',
                   'UNIUSDC', 'APTUSDC', 'ARBUSDC', 'OPUSDC', 'SUIUSDC', 'INJUSDC', 'FILUSDC',
                   'AAVEUSDC', 'PEPEUSDC', 'SHIBUSDC', 'ETCUSDC'])[c.sym] AS symbol,
            (ARRAY[
                ARRAY['STALE_PRICE', NULL, NULL, NULL],
                ARRAY['SLIPPAGE_BREACH', NULL, NULL, NULL],
                ARRAY['CIRCUIT_BREAKER', NULL, NULL, NULL],
                ARRAY['KILL_SWITCH', NULL, NULL, NULL],
                ARRAY['STOP_TRIGGERED', 'BLOCKED', NULL, NULL],
                ARRAY['STOP_TRIGGERED', 'FAILED', NULL, NULL],
                ARRAY['STOP_TRIGGERED', 'EXECUTION_SUBMITTED', 'EXECUTED', NULL],
                ARRAY['STOP_TRIGGERED', 'EXECUTION_SUBMITTED', 'FAILED', NULL],
                ARRAY['STOP_TRIGGERED', 'EXECUTION_SUBMITTED', 'EXECUTION_SUBMITTED', 'EXECUTED'],
                ARRAY['STOP_TRIGGERED', 'EXECUTION_SUBMITTED', 'EXECUTION_SUBMITTED', 'FAILED'],
                ARRAY['STOP_TRIGGERED', 'EXECUTION_SUBMITTED', 'EXECUTED', 'SLIPPAGE_BREACH']
            ])[c.variant][c.pos + 1] AS event_type,
            decode(md5($3::bigint::text || ':event:' || c.i), 'hex') AS id_hash,
            round(c.price::numeric, 8) AS stop_price,
            round(c.trigger::numeric, 8) AS trigger_price,
            round((c.notional / c.price)::numeric, 8) AS quantity,
            round((c.trigger * (1 + c.slippage / 100))::numeric, 8) AS fill_price,
            round(c.slippage::numeric, 4) AS slippage_pct,
            (10000000000 + floor(c.u_order * 89999999999))::bigint::text AS exchange_order_id
        FROM (
            -- Level 3: execution attributes from the uniforms.
            SELECT
                b.i, b.pos, b.gid, b.u_seq, b.u_time, b.u_jitter, b.u_error, b.u_tick, b.u_order,
                1 + floor(20 * b.u_client * sqrt(b.u_client))::bigint AS client_id,
                b.sym,
                CASE WHEN b.u_side < 0.72 THEN 'SELL' ELSE 'BUY' END AS side,
                CASE WHEN b.u_source < 0.80 THEN 'ws' WHEN b.u_source < 0.95 THEN 'cron' ELSE 'manual' END AS source,
                b.variant,
                CASE WHEN b.size = 1 OR b.u_token < 0.03 THEN NULL
                     ELSE md5($3::bigint::text || ':token:' || b.gid) END AS execution_token,
                b.price,
                b.price * CASE WHEN b.u_side < 0.72 THEN 1 - 0.0025 * b.u_trigger
                               ELSE 1 + 0.0025 * b.u_trigger END AS trigger,
                20 + 4980 * b.u_notional * b.u_notional AS notional,
                -- Slippage in percent, signed so that negative is adverse for a SELL
                -- and positive for a BUY; breaches are large and adverse.
                CASE WHEN b.variant IN (2, 11)
                     THEN (2.5 + 5.5 * b.u_slip1) * CASE WHEN b.u_side < 0.72 THEN -1 ELSE 1 END
                     ELSE (b.u_slip1 + b.u_slip2 + b.u_slip3 - 1.5) * 1.2
                          * CASE WHEN b.u_tail < 0.01 THEN 3 ELSE 1 END
                END AS slippage
            FROM (
                -- Level 2: uniforms per execution (key gid) and per event (key i).
                SELECT
                    a.i, a.pos, a.size, a.gid,
                    CASE a.size
                        WHEN 1 THEN CASE WHEN u.v < 0.45 THEN 1 WHEN u.v < 0.70 THEN 2 WHEN u.v < 0.90 THEN 3 ELSE 4 END
                        WHEN 2 THEN CASE WHEN u.v < 0.85 THEN 5 ELSE 6 END
                        WHEN 3 THEN CASE WHEN u.v < 0.88 THEN 7 ELSE 8 END
                        ELSE CASE WHEN u.v < 0.60 THEN 9 WHEN u.v < 0.80 THEN 10 ELSE 11 END
                    END AS variant,
                    1 + floor(25 * u.s * u.s)::int AS sym,
                    (ARRAY[64250.5, 3120.75, 148.32, 585.4, 0.5231, 0.4412, 0.1287, 27.85, 14.62, 6.21,
                           71.9, 0.1243, 5.12, 7.35, 9.88, 7.02, 0.7843, 1.63, 1.08, 21.4, 4.37, 97.6,
                           0.00001245, 0.00001752, 22.9]::float8[])[1 + floor(25 * u.s * u.s)::int]
                        * (0.8 + 0.4 * pg_temp.demo_u(a.gid, 8, $3)) AS price,
                    pg_temp.demo_u(a.gid, 2, $3) AS u_client,
                    pg_temp.demo_u(a.gid, 4, $3) AS u_side,
                    pg_temp.demo_u(a.gid, 5, $3) AS u_source,
                    pg_temp.demo_u(a.gid, 6, $3) AS u_token,
                    pg_temp.demo_u(a.gid, 9, $3) AS u_trigger,
                    pg_temp.demo_u(a.gid, 10, $3) AS u_notional,
                    pg_temp.demo_u(a.gid, 11, $3) AS u_slip1,
                    pg_temp.demo_u(a.gid, 12, $3) AS u_slip2,
                    pg_temp.demo_u(a.gid, 13, $3) AS u_slip3,
                    pg_temp.demo_u(a.gid, 14, $3) AS u_tail,
                    pg_temp.demo_u(a.gid, 15, $3) AS u_error,
                    pg_temp.demo_u(a.gid, 16, $3) AS u_time,
                    pg_temp.demo_u(a.gid, 17, $3) AS u_order,
                    pg_temp.demo_u(a.i, 20, $3) AS u_seq,
                    pg_temp.demo_u(a.i, 21, $3) AS u_jitter,
                    pg_temp.demo_u(a.i, 22, $3) AS u_tick
                FROM (
                    -- Level 1: which execution each row index belongs to.
                    SELECT s.i, p.pos, p.size, s.i - p.pos AS gid
                    FROM generate_series($1::bigint, $2::bigint) AS s(i)
                    CROSS JOIN LATERAL (
                        SELECT 1 + floor(pg_temp.demo_u(s.i / 12, 1, $3) * __NCOMP__)::int AS pattern,
                               1 + (s.i % 12)::int AS slot
                    ) AS k
                    CROSS JOIN LATERAL (
                        SELECT (__POS__::int[])[k.pattern][k.slot] AS pos,
                               (__SIZE__::int[])[k.pattern][k.slot] AS size
                    ) AS p
                    OFFSET 0
                ) AS a
                CROSS JOIN LATERAL (
                    SELECT pg_temp.demo_u(a.gid, 7, $3) AS v, pg_temp.demo_u(a.gid, 3, $3) AS s
                ) AS u
                OFFSET 0
            ) AS b
            OFFSET 0
        ) AS c
        OFFSET 0
    ) AS d
    OFFSET 0
) AS f
RETURNING event_id, occurred_at, operation_id, client_id, symbol, event_type, execution_token, payload_json
)
INSERT INTO outbox (
    outbox_id, aggregate_type, aggregate_id, event_type, correlation_id, event_id,
    routing_key, exchange, payload, published, published_at, retry_count, last_error, created_at)
SELECT
    encode(set_byte(set_byte(o.id_hash, 6, (get_byte(o.id_hash, 6) & 15) | 64),
                    8, (get_byte(o.id_hash, 8) & 63) | 128), 'hex')::uuid,
    'stop_execution',
    o.operation_id,
    'stop.' || lower(o.event_type),
    'corr-' || md5($3::bigint::text || ':correlation:' || o.event_id::text),
    o.event_id,
    'stop.' || o.client_id || '.' || lower(o.event_type),
    CASE WHEN o.event_type IN ('STALE_PRICE', 'SLIPPAGE_BREACH', 'CIRCUIT_BREAKER', 'KILL_SWITCH')
         THEN 'robson.alerts' ELSE 'robson.stops' END,
    jsonb_build_object(
        'event_id', o.event_id,
        'event_type', o.event_type,
        'occurred_at', to_char(o.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'client_id', o.client_id,
        'symbol', o.symbol,
        'execution_token', o.execution_token,
        'data', o.payload_json),
    o.published,
    CASE WHEN o.published THEN o.created_at + make_interval(secs => 0.02 + 1.5 * o.u_delay) END,
    CASE WHEN NOT o.published THEN 1 + floor(o.u_delay * 5)::int WHEN o.u_retry < 0.02 THEN 1 ELSE 0 END,
    CASE WHEN NOT o.published THEN 'AMQP channel closed: 404 NOT_FOUND - no exchange in vhost ''robson'''
         WHEN o.u_retry < 0.02 THEN 'Connection reset by peer (os error 104)' END,
    o.created_at
FROM (
    SELECT
        ev.*,
        decode(md5($3::bigint::text || ':outbox:' || ev.event_id::text), 'hex') AS id_hash,
        ev.occurred_at + make_interval(secs => 0.001 + 0.04 * pg_temp.demo_u(hashtextextended(ev.event_id::text, 0), 30, $3)) AS created_at,
        pg_temp.demo_u(hashtextextended(ev.event_id::text, 0), 31, $3) >= 0.03 AS published,
        pg_temp.demo_u(hashtextextended(ev.event_id::text, 0), 32, $3) AS u_delay,
        pg_temp.demo_u(hashtextextended(ev.event_id::text, 0), 33, $3) AS u_retry,
        pg_temp.demo_u(hashtextextended(ev.event_id::text, 0), 34, $3) AS u_keep
    FROM ev
    OFFSET 0
) AS o
-- About 8 % of the events have no outbox row any more (cleaned up).
WHERE o.u_keep >= 0.08
