-- No rule without its entry (docs/storage-postgresql.md): a file or a
-- consent names the audit entry that recorded its change, and carries a
-- broker's seal (an HMAC under a key derived from the log's signing key)
-- over what it says, its table and that entry. A row without a seal that
-- verifies, or whose entry is missing or differs, is not honoured: a row
-- inserted or edited by SQL grants nothing. Rows written before this
-- version have no seal: write them again through a broker.
ALTER TABLE person_files
    ADD COLUMN audit_sequence bigint,
    ADD COLUMN audit_hash bytea,
    ADD COLUMN seal bytea;
ALTER TABLE consents
    ADD COLUMN audit_sequence bigint,
    ADD COLUMN audit_hash bytea,
    ADD COLUMN seal bytea;
