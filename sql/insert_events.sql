-- Stores one batch of validated events in a single statement, appends them to
-- the pending log for the folder, and returns the 1-based positions of the
-- events that were NOT inserted: repetitions of a key earlier in the batch, and
-- events refused because their learner was erased after they occurred (with
-- the erasure's erased_at; NULL for the others).
--
-- Optimistic: a key already stored fails the whole statement with
-- unique_violation, and the caller stores the batch with
-- insert_events_checked.sql instead. Without ON CONFLICT, PostgreSQL inserts
-- without speculative insertion, about a third faster.
--
-- Within the batch the first occurrence of a key wins. Keys are inserted in key
-- order, so concurrent batches lock keys in the same order and do not deadlock
-- each other.
--
-- $1 user_id[], $2 idempotency_key[], $3 occurred_at as microseconds since the
-- Unix epoch[], $4 word_count[], $5 study_seconds[], $6 the countries joined
-- by commas (see ValidEvents.columns); coalesce gives back the '' of a batch
-- whose one event has no country, which splits into no element at all.
WITH batch AS (
    SELECT user_id, idempotency_key, occurred_us, word_count, study_seconds,
           coalesce(country, '') AS country, position
    FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::integer[], $5::integer[],
                string_to_array($6::text, ','))
        WITH ORDINALITY
        AS b (user_id, idempotency_key, occurred_us, word_count, study_seconds, country, position)
),
-- Events of erased learners that occurred before their erasure: refused, never
-- stored. Read in this statement, so a batch either sees an erasure or holds its
-- lock on pending_events from before the erasure was recorded (and the erasure
-- waits for it, then deletes what it stored). The batch's learners are looked up
-- by key, so the cost follows the batch, not the number of erasures: nothing at
-- all while there is none.
erased AS (
    SELECT user_id, erased_at FROM erasures WHERE user_id = ANY ($1::uuid[])
),
refused AS (
    SELECT b.position, x.erased_at
    FROM batch AS b
    JOIN erased AS x USING (user_id)
    WHERE b.occurred_us < (extract(epoch FROM x.erased_at) * 1000000)::bigint
),
firsts AS (
    SELECT DISTINCT ON (user_id, idempotency_key) *
    FROM batch
    WHERE position NOT IN (SELECT position FROM refused)
    ORDER BY user_id, idempotency_key, position
),
inserted AS (
    INSERT INTO events (user_id, idempotency_key, occurred_at, word_count, study_seconds, country)
    SELECT user_id,
           idempotency_key,
           timestamptz 'epoch' + occurred_us * interval '1 microsecond',
           word_count,
           study_seconds,
           country
    FROM firsts
    ORDER BY user_id, idempotency_key
    RETURNING user_id, occurred_at, word_count, study_seconds, country
),
pending AS (
    INSERT INTO pending_events (half, user_id, occurred_at, word_count, study_seconds, country)
    SELECT (SELECT half FROM pending_half), * FROM inserted
)
SELECT b.position, r.erased_at
FROM batch AS b
LEFT JOIN refused AS r USING (position)
WHERE NOT EXISTS (SELECT 1 FROM firsts AS f WHERE f.position = b.position);
