-- Mutations: changes published by sources, queued per consumer until
-- acknowledged (the payload of citizen data lives only that long).
CREATE TABLE mutation_events (
    source text NOT NULL,
    event_id text NOT NULL,
    -- SHA-256 of the change as published: the same id again is the same
    -- change only with the same digest.
    digest bytea NOT NULL,
    accepted_micros bigint NOT NULL,
    PRIMARY KEY (source, event_id)
);
CREATE INDEX mutation_events_accepted ON mutation_events (accepted_micros);

-- One row per consumer: the last position queued, delivered, acknowledged
-- and lost to retention. Publishers take the row lock to number entries.
CREATE TABLE mutation_cursors (
    consumer text PRIMARY KEY,
    head bigint NOT NULL DEFAULT 0,
    delivered bigint NOT NULL DEFAULT 0,
    acknowledged bigint NOT NULL DEFAULT 0,
    lost_through bigint NOT NULL DEFAULT 0
);

CREATE TABLE mutation_queue (
    consumer text NOT NULL,
    position bigint NOT NULL,
    accepted_micros bigint NOT NULL,
    source text NOT NULL,
    event_id text NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (consumer, position)
);
CREATE INDEX mutation_queue_event ON mutation_queue (source, event_id);
CREATE INDEX mutation_queue_accepted ON mutation_queue (accepted_micros);
