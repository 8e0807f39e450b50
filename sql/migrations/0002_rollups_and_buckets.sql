-- Pre-aggregated activity, kept in step with events by the ingest statement.
--
-- slot_rollups holds sums per 15-minute UTC slot, user and country. Every UTC
-- offset in use is a multiple of 15 minutes, so slots re-aggregate exactly into
-- the hours, days, weeks and months of any time zone; the few bucket edges that
-- fall inside a slot (an odd fixed offset, a transition at 00:01) are read from
-- events instead. day_rollups holds the same sums per UTC day, for the whole
-- UTC days inside long ranges. Both are keyed by time first: questions about
-- everyone read a time range, and the covering keys answer them from the index
-- alone. user_id stays in every key, so the tables can be distributed by it.
CREATE TABLE slot_rollups (
    slot          timestamptz NOT NULL,
    user_id       uuid        NOT NULL,
    country       text        NOT NULL,
    events        integer     NOT NULL,
    word_count    bigint      NOT NULL,
    study_seconds bigint      NOT NULL,
    PRIMARY KEY (slot, user_id, country) INCLUDE (events, word_count, study_seconds)
);

CREATE TABLE day_rollups (
    day           timestamptz NOT NULL,
    user_id       uuid        NOT NULL,
    country       text        NOT NULL,
    events        integer     NOT NULL,
    word_count    bigint      NOT NULL,
    study_seconds bigint      NOT NULL,
    PRIMARY KEY (day, user_id, country) INCLUDE (events, word_count, study_seconds)
);

-- Offset from UTC of `instant` in time zone `zone` (a name PostgreSQL knows).
CREATE FUNCTION zone_offset(instant timestamptz, zone text) RETURNS interval
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (instant AT TIME ZONE zone) - (instant AT TIME ZONE 'UTC');

-- The first instant in (after, upto] whose offset differs from the offset at
-- `after`, found by bisection to the microsecond; NULL when there is none.
-- Assumes at most one transition in the interval (intervals here are at most
-- two days long; no zone changes its offset twice in two days).
CREATE FUNCTION next_transition(after timestamptz, upto timestamptz, zone text)
RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    before_offset interval := zone_offset(after, zone);
    lo timestamptz := after;
    hi timestamptz := upto;
    mid timestamptz;
BEGIN
    IF zone_offset(upto, zone) = before_offset THEN
        RETURN NULL;
    END IF;
    -- Invariant: offset(lo) = before_offset <> offset(hi).
    WHILE hi - lo > interval '1 microsecond' LOOP
        mid := lo + (hi - lo) / 2;
        IF zone_offset(mid, zone) = before_offset THEN
            lo := mid;
        ELSE
            hi := mid;
        END IF;
    END LOOP;
    RETURN hi;
END
$$;

