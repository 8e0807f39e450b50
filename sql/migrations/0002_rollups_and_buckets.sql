-- Pre-aggregated activity per user, 15-minute UTC slot and country, kept in step
-- with events by the ingest statement. Every UTC offset in use is a multiple of
-- 15 minutes, so these slots re-aggregate exactly into the hours, days, weeks and
-- months of any time zone; the few bucket edges that fall inside a slot (an odd
-- fixed offset, a transition at 00:01) are read from events instead.
CREATE TABLE rollups (
    user_id       uuid        NOT NULL,
    slot          timestamptz NOT NULL,
    country       text        NOT NULL,
    events        integer     NOT NULL,
    word_count    bigint      NOT NULL,
    study_seconds bigint      NOT NULL,
    PRIMARY KEY (user_id, slot, country)
);

-- Everyone over a time range.
CREATE INDEX rollups_slot_idx ON rollups (slot);

INSERT INTO rollups (user_id, slot, country, events, word_count, study_seconds)
SELECT user_id,
       date_bin('15 minutes', occurred_at, timestamptz 'epoch'),
       country,
       count(*),
       sum(word_count),
       sum(study_seconds)
FROM events
GROUP BY 1, 2, 3;

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
        wall := date_trunc(unit, range_start AT TIME ZONE zone);
        WHILE first_reach(wall, zone) > range_start LOOP
            wall := wall - step;
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

-- The first slot boundary at or after `instant`.
CREATE FUNCTION slot_ceiling(instant timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin('15 minutes', instant - interval '1 microsecond', timestamptz 'epoch')
       + interval '15 minutes';

-- Activity in [lo, hi), one row per rollup or event, optionally of one user and
-- of some countries only. Whole 15-minute slots come from rollups; the ragged
-- edges of a range that does not start or end on a slot boundary come from
-- events. `only_user` NULL means everyone; an empty `countries` means every
-- country, events without one included.
CREATE FUNCTION activity(
    lo timestamptz, hi timestamptz, only_user uuid, countries text[], exclude_countries text[]
)
RETURNS TABLE (user_id uuid, country text, events bigint, word_count bigint,
               study_seconds bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT r.user_id, r.country, r.events, r.word_count, r.study_seconds
    FROM rollups AS r
    WHERE r.slot >= least(slot_ceiling(lo), hi)
      AND r.slot < greatest(slot_floor(hi), least(slot_ceiling(lo), hi))
      AND (only_user IS NULL OR r.user_id = only_user)
      AND (cardinality(countries) = 0 OR r.country = ANY (countries))
      AND r.country <> ALL (exclude_countries)
    UNION ALL
    SELECT e.user_id, e.country, 1, e.word_count, e.study_seconds
    FROM events AS e
    WHERE ((e.occurred_at >= lo AND e.occurred_at < least(slot_ceiling(lo), hi))
           OR (e.occurred_at >= greatest(slot_floor(hi), least(slot_ceiling(lo), hi))
               AND e.occurred_at < hi))
      AND (only_user IS NULL OR e.user_id = only_user)
      AND (cardinality(countries) = 0 OR e.country = ANY (countries))
      AND e.country <> ALL (exclude_countries)
$$;
