-- Rollups leave the ingest path.
--
-- Ingest stores an event and appends it to pending_events, nothing else. One
-- folder at a time (server/folding.py, under an advisory lock) moves pending
-- events into the rollups below in large batches and deletes them from the log
-- in the same transaction, so in every snapshot each event is counted exactly
-- once: in the log or in the rollups. Answers read both in one snapshot.
--
-- Every rollup is keyed by a UTC unit: a 15-minute slot, an hour, a day or a
-- month. Every UTC offset in use is a multiple of 15 minutes, so whole units
-- re-aggregate exactly into the calendar buckets of any zone; the few bucket
-- edges inside a slot are read from events.

DROP FUNCTION activity(timestamptz, timestamptz, uuid, text[], text[]);
DROP FUNCTION days_end(timestamptz, timestamptz);
DROP FUNCTION days_start(timestamptz, timestamptz);
DROP FUNCTION slots_end(timestamptz, timestamptz);
DROP FUNCTION slots_start(timestamptz, timestamptz);
DROP FUNCTION day_floor(timestamptz);
DROP FUNCTION slot_floor(timestamptz);
DROP FUNCTION calendar_buckets(timestamptz, timestamptz, text, text, integer);
DROP FUNCTION first_reach(timestamp, text);
DROP TABLE slot_rollups, day_rollups;
-- One learner's activity is read from learner_hours; only ragged edges inside an
-- hour read that learner's events, through the primary key.
DROP INDEX events_user_id_occurred_at_idx;

-- Events stored but not yet folded, in two halves. Ingest appends to the half
-- pending_half names; the folder seals it by naming the other one, folds every
-- row of the sealed half in one transaction and empties it there with TRUNCATE,
-- which costs nothing per row. No index: answers scan the log whole (it holds
-- seconds of ingest).
--
-- TRUNCATE is not MVCC-safe: a snapshot taken before it commits would find the
-- half empty. So answers lock the log (ACCESS SHARE) before their first query
-- takes their snapshot, and the TRUNCATE waits for them.
CREATE TABLE pending_events (
    half          smallint    NOT NULL,
    user_id       uuid        NOT NULL,
    occurred_at   timestamptz NOT NULL,
    word_count    integer     NOT NULL,
    study_seconds integer     NOT NULL,
    country       text        NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now()
) PARTITION BY LIST (half);
-- Emptied by TRUNCATE, never by DELETE: nothing for autovacuum to do.
CREATE TABLE pending_events_0 PARTITION OF pending_events FOR VALUES IN (0)
    WITH (autovacuum_enabled = false);
CREATE TABLE pending_events_1 PARTITION OF pending_events FOR VALUES IN (1)
    WITH (autovacuum_enabled = false);

-- The half ingest appends to.
CREATE TABLE pending_half (
    only_row boolean  PRIMARY KEY DEFAULT true CHECK (only_row),
    half     smallint NOT NULL CHECK (half IN (0, 1))
);
INSERT INTO pending_half (half) VALUES (0);

-- Seals the half ingest appends to, sending new events to the other one, and
-- returns the sealed half; commit before folding it. The lock waits for the
-- appends under way (each holds ROW EXCLUSIVE from before it took its
-- snapshot) and holds new ones back until the commit, so every append that
-- starts later reads the new half.
CREATE FUNCTION seal_pending_half() RETURNS smallint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    sealed smallint;
BEGIN
    LOCK TABLE pending_events IN SHARE MODE;
    UPDATE pending_half SET half = 1 - half RETURNING 1 - half INTO sealed;
    RETURN sealed;
END
$$;

-- Keeps appends out of the sealed half `sealed` until this transaction ends,
-- so that the half holds exactly what the fold reads. (After the seal nothing
-- appends to it; this is the guarantee, not the mechanism.)
CREATE FUNCTION hold_pending_half(sealed smallint) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    EXECUTE format('LOCK TABLE %I IN SHARE MODE', 'pending_events_' || sealed);
END
$$;

-- Empties the sealed half, waiting at most `patience` for answers that are
-- reading the log (lock_not_available when they take longer).
CREATE FUNCTION clear_pending_half(sealed smallint, patience interval) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('lock_timeout', (extract(epoch FROM patience) * 1000)::bigint || 'ms',
                       true);
    EXECUTE format('TRUNCATE %I', 'pending_events_' || sealed);
END
$$;

-- Empties the sealed half row by row: slower, but it waits for no answer.
CREATE FUNCTION delete_pending_half(sealed smallint) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    EXECUTE format('DELETE FROM %I', 'pending_events_' || sealed);
END
$$;

-- A dense number per learner, for the compressed learner sets. Numbers are
-- handed out by the folder in user_id order and never reused.
CREATE TABLE learners (
    user_id uuid    PRIMARY KEY,
    learner integer NOT NULL GENERATED ALWAYS AS IDENTITY UNIQUE
);

