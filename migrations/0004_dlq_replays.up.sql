-- 0004 dead-letter replays.
--
-- `catalyst-publish dlq replay` re-publishes dead letters (dlq.v1: the
-- original bytes and key, with x-catalyst-* headers naming the source) to
-- their source topic after an operator fixed the cause, and records each
-- one here once the broker acknowledged the replayed copy. A later replay
-- skips every dead letter recorded here, and any other dead letter of the
-- same source message (a message dead-lettered twice, once per delivery).
--
-- Why a table on the primary rather than a compacted topic: the insert is
-- idempotent (the primary key is the dead letter's own coordinates), an
-- advisory lock keeps two operators from replaying the same letters at once,
-- and "what was replayed, when, by whom" is one SELECT away.
--
-- Ordering: produce, wait for the acknowledgement, then insert. A crash in
-- between replays those letters again next time (never loses one); the
-- workers' writes are idempotent (version-checked upserts and deletes,
-- insert-only news, backup ids), so a second copy changes nothing.

CREATE TABLE dlq_replays (
    dlq_topic          text        NOT NULL,
    dlq_partition      integer     NOT NULL,
    dlq_offset         bigint      NOT NULL,
    source_topic       text        NOT NULL,
    source_partition   integer     NOT NULL,
    source_offset      bigint      NOT NULL,
    reason             text,
    replayed_partition integer     NOT NULL,
    replayed_offset    bigint      NOT NULL,
    replayed_at        timestamptz NOT NULL DEFAULT now(),
    replayed_by        text        NOT NULL,
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);

CREATE INDEX idx_dlq_replays_source ON dlq_replays (source_topic, source_partition, source_offset);
