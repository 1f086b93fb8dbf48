-- Which table versions a plan's own moves produced: an interrupted plan may resume when
-- every change since its base version is its own (anything else: regenerate the plan).
CREATE TABLE plan_versions (
    version bigint PRIMARY KEY,
    plan_id text NOT NULL
);
CREATE INDEX plan_versions_by_plan ON plan_versions (plan_id);
