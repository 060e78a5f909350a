-- 0001: the message queue, its dead letters, and the relay's identity.
--
-- Message ids come from AUTOINCREMENT so that an id is never handed out
-- twice, even after the table empties: the id names the message upstream
-- (Idempotency-Key) and must not collide with a message delivered earlier.

CREATE TABLE messages (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	received_ms  INTEGER NOT NULL,
	session      TEXT    NOT NULL,
	target       TEXT    NOT NULL,
	content_type TEXT,
	xff          TEXT,
	peer_ip      TEXT,
	user_agent   TEXT,
	origin       TEXT,
	api_key      TEXT,
	conn_id      TEXT,
	seq          INTEGER NOT NULL DEFAULT 0,
	attempts     INTEGER NOT NULL DEFAULT 0,
	body         BLOB    NOT NULL
);

-- A message that cannot be delivered: the same columns, kept under the
-- same id, with why it was given up.
CREATE TABLE dead_letters (
	id           INTEGER PRIMARY KEY,
	received_ms  INTEGER NOT NULL,
	session      TEXT    NOT NULL,
	target       TEXT    NOT NULL,
	content_type TEXT,
	xff          TEXT,
	peer_ip      TEXT,
	user_agent   TEXT,
	origin       TEXT,
	api_key      TEXT,
	conn_id      TEXT,
	seq          INTEGER NOT NULL DEFAULT 0,
	attempts     INTEGER NOT NULL DEFAULT 0,
	body         BLOB    NOT NULL,
	dead_ms      INTEGER NOT NULL,
	reason       TEXT    NOT NULL,
	status       INTEGER NOT NULL DEFAULT 0,
	detail       TEXT
);
CREATE INDEX dead_letters_reason ON dead_letters(reason);

-- Key/value facts about this database, e.g. the relay's instance id.
CREATE TABLE meta (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
) WITHOUT ROWID;
