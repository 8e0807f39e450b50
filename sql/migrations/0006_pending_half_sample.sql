-- A smaller sample of a sealed half, of the columns the fold's plans use.
--
-- The fold's statements need the half's size and how many learners, hours and
-- countries it holds; nothing about the sums or the receive times, which it
-- only adds up or takes the earliest of. A sample of 3,000 rows (statistics
-- target 10) finds the size as exactly as one of 30,000 while the half has at
-- most 3,000 pages (about 290,000 events): ANALYZE then reads every page and
-- counts its rows. On a live fold of 85,000 events it cuts
-- analyze_pending_half from about 70 ms to about 10 ms, and leaves the fold's
-- plans as they were.
ALTER TABLE pending_events
    ALTER COLUMN user_id SET STATISTICS 10,
    ALTER COLUMN occurred_at SET STATISTICS 10,
    ALTER COLUMN country SET STATISTICS 10,
    ALTER COLUMN half SET STATISTICS 0,
    ALTER COLUMN word_count SET STATISTICS 0,
    ALTER COLUMN study_seconds SET STATISTICS 0,
    ALTER COLUMN received_at SET STATISTICS 0;
