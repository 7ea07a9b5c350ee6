-- A package's payload format (which clients can apply it): `platte` (Platte's signed payload,
-- every package before this migration) or `update_engine` (a CrAU file served as it is), and
-- for the latter the size of its metadata (update_engine's `MetadataSize`).
ALTER TABLE packages ADD COLUMN format TEXT NOT NULL DEFAULT 'platte';
ALTER TABLE packages ADD COLUMN metadata_size INTEGER;
