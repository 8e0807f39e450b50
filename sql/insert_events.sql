-- Stores one batch of validated events in a single statement, adds them to
-- both rollups in the same transaction, and returns the 1-based positions of the
-- events that were NOT inserted (usually none).
--
-- Within the batch the first occurrence of a key wins. Keys are inserted in key
-- order, and rollups in key order, so concurrent batches lock rows in the same
-- order and do not deadlock each other.
--
-- $1 user_id[], $2 idempotency_key[], $3 occurred_at as microseconds since the
-- Unix epoch[], $4 word_count[], $5 study_seconds[], $6 country[].
WITH batch AS (
    SELECT *
    FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::integer[], $5::integer[], $6::text[])
        WITH ORDINALITY
        AS b (user_id, idempotency_key, occurred_us, word_count, study_seconds, country, position)
),
firsts AS (
    SELECT DISTINCT ON (user_id, idempotency_key) *
    FROM batch
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
    ON CONFLICT DO NOTHING
    RETURNING user_id, idempotency_key, occurred_at, word_count, study_seconds, country
),
slots_rolled_up AS (
    INSERT INTO slot_rollups AS r (slot, user_id, country, events, word_count, study_seconds)
    SELECT slot_floor(occurred_at), user_id, country, count(*), sum(word_count), sum(study_seconds)
    FROM inserted
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (slot, user_id, country) DO UPDATE
    SET events = r.events + excluded.events,
        word_count = r.word_count + excluded.word_count,
        study_seconds = r.study_seconds + excluded.study_seconds
),
days_rolled_up AS (
    INSERT INTO day_rollups AS r (day, user_id, country, events, word_count, study_seconds)
    SELECT day_floor(occurred_at), user_id, country, count(*), sum(word_count), sum(study_seconds)
    FROM inserted
    GROUP BY 1, 2, 3
    ORDER BY 1, 2, 3
    ON CONFLICT (day, user_id, country) DO UPDATE
    SET events = r.events + excluded.events,
        word_count = r.word_count + excluded.word_count,
        study_seconds = r.study_seconds + excluded.study_seconds
)
SELECT b.position
FROM batch AS b
WHERE NOT EXISTS (
    SELECT 1
    FROM firsts AS f
    JOIN inserted AS i USING (user_id, idempotency_key)
    WHERE f.position = b.position
);
