-- Reverts 0001: drops exactly the tables it created (their indexes go with
-- them). No IF EXISTS: a table that is already gone means the schema drifted,
-- and the transaction fails instead of hiding it.

DROP TABLE backup_watermarks;
DROP TABLE backup_catalog;
DROP TABLE source_metrics;
DROP TABLE trade_records;
DROP TABLE trading_signals;
DROP TABLE trading_candidates;
DROP TABLE news_raw;
