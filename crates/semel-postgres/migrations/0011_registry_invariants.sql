-- The registry's rules on applications, held by the database rather than
-- by one broker's memory (issue 30): two brokers racing the same
-- application cannot both store it pending.

-- Applications left pending twice by brokers that raced before this
-- migration: the later of each pair is rejected, saying why, so that the
-- indexes below can be built (docs/storage-postgresql.md).
UPDATE registry_records r
   SET value = jsonb_set(jsonb_set(r.value, '{state}', '"rejected"'), '{decision_note}',
       '"rejected by migration 0011: another application of the same applicant for the same reference was pending (two brokers raced)"')
 WHERE r.kind = 'application' AND r.value->>'state' = 'pending'
   AND EXISTS (SELECT 1 FROM registry_records o
                WHERE o.kind = 'application' AND o.value->>'state' = 'pending'
                  AND o.value->>'applicant' = r.value->>'applicant'
                  AND o.value->'proposed'->>'reference' = r.value->'proposed'->>'reference'
                  AND (o.value->>'applied_at', o.key) < (r.value->>'applied_at', r.key));
UPDATE registry_records r
   SET value = jsonb_set(jsonb_set(r.value, '{state}', '"rejected"'), '{decision_note}',
       '"rejected by migration 0011: another application for membership of the same enterprise number was pending (two brokers raced)"')
 WHERE r.kind = 'membership' AND r.value->>'state' = 'pending'
   AND EXISTS (SELECT 1 FROM registry_records o
                WHERE o.kind = 'membership' AND o.value->>'state' = 'pending'
                  AND o.value->>'kbo' = r.value->>'kbo'
                  AND (o.value->>'applied_at', o.key) < (r.value->>'applied_at', r.key));

-- One pending application per applicant and reference.
CREATE UNIQUE INDEX registry_one_pending_application ON registry_records
    ((value->>'applicant'), (value->'proposed'->>'reference'))
    WHERE kind = 'application' AND value->>'state' = 'pending';

-- One pending application for membership per enterprise number.
CREATE UNIQUE INDEX registry_one_pending_membership ON registry_records ((value->>'kbo'))
    WHERE kind = 'membership' AND value->>'state' = 'pending';
