-- Reverts 0002: the index, then the three columns.

DROP INDEX idx_news_source_tier;

ALTER TABLE news_raw
    DROP COLUMN narrative_cluster_id,
    DROP COLUMN confirmation_status,
    DROP COLUMN source_tier;
