-- The persons directory's change feed (docs/storage-postgresql.md): every
-- broker answers lookups from memory and drops what another broker
-- changed. Each change to a file, a consent or a number replacement
-- appends the number it concerns (or '*' for a replacement: resolutions
-- changed) under the next position of one counter. The counter is a row
-- updated in the change's own transaction, so its lock orders positions
-- by commit: a reader that has seen position p has seen every position
-- below it.
CREATE TABLE persons_feed_head (
    id       smallint PRIMARY KEY CHECK (id = 0),
    position bigint   NOT NULL CHECK (position >= 0)
);
INSERT INTO persons_feed_head (id, position) VALUES (0, 0);

CREATE TABLE persons_changes (
    position bigint      PRIMARY KEY,
    citizen  text        NOT NULL,
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX persons_changes_at ON persons_changes (at);

-- The next position, for one changed number.
CREATE FUNCTION semel_persons_feed(c text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    p bigint;
BEGIN
    UPDATE persons_feed_head SET position = position + 1 WHERE id = 0 RETURNING position INTO p;
    INSERT INTO persons_changes (position, citizen) VALUES (p, c);
END;
$$;

-- A file or a consent changed: its number (both, if it moved).
CREATE FUNCTION semel_citizen_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM semel_persons_feed(NEW.citizen);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM semel_persons_feed(OLD.citizen);
    ELSE
        PERFORM semel_persons_feed(NEW.citizen);
        IF OLD.citizen <> NEW.citizen THEN
            PERFORM semel_persons_feed(OLD.citizen);
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

-- A replacement changed: resolutions changed ('*').
CREATE FUNCTION semel_replacements_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM semel_persons_feed('*');
    RETURN NULL;
END;
$$;

CREATE TRIGGER person_files_changed AFTER INSERT OR UPDATE OR DELETE ON person_files
    FOR EACH ROW EXECUTE FUNCTION semel_citizen_changed();
CREATE TRIGGER consents_changed AFTER INSERT OR UPDATE OR DELETE ON consents
    FOR EACH ROW EXECUTE FUNCTION semel_citizen_changed();
CREATE TRIGGER number_replacements_changed AFTER INSERT OR UPDATE OR DELETE ON number_replacements
    FOR EACH ROW EXECUTE FUNCTION semel_replacements_changed();

-- A table emptied at once (TRUNCATE fires no row trigger): the head moves
-- with no change listed, and every reader, finding a position missing,
-- forgets everything.
CREATE FUNCTION semel_persons_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE persons_feed_head SET position = position + 1 WHERE id = 0;
    RETURN NULL;
END;
$$;

CREATE TRIGGER person_files_truncated AFTER TRUNCATE ON person_files
    FOR EACH STATEMENT EXECUTE FUNCTION semel_persons_truncated();
CREATE TRIGGER consents_truncated AFTER TRUNCATE ON consents
    FOR EACH STATEMENT EXECUTE FUNCTION semel_persons_truncated();
CREATE TRIGGER number_replacements_truncated AFTER TRUNCATE ON number_replacements
    FOR EACH STATEMENT EXECUTE FUNCTION semel_persons_truncated();
