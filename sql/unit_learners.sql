-- Everyone's learners per whole unit (and country): the count, and the set
-- itself where a run asks for it.
--
-- $1 units, $2 run starts, $3 run ends, $4 whether each run needs the sets;
-- $5 countries, $6 excluded countries, $7 per country.
-- Each run is its own index range scan (LATERAL, kept apart by OFFSET 0), never a
-- join over the whole table.
SELECT run.unit, r.start, r.country, r.learner_count,
       CASE WHEN run.sets THEN r.learners END AS learners
FROM unnest($1::text[], $2::timestamptz[], $3::timestamptz[], $4::boolean[])
    AS run (unit, lo, hi, sets)
CROSS JOIN LATERAL (
    SELECT r.start, r.country, r.learner_count, r.learners
    FROM rollups AS r
    WHERE r.unit = run.unit AND r.start >= run.lo AND r.start < run.hi
      AND rollup_matches(r.country, $5, $6, $7)
    OFFSET 0
) AS r;
