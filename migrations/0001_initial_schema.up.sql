-- 0001 initial schema: the trading tables of the seed design, typed field for
-- field after proto/catalyst/v1/records.proto, and the fleet's own tables.
--
-- Every trading row carries `version` (producer-assigned, e.g. updated-at in
-- µs): writers apply a row only when it is newer. There are no foreign keys
-- between these tables: writes arrive on different Kafka partitions, in any
-- order.

CREATE TABLE news_raw (
    news_id             varchar(128) PRIMARY KEY,
    symbol              varchar(10) NOT NULL,
    headline            varchar(1000),
    source              varchar(128),
    url                 varchar(2048),
    published_timestamp timestamptz,
    collected_timestamp timestamptz,
    content_snippet     varchar(4000),
    sentiment_score     double precision,
    catalyst_score      double precision,
    is_pre_market       boolean DEFAULT false,
    version             bigint NOT NULL
);

-- news of one symbol, newest first (seed 4.2, recent news with outcomes)
CREATE INDEX idx_news_symbol_published ON news_raw (symbol, published_timestamp DESC);
-- market-open warm (seed 5.2): pre-market news of the last hours, best
-- catalyst first; partial, so it holds only the pre-market rows
CREATE INDEX idx_news_pre_market_published ON news_raw (published_timestamp)
    INCLUDE (catalyst_score) WHERE is_pre_market;

CREATE TABLE trading_candidates (
    candidate_id        varchar(128) PRIMARY KEY,
    symbol              varchar(10) NOT NULL,
    selection_timestamp timestamptz,
    catalyst_score      double precision,
    technical_score     double precision,
    combined_score      double precision,
    primary_catalyst    varchar(256),
    news_count          integer,
    traded              boolean DEFAULT false,
    version             bigint NOT NULL
);

-- recent candidates (seed 4.2 top candidates, 5.2 active candidates)
CREATE INDEX idx_candidates_selection ON trading_candidates (selection_timestamp);
CREATE INDEX idx_candidates_catalyst_score ON trading_candidates (catalyst_score DESC);

CREATE TABLE trading_signals (
    signal_id           varchar(128) PRIMARY KEY,
    candidate_id        varchar(128),
    symbol              varchar(10) NOT NULL,
    signal_type         varchar(16),
    confidence          double precision,
    entry_price         double precision,
    stop_loss           double precision,
    take_profit         double precision,
    generated_timestamp timestamptz,
    expires_timestamp   timestamptz,
    version             bigint NOT NULL
);

CREATE TABLE trade_records (
    trade_id            varchar(128) PRIMARY KEY,
    signal_id           varchar(128),
    symbol              varchar(10) NOT NULL,
    entry_news_id       varchar(128),
    side                varchar(16),
    quantity            bigint,
    entry_price         double precision,
    exit_price          double precision,
    entry_timestamp     timestamptz,
    exit_timestamp      timestamptz,
    pnl_amount          double precision,
    pnl_percentage      double precision,
    exit_reason         varchar(256),
    version             bigint NOT NULL
);

-- news joined to the trades it triggered (seed 4.2)
CREATE INDEX idx_trade_records_entry_news ON trade_records (entry_news_id);

CREATE TABLE source_metrics (
    source_name          varchar(128) PRIMARY KEY,
    total_articles       bigint,
    accurate_predictions bigint,
    accuracy_rate        double precision,
    avg_price_impact     double precision,
    last_updated         timestamptz,
    version              bigint NOT NULL
);

-- catalyst-backup: one row per backup, written as it runs
CREATE TABLE backup_catalog (
    backup_id        text PRIMARY KEY,
    command_id       text,
    kind             text NOT NULL CHECK (kind IN ('full', 'tables', 'incremental')),
    tag              text,
    database_name    text,
    tables           text[],
    state            text NOT NULL CHECK (state IN ('running', 'completed', 'failed', 'pruned')),
    object_key       text,
    manifest_key     text,
    bytes_raw        bigint,
    bytes_compressed bigint,
    row_counts       jsonb,
    sha256           text,
    schema_version   integer,
    pg_version       text,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    verified_at      timestamptz,
    verify_ok        boolean,
    error            text
);

-- retention walks one tag newest first; the worker looks up running backups
CREATE INDEX idx_backup_catalog_tag_finished ON backup_catalog (tag, finished_at DESC);
CREATE INDEX idx_backup_catalog_state ON backup_catalog (state);

-- catalyst-backup: per table, the highest version an incremental backup took
CREATE TABLE backup_watermarks (
    table_name   text PRIMARY KEY,
    last_version bigint NOT NULL,
    backup_id    text,
    updated_at   timestamptz
);
