-- One grant per machine, application, group and version. A machine granted a version again
-- (after it failed, timed out, deferred or completed it) reopens its grant instead of adding a
-- row, so the counts taken from `rollout_grants` (attempts, failures, auto-halt, limits) count
-- machines, not grant attempts. Rows written before this migration (one per attempt) are folded
-- into the newest one of each machine and version. Portable SQL.

DELETE FROM rollout_grants WHERE id NOT IN (
    SELECT MAX(id) FROM rollout_grants GROUP BY machine_id, app_id, group_id, version
);
CREATE UNIQUE INDEX rollout_grants_one_per_machine
    ON rollout_grants (machine_id, app_id, group_id, version);
