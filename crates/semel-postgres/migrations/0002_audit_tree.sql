-- The audit log's Merkle tree and checkpoints (docs/storage-postgresql.md),
-- written only by the broker holding the integration lock.

-- Complete subtree hashes: (level, index) covers leaves
-- [index * 2^level, (index + 1) * 2^level). Level 0 holds the leaf hashes.
CREATE TABLE audit_tree (
    level smallint NOT NULL CHECK (level >= 0 AND level < 64),
    index bigint   NOT NULL CHECK (index >= 0),
    hash  bytea    NOT NULL CHECK (octet_length(hash) = 32),
    PRIMARY KEY (level, index)
);

-- One row: how many entries the tree holds, and its root.
CREATE TABLE audit_tree_state (
    id   integer PRIMARY KEY CHECK (id = 0),
    size bigint  NOT NULL CHECK (size >= 0),
    root bytea   NOT NULL CHECK (octet_length(root) = 32)
);
INSERT INTO audit_tree_state (id, size, root) VALUES (0, 0, sha256(''));

-- Signed checkpoints (C2SP signed notes), one per size; the cosigned note
-- is filled in when witnesses have signed.
CREATE TABLE audit_checkpoints (
    size      bigint PRIMARY KEY CHECK (size >= 0),
    root      bytea  NOT NULL CHECK (octet_length(root) = 32),
    note      text   NOT NULL,
    cosigned  text,
    signed_at timestamptz NOT NULL DEFAULT now()
);
