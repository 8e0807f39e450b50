-- Seals the half of the log ingest appends to and returns it; commits on its own,
-- so that ingest appends to the other half while this one is folded.
SELECT seal_pending_half();
