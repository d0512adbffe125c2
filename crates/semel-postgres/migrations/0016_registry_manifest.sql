-- The registry's manifest (docs/storage-postgresql.md, "The registry's
-- manifest"): one row listing every sealed rule (an organisation, dataset,
-- purpose or authorisation by kind and key, each version of an
-- authorisation by reference and version) with the audit entry that sealed
-- it, itself sealed by the entry of the change that wrote it last. A rule
-- whose entry is not the one the manifest lists (an older sealed row put
-- back by SQL), or that it does not list, is not honoured.
CREATE TABLE registry_manifest (
    id integer PRIMARY KEY CHECK (id = 0),
    -- The list as JSON text, exactly as sealed.
    rules text NOT NULL,
    audit_sequence bigint NOT NULL,
    audit_hash bytea NOT NULL,
    seal bytea NOT NULL
);
-- Sealed rules stored before this version are listed once by the first
-- broker to start on it, under one audit entry of the operator's
-- (`semel.seal/AdoptRegistry`), as they stand: only those whose seal
-- verifies. Rows without a seal are not adopted by this listing
-- (`manifest_only`); an adoption still due from version 14 adopts them and
-- lists them too.
ALTER TABLE registry_adoption ADD COLUMN manifest_only boolean NOT NULL DEFAULT false;
INSERT INTO registry_adoption (id, manifest_only)
    SELECT 0, true WHERE EXISTS (
        SELECT 1 FROM registry_records
         WHERE kind IN ('organisation', 'dataset', 'purpose', 'authorisation'))
    ON CONFLICT (id) DO NOTHING;
