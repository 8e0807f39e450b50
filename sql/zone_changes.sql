-- The UTC offset of zone $3 at $1 and every change of it up to $2 (see
-- zone_changes() in migration 0003).
SELECT at, utc_offset FROM zone_changes($1, $2, $3) ORDER BY at;
