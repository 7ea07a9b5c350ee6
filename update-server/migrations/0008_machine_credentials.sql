-- Machine credentials: the ed25519 public key bound to a machine id, by the operator
-- (`enrolled`) or by the first valid signed request for a machine id without one (`first_use`).
-- One key per machine id, whatever the application; deleting an instance keeps its key.
CREATE TABLE machine_credentials (
    machine_id  TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('enrolled', 'first_use')),
    created_at  BIGINT NOT NULL
);
