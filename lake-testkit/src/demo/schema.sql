-- The Django-owned source tables of SPEC §2, as Django's migrations create them:
-- same types, nullability, primary/unique keys, foreign key and indexes.
-- Idempotent, so the demo can run it against an existing database.
-- operation_id refers to the app's operations table, which the lake never reads;
-- that foreign key is left out so the schema stands alone.

CREATE TABLE IF NOT EXISTS stop_events (
    event_id             uuid           NOT NULL,
    event_seq            bigint         NULL,
    occurred_at          timestamptz    NOT NULL,
    operation_id         bigint         NOT NULL,
    client_id            bigint         NOT NULL,
    symbol               varchar(20)    NOT NULL,
    event_type           varchar(50)    NOT NULL,
    trigger_price        numeric(20, 8) NULL,
    stop_price           numeric(20, 8) NULL,
    quantity             numeric(20, 8) NULL,
    side                 varchar(10)    NULL,
    execution_token      varchar(64)    NULL,
    payload_json         jsonb          NOT NULL,
    request_payload_hash varchar(64)    NULL,
    exchange_order_id    varchar(100)   NULL,
    fill_price           numeric(20, 8) NULL,
    slippage_pct         numeric(10, 4) NULL,
    source               varchar(20)    NOT NULL,
    error_message        text           NULL,
    retry_count          integer        NOT NULL,
    CONSTRAINT stop_events_pkey PRIMARY KEY (event_id),
    CONSTRAINT stop_events_event_seq_key UNIQUE (event_seq),
    CONSTRAINT stop_events_retry_count_check CHECK (retry_count >= 0)
);

CREATE INDEX IF NOT EXISTS stop_events_occurred_at_idx ON stop_events (occurred_at);
CREATE INDEX IF NOT EXISTS stop_events_client_occurred_idx ON stop_events (client_id, occurred_at);
CREATE INDEX IF NOT EXISTS stop_events_operation_id_idx ON stop_events (operation_id);
CREATE INDEX IF NOT EXISTS stop_events_execution_token_idx ON stop_events (execution_token);

CREATE TABLE IF NOT EXISTS outbox (
    outbox_id      uuid         NOT NULL,
    aggregate_type varchar(50)  NOT NULL,
    aggregate_id   bigint       NOT NULL,
    event_type     varchar(50)  NOT NULL,
    correlation_id varchar(64)  NOT NULL,
    event_id       uuid         NULL,
    routing_key    varchar(255) NOT NULL,
    exchange       varchar(100) NOT NULL,
    payload        jsonb        NOT NULL,
    published      boolean      NOT NULL,
    published_at   timestamptz  NULL,
    retry_count    integer      NOT NULL,
    last_error     text         NULL,
    created_at     timestamptz  NOT NULL,
    CONSTRAINT outbox_pkey PRIMARY KEY (outbox_id),
    CONSTRAINT outbox_correlation_id_key UNIQUE (correlation_id),
    CONSTRAINT outbox_event_id_fk_stop_events FOREIGN KEY (event_id)
        REFERENCES stop_events (event_id) DEFERRABLE INITIALLY DEFERRED,
    CONSTRAINT outbox_retry_count_check CHECK (retry_count >= 0)
);

CREATE INDEX IF NOT EXISTS outbox_event_id_idx ON outbox (event_id);
-- What the outbox relay polls: unpublished rows, oldest first.
CREATE INDEX IF NOT EXISTS outbox_unpublished_idx ON outbox (created_at) WHERE NOT published;
