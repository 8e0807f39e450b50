-- For the transaction that reads the rollup deltas of a fold: memory to group
-- a whole batch, found by sorting (a batch's groups are many, and hashing their
-- lists of learners spills).
SET LOCAL work_mem = '256MB';
SET LOCAL enable_hashagg = off;
