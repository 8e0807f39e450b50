-- The first statement of every answer's transaction, before any query takes
-- its snapshot: the folder empties a folded half of the log with TRUNCATE,
-- which a snapshot older than it would see as empty, and this lock makes the
-- TRUNCATE wait for the answer (and the answer for the TRUNCATE).
LOCK TABLE pending_events IN ACCESS SHARE MODE;
