-- Reverts 0004: the record of replayed dead letters (a later replay would
-- then re-publish them again).

DROP TABLE dlq_replays;
