-- A source's event ids are remembered (for 400 days) by their key, never as
-- given: an id may carry a national number. The key is SHA-256 of the
-- source's enterprise number and the id (semel_core::mutation::event_key),
-- so the ids stored before are converted, and a retry of one is still a
-- duplicate.
ALTER TABLE mutation_events ADD COLUMN event_key bytea;
UPDATE mutation_events
    SET event_key = sha256(convert_to(source, 'UTF8') || convert_to(event_id, 'UTF8'));
ALTER TABLE mutation_events ALTER COLUMN event_key SET NOT NULL;
ALTER TABLE mutation_events DROP CONSTRAINT mutation_events_pkey;
ALTER TABLE mutation_events DROP COLUMN event_id;
ALTER TABLE mutation_events ADD PRIMARY KEY (source, event_key);

-- The queue's entries name their change by the same key (the payload, sent
-- to the consumer, carries the id until it is acknowledged or expires).
ALTER TABLE mutation_queue ADD COLUMN event_key bytea;
UPDATE mutation_queue
    SET event_key = sha256(convert_to(source, 'UTF8') || convert_to(event_id, 'UTF8'));
ALTER TABLE mutation_queue ALTER COLUMN event_key SET NOT NULL;
DROP INDEX mutation_queue_event;
ALTER TABLE mutation_queue DROP COLUMN event_id;
CREATE INDEX mutation_queue_event ON mutation_queue (source, event_key);