-- The first instant whose local time in `zone` is at or after the wall time
-- `wall`: the start of the day (or week, month) beginning at `wall`. Where
-- `wall` does not exist (a daylight-saving gap) that is the transition; where
-- it happens twice (a repeated hour) it is the first occurrence.
CREATE FUNCTION first_reach(wall timestamp, zone text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    -- PostgreSQL resolves a wall time in a gap with the earlier offset (landing
    -- after the gap) and a repeated one with the later offset (the second
    -- occurrence): either way its local time is at or after `wall`.
    resolved timestamptz := wall AT TIME ZONE zone;
    transition timestamptz := next_transition(resolved - interval '2 days', resolved, zone);
    earlier timestamptz;
BEGIN
    IF transition IS NULL THEN
        RETURN resolved;
    END IF;
    earlier := (wall - zone_offset(transition - interval '1 microsecond', zone)) AT TIME ZONE 'UTC';
    IF earlier < transition THEN
        RETURN earlier;  -- reached before the transition
    ELSIF transition AT TIME ZONE zone >= wall THEN
        RETURN transition;  -- jumped over by the transition
    END IF;
    RETURN resolved;
END
$$;

-- Consecutive calendar buckets of `unit` ('hour', 'day', 'week' or 'month') in
-- `zone` covering [range_start, range_end), each with its first instant, the
-- first instant of the next bucket, and its local start time and UTC offset.
-- At most `max_buckets` + 1 rows are returned, so callers can refuse larger
-- requests without computing them.
--
-- A day (week, month) starts the first time the local clock reaches its
-- midnight (Monday, the 1st). An hour is a stretch of constant local hour and
-- constant offset, so a repeated hour is two buckets and a 30-minute shift
-- (Australia/Lord_Howe) starts a bucket of its own.
CREATE FUNCTION calendar_buckets(
    range_start timestamptz, range_end timestamptz, unit text, zone text, max_buckets integer
)
RETURNS TABLE (bucket integer, bucket_start timestamptz, bucket_end timestamptz,
               local_start timestamp, utc_offset interval)
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    step interval := ('1 ' || unit)::interval;
    cursor_at timestamptz;
    next_at timestamptz;
    wall timestamp;
    hour_end timestamptz;
BEGIN
    IF unit NOT IN ('hour', 'day', 'week', 'month') THEN
        RAISE EXCEPTION 'unknown bucket unit %', unit;
    END IF;
    -- The bucket holding range_start.
    IF unit = 'hour' THEN
        cursor_at := date_trunc('hour', range_start AT TIME ZONE zone) AT TIME ZONE 'UTC'
                     - zone_offset(range_start, zone);
        -- A transition since the wall-clock hour began starts the bucket instead.
        cursor_at := coalesce(next_transition(cursor_at, range_start, zone), cursor_at);
    ELSE
        -- Local time can run behind the bucket it is in (after a fall-back
        -- across midnight), so step both ways to the last start <= range_start.
        wall := date_trunc(unit, range_start AT TIME ZONE zone);
        WHILE first_reach(wall, zone) > range_start LOOP
            wall := wall - step;
        END LOOP;
        WHILE first_reach(wall + step, zone) <= range_start LOOP
            wall := wall + step;
        END LOOP;
        cursor_at := first_reach(wall, zone);
    END IF;

    bucket := 0;
    WHILE cursor_at < range_end AND bucket <= max_buckets LOOP
        IF unit = 'hour' THEN
            hour_end := (date_trunc('hour', cursor_at AT TIME ZONE zone) + step) AT TIME ZONE 'UTC'
                        - zone_offset(cursor_at, zone);
            next_at := coalesce(next_transition(cursor_at, hour_end, zone), hour_end);
        ELSE
            wall := date_trunc(unit, cursor_at AT TIME ZONE zone) + step;
            next_at := first_reach(wall, zone);
            WHILE next_at <= cursor_at LOOP
                wall := wall + step;
                next_at := first_reach(wall, zone);
            END LOOP;
        END IF;
        bucket_start := cursor_at;
        bucket_end := next_at;
        local_start := cursor_at AT TIME ZONE zone;
        utc_offset := zone_offset(cursor_at, zone);
        RETURN NEXT;
        bucket := bucket + 1;
        cursor_at := next_at;
    END LOOP;
END
$$;

-- The 15-minute UTC slot holding `instant`.
CREATE FUNCTION slot_floor(instant timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin('15 minutes', instant, timestamptz 'epoch');

-- The UTC day holding `instant`.
CREATE FUNCTION day_floor(instant timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin('1 day', instant, timestamptz 'epoch');

-- [lo, hi) splits into ragged edges read from events, whole slots read from
-- slot_rollups, and whole UTC days read from day_rollups:
--   lo .. slots_start .. days_start .. days_end .. slots_end .. hi
CREATE FUNCTION slots_start(lo timestamptz, hi timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(slot_floor(lo - interval '1 microsecond') + interval '15 minutes', hi);

CREATE FUNCTION slots_end(lo timestamptz, hi timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN greatest(slot_floor(hi), slots_start(lo, hi));

CREATE FUNCTION days_start(lo timestamptz, hi timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN least(day_floor(slots_start(lo, hi) - interval '1 microsecond') + interval '1 day',
             slots_end(lo, hi));

CREATE FUNCTION days_end(lo timestamptz, hi timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN greatest(day_floor(slots_end(lo, hi)), days_start(lo, hi));

-- Activity in [lo, hi), one row per rollup or event, of everyone or of
-- `only_user`, and of some countries only (an empty `countries` means every
-- country, events without one included). For everyone, each part of the range
-- comes from the coarsest table that covers it exactly (see slots_start). One
-- learner's events are few, so they are read directly. With a known
-- `only_user` the planner drops the branches that do not apply.
CREATE FUNCTION activity(
    lo timestamptz, hi timestamptz, only_user uuid, countries text[], exclude_countries text[]
)
RETURNS TABLE (user_id uuid, country text, events bigint, word_count bigint,
               study_seconds bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT d.user_id, d.country, d.events, d.word_count, d.study_seconds
    FROM day_rollups AS d
    WHERE only_user IS NULL
      AND d.day >= days_start(lo, hi) AND d.day < days_end(lo, hi)
      AND (cardinality(countries) = 0 OR d.country = ANY (countries))
      AND d.country <> ALL (exclude_countries)
    UNION ALL
    SELECT s.user_id, s.country, s.events, s.word_count, s.study_seconds
    FROM slot_rollups AS s
    WHERE only_user IS NULL
      AND s.slot >= slots_start(lo, hi) AND s.slot < days_start(lo, hi)
      AND (cardinality(countries) = 0 OR s.country = ANY (countries))
      AND s.country <> ALL (exclude_countries)
    UNION ALL
    SELECT s.user_id, s.country, s.events, s.word_count, s.study_seconds
    FROM slot_rollups AS s
    WHERE only_user IS NULL
      AND s.slot >= days_end(lo, hi) AND s.slot < slots_end(lo, hi)
      AND (cardinality(countries) = 0 OR s.country = ANY (countries))
      AND s.country <> ALL (exclude_countries)
    UNION ALL
    SELECT e.user_id, e.country, 1, e.word_count, e.study_seconds
    FROM events AS e
    WHERE only_user IS NULL
      AND e.occurred_at >= lo AND e.occurred_at < slots_start(lo, hi)
      AND (cardinality(countries) = 0 OR e.country = ANY (countries))
      AND e.country <> ALL (exclude_countries)
    UNION ALL
    SELECT e.user_id, e.country, 1, e.word_count, e.study_seconds
    FROM events AS e
    WHERE only_user IS NULL
      AND e.occurred_at >= slots_end(lo, hi) AND e.occurred_at < hi
      AND (cardinality(countries) = 0 OR e.country = ANY (countries))
      AND e.country <> ALL (exclude_countries)
    UNION ALL
    SELECT e.user_id, e.country, 1, e.word_count, e.study_seconds
    FROM events AS e
    WHERE e.user_id = only_user
      AND e.occurred_at >= lo AND e.occurred_at < hi
      AND (cardinality(countries) = 0 OR e.country = ANY (countries))
      AND e.country <> ALL (exclude_countries)
$$;

-- Events stored before this migration.
INSERT INTO slot_rollups (slot, user_id, country, events, word_count, study_seconds)
SELECT slot_floor(occurred_at), user_id, country, count(*), sum(word_count), sum(study_seconds)
FROM events
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;

INSERT INTO day_rollups (day, user_id, country, events, word_count, study_seconds)
SELECT day_floor(occurred_at), user_id, country, count(*), sum(word_count), sum(study_seconds)
FROM events
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3;
