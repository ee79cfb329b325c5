-- Reverts 0003: the checks, then the tombstones.

ALTER TABLE source_metrics
    DROP CONSTRAINT source_metrics_accuracy_rate_check;

ALTER TABLE trade_records
    DROP CONSTRAINT trade_records_quantity_check,
    DROP CONSTRAINT trade_records_side_check;

ALTER TABLE trading_signals
    DROP CONSTRAINT trading_signals_confidence_check,
    DROP CONSTRAINT trading_signals_signal_type_check;

ALTER TABLE trading_candidates
    DROP CONSTRAINT trading_candidates_catalyst_score_check;

ALTER TABLE news_raw
    DROP CONSTRAINT news_raw_catalyst_score_check,
    DROP CONSTRAINT news_raw_sentiment_score_check;

DROP TABLE row_tombstones;
