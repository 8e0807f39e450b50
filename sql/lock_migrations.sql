-- Serialises start-up migrations across servers sharing one database, until the
-- enclosing transaction ends. The key is an arbitrary constant owned by this service.
SELECT pg_advisory_xact_lock(7436021955162518309);
