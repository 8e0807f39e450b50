-- The learner sets stored for these rollup keys ($1 units, $2 starts, $3 countries).
SELECT r.unit, r.start, r.country, r.learners
FROM unnest($1::text[], $2::timestamptz[], $3::text[]) AS k (unit, start, country)
JOIN rollups AS r USING (unit, start, country);
