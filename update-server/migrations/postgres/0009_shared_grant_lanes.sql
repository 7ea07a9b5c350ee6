-- A release day's grants on PostgreSQL (nothing else changes what a grant decides):
--
-- 1. platte_grant_context (0002) read the machine's own grants with the group and version in
--    the condition, and with statistics taken while the grants table was empty (a new
--    installation, a new version) the planner read them through the group's index: every grant
--    of the version for each attempt. They are now read by machine and application alone, in
--    one statement: every plan of it walks that machine's few grants.
--
-- 2. Grants of a group whose policy counts nothing (no concurrency or rate limit, no
--    auto-halt, no update timeout) are decided by several transactions at once
--    (store/postgres_batch.rs, shared lanes): such a grant reads no count another grant
--    changes, so it takes its group's row lock shared (FOR SHARE; a policy change still waits
--    for it, and it for a policy change). platte_grant_context does so when it is given a
--    shard (p_shared_shard), for the expected policy only (else it reads nothing more and says
--    so in ctx_shared_refused), and names the shard for the transaction's tally changes.
--
-- 3. The tallies are kept in shards, so that concurrent grants of one group do not wait on one
--    tally row until each other's commit: a row change is added to the shard its transaction
--    names (the setting platte.tally_shard, which platte_grant_context sets for the rest of a
--    shared transaction; 0 when unset). A shard's row may go below zero; every reader sums
--    the shards.
ALTER TABLE rollout_grant_tallies ADD COLUMN shard INTEGER NOT NULL DEFAULT 0;
ALTER TABLE rollout_grant_tallies DROP CONSTRAINT rollout_grant_tallies_pkey;
ALTER TABLE rollout_grant_tallies ADD PRIMARY KEY (group_id, version, state, new_machine, shard);

CREATE OR REPLACE FUNCTION platte_tally_grants() RETURNS trigger AS $$
DECLARE
    s INTEGER := COALESCE(NULLIF(current_setting('platte.tally_shard', TRUE), '')::INTEGER, 0);
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO rollout_grant_tallies (group_id, version, state, new_machine, shard, machines)
        VALUES (OLD.group_id, OLD.version, OLD.state, OLD.new_machine, s, -1)
        ON CONFLICT (group_id, version, state, new_machine, shard)
        DO UPDATE SET machines = rollout_grant_tallies.machines - 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO rollout_grant_tallies (group_id, version, state, new_machine, shard, machines)
        VALUES (NEW.group_id, NEW.version, NEW.state, NEW.new_machine, s, 1)
        ON CONFLICT (group_id, version, state, new_machine, shard)
        DO UPDATE SET machines = rollout_grant_tallies.machines + 1;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

DROP FUNCTION platte_grant_context(TEXT, TEXT, TEXT, TEXT, BIGINT, TEXT, BIGINT, BOOLEAN, BIGINT,
    BIGINT, TEXT);
CREATE FUNCTION platte_grant_context(
    p_group TEXT, p_machine TEXT, p_app TEXT, p_version TEXT, p_now BIGINT,
    p_expected_policy TEXT, p_expire_before BIGINT, p_count_in_flight BOOLEAN,
    p_granted_after BIGINT, p_halt_counted_after BIGINT, p_gate TEXT, p_shared_shard INTEGER)