-- Everyone's activity per UTC unit and country ('*' is every country together):
-- sums, and the set of learners (a serialized roaring bitmap of learner
-- numbers) with their count. The key covers the sums, so bucket sums come from
-- the index alone; sets are read only where a distinct count needs them.
-- Slots are kept for '*' only: a question filtered by country reads the part
-- of an hour it needs from the events.
CREATE TABLE rollups (
    unit          text        NOT NULL CHECK (unit IN ('slot', 'hour', 'day', 'month')),
    start         timestamptz NOT NULL,
    country       text        NOT NULL,
    events        bigint      NOT NULL,
    word_count    bigint      NOT NULL,
    study_seconds bigint      NOT NULL,
    learner_count integer     NOT NULL,
    learners      bytea       NOT NULL,
    PRIMARY KEY (unit, start, country) INCLUDE (events, word_count, study_seconds, learner_count)
);
-- Roaring bitmaps do not compress further; store them as they are.
ALTER TABLE rollups ALTER COLUMN learners SET STORAGE EXTERNAL;

-- One learner's activity per UTC hour and country: that learner's series in
-- any zone, and exact scores in rankings. user_id leads the key, so the table
-- distributes by user_id (Citus).
CREATE TABLE learner_hours (
    user_id       uuid        NOT NULL,
    hour          timestamptz NOT NULL,
    country       text        NOT NULL,
    events        integer     NOT NULL,
    word_count    bigint      NOT NULL,
    study_seconds bigint      NOT NULL,
    PRIMARY KEY (user_id, hour, country) INCLUDE (events, word_count, study_seconds)
);

-- One learner's activity per UTC month, every country together: whole months of
-- rankings. Updated fold after fold, so it leaves room for in-place updates.
CREATE TABLE learner_months (
    user_id       uuid        NOT NULL,
    month         timestamptz NOT NULL,
    events        bigint      NOT NULL,
    word_count    bigint      NOT NULL,
    study_seconds bigint      NOT NULL,
    PRIMARY KEY (user_id, month)
) WITH (fillfactor = 70);

-- The leading learners of each UTC month by each metric, every country
-- together: the top of learner_months, best first, and `bound`, which no
-- learner outside the list exceeds. Rankings start from these lists and compute
-- exact scores only for the learners they name.
CREATE TABLE month_leaders (
    month    timestamptz NOT NULL,
    metric   text        NOT NULL CHECK (metric IN ('events', 'word_count', 'study_seconds')),
    user_ids uuid[]      NOT NULL,
    totals   bigint[]    NOT NULL,
    bound    bigint      NOT NULL,
    PRIMARY KEY (month, metric)
);

-- Whether an event's country passes a question's filters: `countries` keeps
-- only those (an empty array keeps every country), `exclude_countries` drops
-- the listed ones.
CREATE FUNCTION country_matches(country text, countries text[], exclude_countries text[])
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (cardinality(countries) = 0 OR country = ANY (countries))
       AND country <> ALL (exclude_countries);

-- Whether a rollup row is one a question reads: the row of every country
-- together ('*') when the question neither filters nor splits by country,
-- otherwise the rows of the countries that pass the filters.
CREATE FUNCTION rollup_matches(
    country text, countries text[], exclude_countries text[], per_country boolean
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN per_country OR cardinality(countries) > 0 OR cardinality(exclude_countries) > 0
        THEN country <> '*' AND country_matches(country, countries, exclude_countries)
    ELSE country = '*'
END;

-- The offset of `zone` at `range_start` and every change of it up to
-- `range_end`: (instant, offset in force from then on). Offsets are sampled
-- every 12 hours and each change is found to the microsecond by bisection, so
-- a zone may change its offset at most once between two samples.
CREATE FUNCTION zone_changes(range_start timestamptz, range_end timestamptz, zone text)
RETURNS TABLE (at timestamptz, utc_offset interval)
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT range_start, zone_offset(range_start, zone)
    UNION ALL
    SELECT t, zone_offset(t, zone)
    FROM (
        SELECT next_transition(sample, least(sample + interval '12 hours', range_end), zone) AS t
        FROM generate_series(range_start, range_end - interval '1 microsecond', interval '12 hours')
            AS sample
        WHERE zone_offset(sample, zone)
              <> zone_offset(least(sample + interval '12 hours', range_end), zone)
    ) AS changes
$$;

-- Events stored before this migration are folded like any others.
INSERT INTO pending_events
    (half, user_id, occurred_at, word_count, study_seconds, country, received_at)
SELECT 0, user_id, occurred_at, word_count, study_seconds, country, received_at
FROM events;
