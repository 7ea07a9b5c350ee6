-- Serving Flatcar fleets (docs/usage/flatcar.md):
-- 1. A channel points at one package per architecture *and format*, so one group can hold
--    Platte's agents and update_engine hosts, each offered its own payload. The pointer's format
--    is its package's; the table is rebuilt to widen its key (SQLite cannot alter a key).
-- 2. The rest of update_engine's postinstall action, per package (Nebraska's "Flatcar action").
-- 3. A package's extra files (OEM and extension sysexts), served as further <package> elements
--    of its manifest, under the same codebase.
-- 4. Per application, the event that completes an update: `reboot` (3/2 naming the previous
--    version, as update_engine and Platte's agent send) or `install` (3/1, for applications
--    that do not reboot, such as those using Nebraska's Go updater library).
CREATE TABLE channel_packages_by_format (
    channel_id  TEXT NOT NULL REFERENCES channels(id) ON DELETE CASCADE,
    arch        TEXT NOT NULL,
    format      TEXT NOT NULL DEFAULT 'platte',
    package_id  TEXT NOT NULL REFERENCES packages(id) ON DELETE RESTRICT,
    PRIMARY KEY (channel_id, arch, format)
);
INSERT INTO channel_packages_by_format (channel_id, arch, format, package_id)
    SELECT cp.channel_id, cp.arch, p.format, cp.package_id
    FROM channel_packages cp JOIN packages p ON p.id = cp.package_id;
DROP TABLE channel_packages;
ALTER TABLE channel_packages_by_format RENAME TO channel_packages;
CREATE TRIGGER channel_packages_gen_i AFTER INSERT ON channel_packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER channel_packages_gen_u AFTER UPDATE ON channel_packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER channel_packages_gen_d AFTER DELETE ON channel_packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;

ALTER TABLE packages ADD COLUMN metadata_signature_rsa TEXT;
ALTER TABLE packages ADD COLUMN deadline TEXT;
ALTER TABLE packages ADD COLUMN is_delta BIGINT NOT NULL DEFAULT 0;
ALTER TABLE packages ADD COLUMN disable_payload_backoff BIGINT NOT NULL DEFAULT 1;
ALTER TABLE packages ADD COLUMN needs_admin BIGINT NOT NULL DEFAULT 0;

CREATE TABLE package_files (
    package_id   TEXT NOT NULL REFERENCES packages(id) ON DELETE CASCADE,
    position     BIGINT NOT NULL,
    name         TEXT NOT NULL,
    size         BIGINT NOT NULL,
    sha1_base64  TEXT NOT NULL,
    sha256_hex   TEXT NOT NULL,
    PRIMARY KEY (package_id, name)
);
CREATE INDEX package_files_sha256 ON package_files (sha256_hex);
CREATE TRIGGER package_files_gen_i AFTER INSERT ON package_files BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER package_files_gen_u AFTER UPDATE ON package_files BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER package_files_gen_d AFTER DELETE ON package_files BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;

ALTER TABLE apps ADD COLUMN completes_on TEXT NOT NULL DEFAULT 'reboot';
