-- No rule without its entry, for number replacements: a replacement decides
-- whose files and consents count for a number (those under the numbers it
-- replaced), so it names the audit entry that recorded it and carries a
-- broker's seal, like files and consents (0010). A replacement without a
-- seal that verifies is not followed. Replacements stored before this
-- version have none: the register publishes them again through a broker.
ALTER TABLE number_replacements
    ADD COLUMN audit_sequence bigint,
    ADD COLUMN audit_hash bytea,
    ADD COLUMN seal bytea;
