-- The $2 smallest user ids among the learners numbered $1.
SELECT user_id FROM learners WHERE learner = ANY ($1::integer[]) ORDER BY user_id LIMIT $2;
