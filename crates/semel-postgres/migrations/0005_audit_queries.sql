-- Audit queries by citizen find entries under the number the caller named
-- when it had been replaced (docs/storage-postgresql.md), as the embedded
-- index does.
ALTER TABLE audit_entries ADD COLUMN citizen_as_given text;
CREATE INDEX audit_entries_citizen_as_given ON audit_entries (citizen_as_given, sequence DESC)
    WHERE citizen_as_given IS NOT NULL;
