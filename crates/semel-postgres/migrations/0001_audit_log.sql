-- The audit log's sequencing tables (docs/storage-postgresql.md).

-- One row: where the next entry goes and what it links to. The only row
-- brokers contend for: each batch of entries locks it for one short
-- transaction.
CREATE TABLE audit_head (
    id            integer PRIMARY KEY CHECK (id = 0),
    next_sequence bigint  NOT NULL CHECK (next_sequence >= 0),
    last_hash     bytea   NOT NULL CHECK (octet_length(last_hash) = 32)
);
INSERT INTO audit_head (id, next_sequence, last_hash) VALUES (0, 0, '\x0000000000000000000000000000000000000000000000000000000000000000');

-- The entries: their canonical encoding (what is hashed and verified) and
-- the keys queries use (which are never hashed: they only find entries).
CREATE TABLE audit_entries (
    sequence    bigint  PRIMARY KEY CHECK (sequence >= 0),
    encoding    bytea   NOT NULL,
    citizen     text,
    consumer    text    NOT NULL,
    time_micros bigint  NOT NULL
);
CREATE INDEX audit_entries_citizen ON audit_entries (citizen, sequence DESC) WHERE citizen IS NOT NULL;
CREATE INDEX audit_entries_consumer ON audit_entries (consumer, sequence DESC);
