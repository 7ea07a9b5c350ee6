-- One number that grows with every change to what the catalogue snapshot is built from (apps,
-- packages, channels, their package pointers, groups with their policies, operator aliases).
-- Triggers keep it, so no write path (admin API, auto-halt, another replica) can forget it; every
-- server process polls it and reloads its snapshot when it moved.
CREATE TABLE catalogue_generation (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    generation  BIGINT NOT NULL
);
INSERT INTO catalogue_generation (id, generation) VALUES (1, 1);

CREATE TRIGGER apps_gen_i AFTER INSERT ON apps BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER apps_gen_u AFTER UPDATE ON apps BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER apps_gen_d AFTER DELETE ON apps BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER packages_gen_i AFTER INSERT ON packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER packages_gen_u AFTER UPDATE ON packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER packages_gen_d AFTER DELETE ON packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER channels_gen_i AFTER INSERT ON channels BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER channels_gen_u AFTER UPDATE ON channels BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER channels_gen_d AFTER DELETE ON channels BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER channel_packages_gen_i AFTER INSERT ON channel_packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER channel_packages_gen_u AFTER UPDATE ON channel_packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER channel_packages_gen_d AFTER DELETE ON channel_packages BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER groups_gen_i AFTER INSERT ON groups_ BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER groups_gen_u AFTER UPDATE ON groups_ BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER groups_gen_d AFTER DELETE ON groups_ BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER machine_aliases_gen_i AFTER INSERT ON machine_aliases BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER machine_aliases_gen_u AFTER UPDATE ON machine_aliases BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;
CREATE TRIGGER machine_aliases_gen_d AFTER DELETE ON machine_aliases BEGIN UPDATE catalogue_generation SET generation = generation + 1; END;

-- Background jobs that must run in one server process at a time (retention) hold a lease: a row
-- naming the holder until `expires_at`; another process takes it over only once it expired.
CREATE TABLE job_leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);

