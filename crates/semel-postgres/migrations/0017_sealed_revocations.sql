-- Certificate revocations are sealed and listed in the registry's manifest
-- like the rules (docs/storage-postgresql.md, "The registry's manifest"):
-- a revocation (`registry_records` of kind 'revoked_certificate') names
-- the audit entry that recorded it and carries a broker's seal, and the
-- manifest lists it, so that one deleted by SQL still revokes its
-- certificate. Revocations stored before this version have no seal: the
-- adoption (`semel.seal/AdoptRegistry`) adopts them as they stand, seals
-- them and lists them, once; the column below says it must
-- (`revocations`). An adoption already due (from version 14 or 16) adopts
-- them too; otherwise one is marked due, listing only, if the registry
-- holds revocations.
ALTER TABLE registry_adoption ADD COLUMN revocations boolean NOT NULL DEFAULT false;
INSERT INTO registry_adoption (id, manifest_only, revocations)
    SELECT 0, true, true WHERE EXISTS (
        SELECT 1 FROM registry_records WHERE kind = 'revoked_certificate')
    ON CONFLICT (id) DO UPDATE SET revocations = true;
