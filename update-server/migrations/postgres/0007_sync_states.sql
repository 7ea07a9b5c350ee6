-- Upstream sync, as SQLite's migration 0015: per followed application, channel,
-- architecture and payload format, the last check, what the upstream offered, the package it became, the last
-- success and the last error.
CREATE TABLE sync_states (
    app_id            TEXT NOT NULL,
    channel           TEXT NOT NULL,
    arch              TEXT NOT NULL,
    format            TEXT NOT NULL,
    checked_at        BIGINT NOT NULL,
    upstream_version  TEXT,
    package_id        TEXT,
    synced_at         BIGINT,
    error             TEXT,
    PRIMARY KEY (app_id, channel, arch, format)
);
