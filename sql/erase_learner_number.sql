-- Learner $1's number in the learner sets; none when nothing of theirs was folded.
SELECT learner FROM learners WHERE user_id = $1;
