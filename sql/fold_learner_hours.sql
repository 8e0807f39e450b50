-- Adds the batch to learner_hours, in key order.
INSERT INTO learner_hours AS r (user_id, hour, country, events, word_count, study_seconds)
SELECT user_id, hour, country, events, word_count, study_seconds
FROM fold_batch
ORDER BY 1, 2, 3
ON CONFLICT (user_id, hour, country) DO UPDATE
SET events = r.events + excluded.events,
    word_count = r.word_count + excluded.word_count,
    study_seconds = r.study_seconds + excluded.study_seconds;
