-- Source of truth for the routing table. Guild ids are text: snowflakes can exceed BIGINT.
-- Timestamps are epoch seconds (double precision) in both dialects.
-- Written for PostgreSQL; config_store.db.sqlite_ddl adapts the types for SQLite.
CREATE TABLE ring_state (
    id          smallint PRIMARY KEY CHECK (id = 1),
    version     bigint NOT NULL,
    shard_count integer CHECK (shard_count IS NULL OR shard_count > 0),
    algorithm   text NOT NULL CHECK (algorithm IN ('slots', 'ketama')),
    updated_at  double precision NOT NULL
);
INSERT INTO ring_state (id, version, shard_count, algorithm, updated_at) VALUES (1, 0, NULL, 'slots', 0);

CREATE TABLE table_versions (
    version    bigint PRIMARY KEY,
    created_at double precision NOT NULL,
    actor      text NOT NULL,
    action     text NOT NULL
);

CREATE TABLE pods (
    name           text PRIMARY KEY,
    url            text,
    weight         double precision NOT NULL CHECK (weight > 0),
    state          text NOT NULL CHECK (state IN ('active', 'draining')),
    online         boolean NOT NULL,
    last_heartbeat double precision,
    registered_at  double precision NOT NULL,
    load           text
);

CREATE TABLE pins (
    guild_id   text PRIMARY KEY,
    pod        text NOT NULL REFERENCES pods (name),
    kind       text NOT NULL CHECK (kind IN ('hard', 'soft')),
    actor      text NOT NULL,
    reason     text NOT NULL,
    created_at double precision NOT NULL
);
CREATE INDEX pins_by_pod ON pins (pod);

CREATE TABLE shard_pins (
    shard      integer PRIMARY KEY CHECK (shard >= 0),
    pod        text NOT NULL REFERENCES pods (name),
    kind       text NOT NULL CHECK (kind IN ('hard', 'soft')),
    actor      text NOT NULL,
    reason     text NOT NULL,
    created_at double precision NOT NULL
);

CREATE TABLE guild_epochs (
    guild_id text PRIMARY KEY,
    epoch    bigint NOT NULL
);

CREATE TABLE plans (
    id           text PRIMARY KEY,
    created_at   double precision NOT NULL,
    base_version bigint NOT NULL,
    state        text NOT NULL,
    actor        text NOT NULL,
    body         text NOT NULL
);

CREATE TABLE migrations (
    id         bigserial PRIMARY KEY,
    plan_id    text REFERENCES plans (id),
    guild_id   text,
    shard      integer,
    source     text NOT NULL,
    target     text NOT NULL,
    state      text NOT NULL,
    epoch      bigint NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    detail     text NOT NULL DEFAULT '{}'
);
CREATE INDEX migrations_open ON migrations (state);

CREATE TABLE audit_log (
    id      bigserial PRIMARY KEY,
    at      double precision NOT NULL,
    actor   text NOT NULL,
    action  text NOT NULL,
    outcome text NOT NULL,
    version bigint,
    detail  text NOT NULL
);
