-- Connections ordinary roles may open: what the workers' pools share with every other
-- client of the server.
SELECT current_setting('max_connections')::integer
       - current_setting('superuser_reserved_connections')::integer;
