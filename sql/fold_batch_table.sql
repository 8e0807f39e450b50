-- What one fold takes from the pending log, summed per learner, 15-minute slot
-- (the finest unit any rollup needs) and country, with the oldest receive time,
-- for the statements of the same transaction. Private to the folder's session;
-- emptied at every commit. A batch is grouped several times over; give it
-- memory for that.
SET temp_buffers = '256MB';
SET work_mem = '256MB';
CREATE TEMPORARY TABLE IF NOT EXISTS fold_batch (
    user_id       uuid        NOT NULL,
    slot          timestamptz NOT NULL,
    country       text        NOT NULL,
    events        bigint      NOT NULL,
    word_count    bigint      NOT NULL,
    study_seconds bigint      NOT NULL,
    oldest        timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
