-- silver.stop_executions (SPEC §6) and its quarantine (SPEC §7) in DuckDB SQL:
-- the reference the silver-transform benchmark runs next to the Rust job on the
-- same bronze input. `{bronze}` is the bronze/events directory (all of its files
-- are live: the benchmark writes one batch), `{out}` the output directory.
--
-- Equivalent to silver-transform --full-refresh: same rows, same partitions (the
-- benchmark checks it with EXCEPT ALL both ways). DuckDB is not asked to sort
-- rows inside partitions (silver does), which only favours DuckDB.

SET TimeZone = 'UTC';

CREATE TEMP TABLE executions AS
WITH e AS (
    SELECT
        *,
        coalesce(nullif(execution_token, ''), 'operation:' || operation_id) AS execution_key,
        -- Event order: occurred_at, event_seq NULLS LAST, event_id.
        {'t': occurred_at, 'n': event_seq IS NULL, 's': coalesce(event_seq, 0), 'i': event_id} AS o
    FROM read_parquet('{bronze}/*/*.parquet')
    WHERE event_type IN ('STOP_TRIGGERED', 'EXECUTION_SUBMITTED', 'EXECUTED', 'FAILED', 'BLOCKED')
)
SELECT
    arg_min(event_id, o)                                        AS execution_id,
    execution_key,
    arg_min(operation_id, o)                                    AS operation_id,
    arg_min(symbol, o)                                          AS symbol,
    arg_min_null(side, o)                                       AS side,
    CASE arg_max(event_type, o)
        WHEN 'STOP_TRIGGERED' THEN 'PENDING'
        WHEN 'EXECUTION_SUBMITTED' THEN 'SUBMITTED'
        ELSE arg_max(event_type, o)
    END                                                         AS status,
    min(occurred_at) FILTER (WHERE event_type = 'STOP_TRIGGERED')      AS triggered_at,
    min(occurred_at) FILTER (WHERE event_type = 'EXECUTION_SUBMITTED') AS submitted_at,
    min(occurred_at) FILTER (WHERE event_type = 'EXECUTED')            AS executed_at,
    min(occurred_at) FILTER (WHERE event_type = 'FAILED')              AS failed_at,
    min(occurred_at) FILTER (WHERE event_type = 'BLOCKED')             AS blocked_at,
    -- arg_max skips NULL values: "latest non-null".
    arg_max(stop_price, o)                                      AS stop_price,
    arg_max(trigger_price, o)                                   AS trigger_price,
    arg_max(quantity, o)                                        AS quantity,
    arg_max(exchange_order_id, o) FILTER (WHERE event_type = 'EXECUTED') AS exchange_order_id,
    arg_max(fill_price, o) FILTER (WHERE event_type = 'EXECUTED')        AS fill_price,
    arg_max(slippage_pct, o) FILTER (WHERE event_type = 'EXECUTED')      AS slippage_pct,
    arg_max(source, o)                                          AS source,
    arg_max(error_message, o)                                   AS error_message,
    max(retry_count)                                            AS retry_count,
    count(*)                                                    AS event_count,
    min(occurred_at)                                            AS first_event_at,
    max(occurred_at)                                            AS last_event_at,
    arg_max(event_id, o)                                        AS last_event_id,
    arg_min(client_id, o)                                       AS client_id,
    count(DISTINCT client_id) > 1                               AS multi_client
FROM e
GROUP BY execution_key;

CREATE TEMP TABLE checked AS
SELECT
    *,
    list_filter([
        CASE WHEN status NOT IN ('PENDING', 'SUBMITTED', 'EXECUTED', 'FAILED', 'BLOCKED') THEN 'status_in_enum' END,
        CASE WHEN abs(slippage_pct) > 50 THEN 'slippage_in_range' END,
        CASE WHEN status = 'EXECUTED' AND fill_price IS NULL THEN 'executed_has_fill_price' END,
        CASE WHEN multi_client THEN 'single_client' END,
        CASE WHEN NOT regexp_full_match(symbol, '[A-Z0-9]{2,20}') THEN 'symbol_format' END
    ], lambda v: v IS NOT NULL) AS violations,
    CAST(first_event_at AS DATE) AS date
FROM executions;

COPY (
    SELECT * EXCLUDE (multi_client, violations)
    FROM checked
    WHERE len(violations) = 0
) TO '{out}/silver' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (client_id, date), OVERWRITE_OR_IGNORE);

COPY (
    SELECT * EXCLUDE (multi_client, violations, v), v AS violation
    FROM (SELECT *, unnest(violations) AS v FROM checked WHERE len(violations) > 0)
) TO '{out}/quarantine' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date), OVERWRITE_OR_IGNORE);
