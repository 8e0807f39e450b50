-- Empties the folded half $1 of the log row by row, waiting for no answer.
SELECT delete_pending_half($1);
