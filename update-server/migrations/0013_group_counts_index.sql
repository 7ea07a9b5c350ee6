-- A covering index for counting a group's machines by version, status and hold reason (the
-- rollout status, the dashboard, /metrics, the version samples): the counts are read from the
-- index alone, in its order, without visiting the table or sorting. It replaces
-- instances_app_group (its prefix). A check-in that only moves last_check_at does not touch it.
CREATE INDEX instances_group_counts ON instances (app_id, group_id, version, status, status_detail);
DROP INDEX instances_app_group;
