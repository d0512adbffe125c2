-- Applications (issue 21): for an authorisation (a consumer's, decided by
-- the supervisory body) and for membership (an administration's, decided by
-- the operator), kept as registry records of their own kinds.
ALTER TABLE registry_records DROP CONSTRAINT registry_records_kind_check;
ALTER TABLE registry_records ADD CONSTRAINT registry_records_kind_check
    CHECK (kind IN ('organisation', 'dataset', 'purpose', 'authorisation', 'revoked_certificate', 'application', 'membership'));
