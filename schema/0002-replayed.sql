-- 0002: dead letters the queue CLI moved back into messages.
--
-- `watchrtc-relay queue dead replay` runs beside a live relay, whose
-- in-memory index does not know the rows it moves.  It lists their ids here;
-- the relay's writer notices the CLI's commit, loads those rows and forgets
-- their ids.  A relay that starts loads every row of messages anyway and
-- empties this table.

CREATE TABLE replayed (
	id INTEGER PRIMARY KEY
);
