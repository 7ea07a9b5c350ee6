-- Platte update server: initial schema. Portable SQL (SQLite now, PostgreSQL later):
-- TEXT ids, BIGINT Unix-second timestamps, no engine-specific types.

CREATE TABLE apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at  BIGINT NOT NULL
);

CREATE TABLE packages (
    id            TEXT PRIMARY KEY,
    app_id        TEXT NOT NULL REFERENCES apps(id) ON DELETE RESTRICT,
    version       TEXT NOT NULL,
    arch          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    filename      TEXT NOT NULL,
    size          BIGINT NOT NULL,
    sha1_base64   TEXT NOT NULL,
    sha256_hex    TEXT NOT NULL,
    external_url  TEXT,
    created_at    BIGINT NOT NULL,
    UNIQUE (app_id, version, arch)
);
CREATE INDEX packages_sha256 ON packages (sha256_hex);

CREATE TABLE channels (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (app_id, name)
);

CREATE TABLE channel_packages (
    channel_id  TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    arch        TEXT NOT NULL,
    package_id  TEXT NOT NULL REFERENCES packages(id) ON DELETE RESTRICT,
    PRIMARY KEY (channel_id, arch)
);

CREATE TABLE groups_ (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    track       TEXT NOT NULL,
    channel_id  TEXT REFERENCES channels(id) ON DELETE SET NULL,
    description TEXT NOT NULL DEFAULT '',
    policy      TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    UNIQUE (app_id, track)
);

CREATE TABLE instances (
    machine_id      TEXT NOT NULL,
    app_id          TEXT NOT NULL,
    alias           TEXT NOT NULL DEFAULT '',
    ip              TEXT NOT NULL DEFAULT '',
    version         TEXT NOT NULL DEFAULT '',
    group_id        TEXT,
    track           TEXT NOT NULL DEFAULT '',
    oem             TEXT NOT NULL DEFAULT '',
    oem_version     TEXT NOT NULL DEFAULT '',
    board           TEXT NOT NULL DEFAULT '',
    boot_id         TEXT NOT NULL DEFAULT '',
    last_check_at   BIGINT NOT NULL,
    granted_version TEXT,
    granted_at      BIGINT,
    status          TEXT NOT NULL,
    status_detail   TEXT NOT NULL DEFAULT '',
    error_code      BIGINT,
    status_at       BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (machine_id, app_id)
);
CREATE INDEX instances_app_group ON instances (app_id, group_id);

CREATE TABLE instance_status_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id  TEXT NOT NULL,
    app_id      TEXT NOT NULL,
    status      TEXT NOT NULL,
    version     TEXT NOT NULL,
    detail      TEXT NOT NULL DEFAULT '',
    error_code  BIGINT,
    at          BIGINT NOT NULL
);
CREATE INDEX history_instance ON instance_status_history (machine_id, app_id, id);

CREATE TABLE events (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id       TEXT NOT NULL,
    app_id           TEXT NOT NULL,
    event_type       BIGINT NOT NULL,
    event_result     BIGINT NOT NULL,
    error_code       BIGINT,
    previous_version TEXT NOT NULL DEFAULT '',
    version          TEXT NOT NULL DEFAULT '',
    at               BIGINT NOT NULL
);
CREATE INDEX events_instance ON events (machine_id, app_id, id);

CREATE TABLE activity (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    severity    TEXT NOT NULL,
    app_id      TEXT,
    group_id    TEXT,
    machine_id  TEXT,
    version     TEXT,
    message     TEXT NOT NULL
);
