-- The brokers running on this database, each with when it last said so
-- (the database's clock): every broker counts the live ones every second,
-- and holds its share of each organisation's limits (a limit divided by
-- the brokers alive), so that an organisation's limits hold across brokers.
CREATE TABLE brokers (
    id text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at timestamptz NOT NULL DEFAULT now()
);
