-- Grant counts kept as they change: machines per group, version, grant state and whether they
-- were new to the rollout. Auto-halt and canary gates read them on every grant attempt; counting
-- `rollout_grants` there instead costs a scan of every grant of the version, which on release
-- day grows with the fleet. Triggers keep the tallies, so no write path can forget them, and
-- they change in the same transaction as the grant. The index serves auto-halt after a resume,
-- which subtracts the grants made before it (an index-only range scan).
CREATE TABLE rollout_grant_tallies (
    group_id    TEXT NOT NULL,
    version     TEXT NOT NULL,
    state       TEXT NOT NULL,
    new_machine BIGINT NOT NULL,
    machines    BIGINT NOT NULL,
    PRIMARY KEY (group_id, version, state, new_machine)
);
INSERT INTO rollout_grant_tallies (group_id, version, state, new_machine, machines)
SELECT group_id, version, state, new_machine, COUNT(*) FROM rollout_grants
GROUP BY group_id, version, state, new_machine;
CREATE INDEX rollout_grants_version_time
    ON rollout_grants (group_id, version, granted_at, state, new_machine);

CREATE TRIGGER rollout_grant_tallies_i AFTER INSERT ON rollout_grants BEGIN
    INSERT INTO rollout_grant_tallies (group_id, version, state, new_machine, machines)
    VALUES (NEW.group_id, NEW.version, NEW.state, NEW.new_machine, 1)
    ON CONFLICT (group_id, version, state, new_machine) DO UPDATE SET machines = machines + 1;
END;
CREATE TRIGGER rollout_grant_tallies_u
AFTER UPDATE OF group_id, version, state, new_machine ON rollout_grants
WHEN OLD.group_id <> NEW.group_id OR OLD.version <> NEW.version OR OLD.state <> NEW.state
    OR OLD.new_machine <> NEW.new_machine
BEGIN
    UPDATE rollout_grant_tallies SET machines = machines - 1
    WHERE group_id = OLD.group_id AND version = OLD.version AND state = OLD.state
        AND new_machine = OLD.new_machine;
    INSERT INTO rollout_grant_tallies (group_id, version, state, new_machine, machines)
    VALUES (NEW.group_id, NEW.version, NEW.state, NEW.new_machine, 1)
    ON CONFLICT (group_id, version, state, new_machine) DO UPDATE SET machines = machines + 1;
END;
CREATE TRIGGER rollout_grant_tallies_d AFTER DELETE ON rollout_grants BEGIN
    UPDATE rollout_grant_tallies SET machines = machines - 1
    WHERE group_id = OLD.group_id AND version = OLD.version AND state = OLD.state
        AND new_machine = OLD.new_machine;
END;
