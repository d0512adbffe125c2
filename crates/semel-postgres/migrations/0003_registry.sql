-- The registry on PostgreSQL (docs/storage-postgresql.md): the records
-- every broker holds in memory, their version, and authorisations' history.

-- Organisations, datasets, purposes, authorisations (their current
-- version) and revoked certificates, as the JSON the embedded store keeps.
CREATE TABLE registry_records (
    kind  text  NOT NULL CHECK (kind IN ('organisation', 'dataset', 'purpose', 'authorisation', 'revoked_certificate')),
    key   text  NOT NULL,
    value jsonb NOT NULL,
    PRIMARY KEY (kind, key)
);

-- Every version of every authorisation.
CREATE TABLE registry_authorisation_history (
    reference text    NOT NULL,
    version   integer NOT NULL CHECK (version > 0),
    value     jsonb   NOT NULL,
    PRIMARY KEY (reference, version)
);

-- One row, bumped in the transaction of every registry change (which also
-- sends NOTIFY semel_registry): brokers reload their snapshot when it moves.
CREATE TABLE registry_version (
    id      integer PRIMARY KEY CHECK (id = 0),
    version bigint  NOT NULL CHECK (version >= 0)
);
INSERT INTO registry_version (id, version) VALUES (0, 0);
