-- FleetLock reboot semaphore: one row per group whose slot count was set by an operator (groups
-- without a row use the server's default), one row per current holder of a slot.
CREATE TABLE fleetlock_groups (
    name        TEXT PRIMARY KEY,
    slots       INTEGER NOT NULL CHECK (slots >= 0),
    updated_at  BIGINT NOT NULL
);

CREATE TABLE fleetlock_holders (
    group_name  TEXT NOT NULL,
    holder_id   TEXT NOT NULL,
    since       BIGINT NOT NULL,
    PRIMARY KEY (group_name, holder_id)
);
