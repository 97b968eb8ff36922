-- A submit that finds a free slot assigns its job in the insert itself when nothing of
-- the slot's backends waits in the line of owners; this index answers "does anything of
-- these backends wait" with a probe, whatever else is queued.
CREATE INDEX queue_heads_by_backend ON queue_heads (backend);
