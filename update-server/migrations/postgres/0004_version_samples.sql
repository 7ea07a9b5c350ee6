-- How many machines of each group ran each version, sampled every few minutes by the server
-- (the dashboard's version-over-time chart). `at` is the sample's instant rounded down to the
-- sampling interval, so replicas sampling the same instant write one set (the first wins).
-- Versions beyond a group's most common ones are summed under `other_versions = 1` (version '').
CREATE TABLE group_version_samples (
    app_id         TEXT NOT NULL,
    group_id       TEXT NOT NULL,
    at             BIGINT NOT NULL,
    version        TEXT NOT NULL,
    other_versions BIGINT NOT NULL DEFAULT 0,
    machines       BIGINT NOT NULL,
    PRIMARY KEY (app_id, group_id, at, other_versions, version)
);
CREATE INDEX group_version_samples_at ON group_version_samples (at);
