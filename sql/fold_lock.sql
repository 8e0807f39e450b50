-- Makes this session the folder, unless another one is: true when the lock is
-- taken, false when another session holds it. Held from sealing a half of the
-- log to emptying it (fold_unlock.sql), so halves are sealed one at a time.
-- The key is an arbitrary constant owned by this service.
SELECT pg_try_advisory_lock(7436021955162518310);
