-- Whether the log holds any event.
SELECT EXISTS (SELECT FROM pending_events);