RETURNS TABLE (
    ctx_app_id TEXT, ctx_policy TEXT, ctx_planned BOOLEAN, ctx_refusal TEXT,
    ctx_in_flight_here BOOLEAN, ctx_recorded_new_machine BIGINT,
    ctx_instance_created_at BIGINT, ctx_rollout_start BIGINT, ctx_other_open_grants BOOLEAN,
    ctx_in_flight BIGINT, ctx_granted_after BIGINT, ctx_halt_states TEXT[],
    ctx_halt_new_machines BIGINT[], ctx_halt_machines BIGINT[], ctx_gate_app_id TEXT,
    ctx_gate_policy TEXT, ctx_gate_completed BIGINT, ctx_shared_refused BOOLEAN)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF p_shared_shard IS NULL THEN
        SELECT g.app_id, g.policy INTO ctx_app_id, ctx_policy
        FROM groups_ g WHERE g.id = p_group FOR UPDATE;
    ELSE
        SELECT g.app_id, g.policy INTO ctx_app_id, ctx_policy
        FROM groups_ g WHERE g.id = p_group FOR SHARE;
    END IF;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- The lock shared: only for the policy the caller expects (one that counts nothing); any
    -- other is decided under the exclusive lock, in a transaction of its own (the caller's).
    ctx_shared_refused := FALSE;
    IF p_shared_shard IS NOT NULL THEN
        IF p_expected_policy IS NULL OR ctx_policy <> p_expected_policy THEN
            ctx_shared_refused := TRUE;
            RETURN NEXT;
            RETURN;
        END IF;
        PERFORM set_config('platte.tally_shard', p_shared_shard::TEXT, TRUE);
    END IF;

    -- The machine's own facts (no timeout applied yet, as the rules read them). Its grants are
    -- read by machine and application alone, in one statement: a condition on the group and
    -- version too would let the planner pick a group's index (rollout_grants_version_time) and
    -- scan every grant of the version for each attempt, as it did with stale statistics on a
    -- release day (1. above).
    SELECT r.reason INTO ctx_refusal FROM refused_versions r
    WHERE r.machine_id = p_machine AND r.app_id = p_app AND r.version = p_version;
    SELECT COALESCE(bool_or(g.version = p_version AND g.state = 'in_flight'), FALSE),
           max(g.new_machine) FILTER (WHERE g.group_id = p_group AND g.version = p_version),
           COALESCE(bool_or(g.version <> p_version AND g.state IN ('in_flight', 'installed')),
                    FALSE)
    INTO ctx_in_flight_here, ctx_recorded_new_machine, ctx_other_open_grants
    FROM rollout_grants g WHERE g.machine_id = p_machine AND g.app_id = p_app;
    SELECT i.created_at INTO ctx_instance_created_at FROM instances i
    WHERE i.machine_id = p_machine AND i.app_id = p_app;
    SELECT s.started_at INTO ctx_rollout_start FROM rollout_starts s
    WHERE s.group_id = p_group AND s.version = p_version;

    ctx_planned := p_expected_policy IS NOT NULL AND ctx_policy = p_expected_policy;
    IF ctx_planned THEN
        -- Grants time out only where the rules would come to it: not for a machine that refuses
        -- the version or already holds an in-flight grant of it (both answered before any
        -- timeout), and never the machine's own grant.
        IF p_expire_before IS NOT NULL AND ctx_refusal IS NULL AND NOT ctx_in_flight_here THEN
            UPDATE rollout_grants g SET state = 'timed_out', settled_at = p_now
            WHERE g.group_id = p_group AND g.state = 'in_flight'
            AND g.progress_at < p_expire_before
            AND NOT (g.machine_id = p_machine AND g.app_id = p_app AND g.version = p_version);
        END IF;
        IF p_count_in_flight THEN
            SELECT COUNT(*) INTO ctx_in_flight FROM rollout_grants g
            WHERE g.group_id = p_group AND g.state = 'in_flight';
        END IF;
        IF p_granted_after IS NOT NULL THEN
            SELECT COUNT(*) INTO ctx_granted_after FROM rollout_grants g
            WHERE g.group_id = p_group
            AND NOT (g.machine_id = p_machine AND g.app_id = p_app AND g.version = p_version)
            AND g.state <> 'deferred' AND g.granted_at > p_granted_after;
        END IF;
        IF p_halt_counted_after IS NOT NULL THEN
            -- As the server's own count: the tallies, less the grants made at or before the
            -- resume.
            SELECT COALESCE(array_agg(c.state), '{}'), COALESCE(array_agg(c.new_machine), '{}'),
                   COALESCE(array_agg(c.machines), '{}')
            INTO ctx_halt_states, ctx_halt_new_machines, ctx_halt_machines
            FROM (
                SELECT counted.state, counted.new_machine, SUM(counted.n)::BIGINT AS machines
                FROM (
                    SELECT t.state, t.new_machine, t.machines AS n FROM rollout_grant_tallies t
                    WHERE t.group_id = p_group AND t.version = p_version
                    UNION ALL
                    SELECT g.state, g.new_machine, -COUNT(*) FROM rollout_grants g
                    WHERE g.group_id = p_group AND g.version = p_version
                    AND g.granted_at <= p_halt_counted_after
                    GROUP BY g.state, g.new_machine) AS counted
                GROUP BY counted.state, counted.new_machine HAVING SUM(counted.n) <> 0) AS c;
        END IF;
        IF p_gate IS NOT NULL THEN
            SELECT g.app_id, g.policy INTO ctx_gate_app_id, ctx_gate_policy
            FROM groups_ g WHERE g.id = p_gate;
            SELECT COALESCE(SUM(t.machines), 0)::BIGINT INTO ctx_gate_completed
            FROM rollout_grant_tallies t
            WHERE t.group_id = p_gate AND t.version = p_version AND t.state = 'complete';
        END IF;
    END IF;

    RETURN NEXT;
END
$$;
