-- Bounding what an unauthenticated Omaha client can steer (docs/rollouts.md, "What an
-- unauthenticated client can do"). Portable SQL.
--
-- Operator-assigned aliases, one per machine (whatever its applications), apart from the alias a
-- client reports in `instances.alias`: rollout canaries name a machine by id or by this alias,
-- never by the reported one.
CREATE TABLE machine_aliases (
    machine_id  TEXT PRIMARY KEY,
    alias       TEXT NOT NULL UNIQUE,
    set_at      BIGINT NOT NULL
);

-- When the rollout of a version in a group began: its first grant. A machine first seen at or
-- after it is new to that rollout.
CREATE TABLE rollout_starts (
    group_id    TEXT NOT NULL,
    version     TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    PRIMARY KEY (group_id, version)
);

-- Each grant records the source network of the machine (IPv4 /24, IPv6 /64) and whether the
-- machine was new to the rollout when first granted (auto-halt weighs its attempt less; new
-- machines are granted at a bounded rate per network). Grants from before this migration were
-- made to machines the server knew: established.
ALTER TABLE rollout_grants ADD COLUMN network TEXT NOT NULL DEFAULT '';
ALTER TABLE rollout_grants ADD COLUMN new_machine BIGINT NOT NULL DEFAULT 0;
CREATE INDEX rollout_grants_new_by_network ON rollout_grants (network, new_machine, granted_at);

-- Rollouts already under way began at their first grant, not at their first grant after this
-- migration: otherwise machines invented during their earlier part would count as established.
INSERT INTO rollout_starts (group_id, version, started_at)
SELECT group_id, version, MIN(granted_at) FROM rollout_grants GROUP BY group_id, version;
