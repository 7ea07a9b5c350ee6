-- Staged rollouts: one row per grant attempt (a machine granted a version in a group). The
-- rollout limits (rate, concurrency, timeouts), auto-halt and canary gates are counted from it
-- inside one write transaction per grant attempt. Portable SQL.

CREATE TABLE rollout_grants (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id    TEXT NOT NULL,
    app_id      TEXT NOT NULL,
    machine_id  TEXT NOT NULL,
    version     TEXT NOT NULL,
    -- in_flight | installed | complete | failed | timed_out
    state       TEXT NOT NULL,
    canary      BIGINT NOT NULL DEFAULT 0,
    granted_at  BIGINT NOT NULL,
    progress_at BIGINT NOT NULL,
    settled_at  BIGINT
);
CREATE INDEX rollout_grants_group_state ON rollout_grants (group_id, state, progress_at);
CREATE INDEX rollout_grants_group_time ON rollout_grants (group_id, granted_at);
CREATE INDEX rollout_grants_group_version ON rollout_grants (group_id, version, state);
CREATE INDEX rollout_grants_machine ON rollout_grants (machine_id, app_id, state);
