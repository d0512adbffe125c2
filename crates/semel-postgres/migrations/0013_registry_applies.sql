-- Registry applies under way (issue 30, point 5): a row opened before an
-- apply's change entries are written, turned committed in the registry
-- commit's own transaction, and removed once the apply's closing entry is
-- durable. A row whose broker stopped says what its closing entry must
-- say: still open, not applied; committed, applied (with the words of that
-- entry). A broker settles the rows of brokers no longer alive (table
-- brokers) and its own, writing the missing closing entry first.
CREATE TABLE registry_applies (
    id text PRIMARY KEY,
    broker text NOT NULL,
    value jsonb NOT NULL,
    committed boolean NOT NULL DEFAULT false,
    opened_at timestamptz NOT NULL DEFAULT now()
);
