-- Serving Flatcar fleets, as SQLite's migration 0014: channel pointers per architecture and
-- format, the rest of update_engine's postinstall action per package, a package's extra files,
-- and the event that completes an application's update (`reboot` or `install`).
ALTER TABLE channel_packages ADD COLUMN format TEXT NOT NULL DEFAULT 'platte';
UPDATE channel_packages cp SET format = p.format FROM packages p WHERE p.id = cp.package_id;
ALTER TABLE channel_packages DROP CONSTRAINT channel_packages_pkey;
ALTER TABLE channel_packages ADD PRIMARY KEY (channel_id, arch, format);

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
CREATE TRIGGER package_files_gen AFTER INSERT OR UPDATE OR DELETE ON package_files
    FOR EACH STATEMENT EXECUTE FUNCTION platte_bump_catalogue_generation();

ALTER TABLE apps ADD COLUMN completes_on TEXT NOT NULL DEFAULT 'reboot';
