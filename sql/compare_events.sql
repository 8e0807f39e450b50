-- For events that were not inserted, says whether each one's payload equals
-- the stored event with the same key (a duplicate) or not (a conflict). Runs as
-- its own statement so it sees keys committed by concurrent streams.
--
-- Parameters as in insert_events.sql, plus $7 occurred_at_given[]: an event
-- sent without occurred_at matches on the other fields only.
SELECT b.position,
       (b.occurred_at_given IS FALSE
            OR e.occurred_at = timestamptz 'epoch' + b.occurred_us * interval '1 microsecond')
       AND e.word_count = b.word_count
       AND e.study_seconds = b.study_seconds
       AND e.country = coalesce(b.country, '') AS same_payload
FROM unnest($1::uuid[], $2::uuid[], $3::bigint[], $4::integer[], $5::integer[],
            string_to_array($6::text, ','), $7::boolean[])
    WITH ORDINALITY
    AS b (user_id, idempotency_key, occurred_us, word_count, study_seconds, country,
          occurred_at_given, position)
JOIN events AS e USING (user_id, idempotency_key);
