-- A package's payload format, as SQLite's migration 0011: `platte` or `update_engine` (a CrAU
-- file served as it is), and for the latter the size of its metadata (`MetadataSize`).
ALTER TABLE packages ADD COLUMN format TEXT NOT NULL DEFAULT 'platte';
ALTER TABLE packages ADD COLUMN metadata_size BIGINT;
