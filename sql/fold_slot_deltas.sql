-- The batch per 15-minute slot and country, in time order: its sums and the
-- numbers of the learners active there, from which the folder derives every
-- rollup it changes.
SELECT b.slot,
       b.country,
       sum(b.events) AS events,
       sum(b.word_count) AS word_count,
       sum(b.study_seconds) AS study_seconds,
       array_agg(l.learner) AS learners
FROM fold_batch AS b
JOIN learners AS l USING (user_id)
GROUP BY 1, 2
ORDER BY 1, 2;
