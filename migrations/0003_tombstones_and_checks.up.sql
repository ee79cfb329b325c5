-- 0003 row tombstones and domain checks.
--
-- catalyst-persist applies a delete only to a row whose version is not newer
-- than the delete's, and remembers the delete here (one row per deleted key,
-- the highest delete version), so that an older upsert arriving after the
-- delete does not bring the row back; a newer upsert re-creates it. Nothing
-- prunes tombstones yet: a key deleted once costs one small row for good.
--
-- The checks make "values the schema refuses" explicit: a write that breaks
-- one fails with SQLSTATE 23514 and is dead-lettered, never retried. The
-- ALTERs scan each table once under an exclusive lock; writers only queue
-- up in Kafka meanwhile.

CREATE TABLE row_tombstones (
    table_name text NOT NULL,
    pk         text NOT NULL,
    version    bigint NOT NULL,
    deleted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (table_name, pk)
);

ALTER TABLE news_raw
    ADD CONSTRAINT news_raw_sentiment_score_check CHECK (sentiment_score BETWEEN -1 AND 1),
    ADD CONSTRAINT news_raw_catalyst_score_check CHECK (catalyst_score BETWEEN 0 AND 1);

ALTER TABLE trading_candidates
    ADD CONSTRAINT trading_candidates_catalyst_score_check CHECK (catalyst_score BETWEEN 0 AND 1);

ALTER TABLE trading_signals
    ADD CONSTRAINT trading_signals_signal_type_check CHECK (signal_type IN ('buy', 'sell')),
    ADD CONSTRAINT trading_signals_confidence_check CHECK (confidence BETWEEN 0 AND 1);

ALTER TABLE trade_records
    ADD CONSTRAINT trade_records_side_check CHECK (side IN ('long', 'short')),
    ADD CONSTRAINT trade_records_quantity_check CHECK (quantity > 0);

ALTER TABLE source_metrics
    ADD CONSTRAINT source_metrics_accuracy_rate_check CHECK (accuracy_rate BETWEEN 0 AND 1);
