-- Delta payloads, as SQLite's migration 0016: a package's deltas (one per source version) and,
-- per instance, which payload the last offer served ('full' or 'delta').
CREATE TABLE package_deltas (
    package_id     TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    source_version TEXT NOT NULL,
    filename       TEXT NOT NULL,
    size           BIGINT NOT NULL,
    sha1_base64    TEXT NOT NULL,
    sha256_hex     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (package_id, source_version)
);
CREATE INDEX package_deltas_sha256 ON package_deltas (sha256_hex);
CREATE TRIGGER package_deltas_gen AFTER INSERT OR UPDATE OR DELETE ON package_deltas
    FOR EACH STATEMENT EXECUTE FUNCTION platte_bump_catalogue_generation();

ALTER TABLE instances ADD COLUMN served_payload TEXT;
