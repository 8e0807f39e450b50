-- What one fold takes from the pending log, summed per learner, UTC hour (the
-- unit of learner_hours, the finest per-learner table) and country, with the
-- oldest receive time, for the statements of the same transaction. Private to the folder's session;
-- emptied at every commit. A batch is grouped several times over; give it
-- memory for that.
SET temp_buffers = '256MB';
SET work_mem = '256MB';
CREATE TEMPORARY TABLE IF NOT EXISTS fold_batch (
    user_id       uuid        NOT NULL,
    hour          timestamptz NOT NULL,
    country       text        NOT NULL,
    events        bigint      NOT NULL,
    word_count    bigint      NOT NULL,
    study_seconds bigint      NOT NULL,
    oldest        timestamptz NOT NULL
) ON COMMIT DELETE ROWS;
