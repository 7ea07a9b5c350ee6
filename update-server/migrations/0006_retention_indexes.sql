-- Retention: the pruner deletes rows older than a cutoff in bounded batches. These indexes let
-- each batch find its rows by timestamp instead of scanning the table (instances: the forget
-- pass pages through the stale ones in (last_check_at, machine_id, app_id) order). Grants use
-- rollout_grants_group_time (group_id, granted_at) from migration 0003. Portable SQL.

CREATE INDEX events_at ON events (at);
CREATE INDEX history_at ON instance_status_history (at);
CREATE INDEX activity_at ON activity (at);
CREATE INDEX instances_last_check ON instances (last_check_at, machine_id, app_id);
