-- Every time zone name PostgreSQL knows, without the posix/ and right/ mirrors
-- of the database and its pseudo-zones.
SELECT name
FROM pg_timezone_names
WHERE name !~ '^(posix|right)/'
  AND name NOT IN ('localtime', 'posixrules', 'Factory');
