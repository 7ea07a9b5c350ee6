-- Upstream sync (docs/usage/flatcar.md, "Following an upstream"): per followed application,
-- channel, architecture and payload format, when it was last checked, what the upstream offered, the package it
-- became, when that last succeeded, and the last error (NULL once a check succeeds). Every
-- replica reads it for `update-server sync status`; whichever replica runs a pass writes it.
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
