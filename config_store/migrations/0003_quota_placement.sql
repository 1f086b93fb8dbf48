-- The quota algorithm's placement depends on history, so the control plane keeps it:
-- the ring's assignment (modbot_ring/_quota.py) and the ring members it was made for,
-- rewritten in the same transaction as every change of pods or weights.
-- The table is rebuilt rather than altered: SQLite cannot change a CHECK constraint.
CREATE TABLE ring_state_v3 (
    id               smallint PRIMARY KEY CHECK (id = 1),
    version          bigint NOT NULL,
    shard_count      integer CHECK (shard_count IS NULL OR shard_count > 0),
    algorithm        text NOT NULL CHECK (algorithm IN ('slots', 'ketama', 'quota')),
    updated_at       double precision NOT NULL,
    assignment       text,
    assignment_nodes text
);
INSERT INTO ring_state_v3 (id, version, shard_count, algorithm, updated_at)
    SELECT id, version, shard_count, algorithm, updated_at FROM ring_state;
DROP TABLE ring_state;
ALTER TABLE ring_state_v3 RENAME TO ring_state;
-- A brand-new store (version 0: nothing has happened yet) starts on the new default.
UPDATE ring_state SET algorithm = 'quota' WHERE version = 0;
