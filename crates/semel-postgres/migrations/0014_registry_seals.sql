-- No rule without its entry, for the registry (docs/storage-postgresql.md):
-- an organisation, dataset, purpose or authorisation (and each version of
-- an authorisation) names the audit entry that recorded its change and
-- carries a broker's seal over what it says, its kind and that entry. A
-- row without a seal that verifies, or whose entry is missing or differs,
-- is not honoured: a rule inserted or edited by SQL grants nothing.
ALTER TABLE registry_records
    ADD COLUMN audit_sequence bigint,
    ADD COLUMN audit_hash bytea,
    ADD COLUMN seal bytea;
ALTER TABLE registry_authorisation_history
    ADD COLUMN audit_sequence bigint,
    ADD COLUMN audit_hash bytea,
    ADD COLUMN seal bytea;
-- Rows written before this version have no seal. The first broker to start
-- on this schema adopts them as they stand, once, under one audit entry
-- (`semel.seal/AdoptRegistry`) that counts them and gives a digest of them;
-- the row below says that adoption is still due.
CREATE TABLE registry_adoption (
    id integer PRIMARY KEY CHECK (id = 0)
);
INSERT INTO registry_adoption (id)
    SELECT 0 WHERE EXISTS (
        SELECT 1 FROM registry_records
         WHERE kind IN ('organisation', 'dataset', 'purpose', 'authorisation'));
