-- Versions a machine must not be offered again, per application: it rolled back from them
-- (event 3/0 with error code 44). A grant attempt of a refused version is held (`rolled_back`)
-- inside the grant transaction; an operator clears a refusal with
-- `POST /api/v1/instances/{machine}/retry`. Grants gain two states: `deferred` (event 3/9) and
-- `superseded` (a newer version granted before the reboot). Portable SQL.

CREATE TABLE refused_versions (
    machine_id  TEXT NOT NULL,
    app_id      TEXT NOT NULL,
    version     TEXT NOT NULL,
    -- rolled_back
    reason      TEXT NOT NULL,
    error_code  BIGINT,
    at          BIGINT NOT NULL,
    PRIMARY KEY (machine_id, app_id, version)
);
