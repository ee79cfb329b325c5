-- 0002 source alignment (seed migration 2): news source tier, confirmation
-- status and narrative cluster. Adding a column with a constant default does
-- not rewrite the table.

ALTER TABLE news_raw
    ADD COLUMN source_tier          integer DEFAULT 5,
    ADD COLUMN confirmation_status  varchar(32) DEFAULT 'unconfirmed',
    ADD COLUMN narrative_cluster_id varchar(128);

CREATE INDEX idx_news_source_tier ON news_raw (source_tier);
