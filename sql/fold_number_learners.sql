-- Gives every learner of the batch that has none a learner number.
INSERT INTO learners (user_id)
SELECT DISTINCT b.user_id
FROM fold_batch AS b
WHERE NOT EXISTS (SELECT FROM learners AS l WHERE l.user_id = b.user_id)
ORDER BY 1;
