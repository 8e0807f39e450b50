-- Samples the sealed half $1 of the log, so that the fold's statements are
-- planned for its real size. Commits on its own, after the seal: the appends
-- have left the half by then, and the fold's hold on it comes later.
SELECT analyze_pending_half($1);
