-- Applications for authorisations (issue 21): a consumer's request, decided
-- by the supervisory body, kept as a registry record of its own kind.
ALTER TABLE registry_records DROP CONSTRAINT registry_records_kind_check;
ALTER TABLE registry_records ADD CONSTRAINT registry_records_kind_check
    CHECK (kind IN ('organisation', 'dataset', 'purpose', 'authorisation', 'revoked_certificate', 'application'));
