-- Delta payloads (docs/usage/server.md, "Delta payloads"):
-- 1. A package's deltas: one per source version, each a hosted Platte payload that builds the
--    package's image from that version's. Offered instead of the full payload to a machine that
--    runs exactly the source version and sends delta_okay="true".
-- 2. Per instance, which payload the last offer served ('full' or 'delta'; NULL before any).
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
CREATE TRIGGER package_deltas_gen_i AFTER INSERT ON package_deltas BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER package_deltas_gen_u AFTER UPDATE ON package_deltas BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER package_deltas_gen_d AFTER DELETE ON package_deltas BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;

ALTER TABLE instances ADD COLUMN served_payload TEXT;
