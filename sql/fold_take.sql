-- Reads the sealed half $1 of the log into fold_batch, summed per learner, hour
-- and country; returns how many events it holds, and when the oldest of them
-- was received.
WITH kept AS (
    INSERT INTO fold_batch (user_id, hour, country, events, word_count, study_seconds, oldest)
    SELECT user_id, date_bin('1 hour', occurred_at, timestamptz 'epoch'), country, count(*),
           sum(word_count), sum(study_seconds), min(received_at)
    FROM pending_events
    WHERE half = $1
    GROUP BY 1, 2, 3
    RETURNING events, oldest
)
SELECT coalesce(sum(events), 0)::bigint AS events, min(oldest) AS oldest FROM kept;
