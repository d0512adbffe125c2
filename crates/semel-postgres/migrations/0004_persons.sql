-- The persons directory, consents and number replacements
-- (docs/storage-postgresql.md): identifiers and dates, never data about
-- the citizen.

CREATE TABLE person_files (
    consumer text  NOT NULL,
    citizen  text  NOT NULL,
    id       text  NOT NULL,
    value    jsonb NOT NULL,
    PRIMARY KEY (consumer, citizen, id)
);

CREATE TABLE consents (
    citizen text  NOT NULL,
    id      text  NOT NULL,
    value   jsonb NOT NULL,
    PRIMARY KEY (citizen, id)
);

-- old → new; an old number is replaced at most once.
CREATE TABLE number_replacements (
    old   text  PRIMARY KEY,
    new   text  NOT NULL CHECK (new <> old),
    value jsonb NOT NULL
);
CREATE INDEX number_replacements_new ON number_replacements (new);
