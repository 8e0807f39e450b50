-- Waits for the ingest statements under way, in a transaction of its own that
-- ends at once. Each of them holds ROW EXCLUSIVE on the log from before it took
-- its snapshot, which SHARE waits for; so when this returns, every ingest
-- statement that did not see the erasure just recorded (erase_record.sql) has
-- committed, and the erasure's later statements see what it stored. Ingest
-- statements that start later see the erasure and refuse the learner's older
-- events themselves.
LOCK TABLE pending_events IN SHARE MODE;
