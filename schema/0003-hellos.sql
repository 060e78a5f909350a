-- 0003: the hello the upstream sent, per API key.
--
-- The relay answers an SDK's websocket with a hello at once; once an
-- upstream websocket of that key has brought the backend's own hello, later
-- SDK connections of the key get its fields (queue_hello_get).  Kept here so
-- that a restart remembers it.

CREATE TABLE hellos (
	api_key    TEXT PRIMARY KEY,
	hello      TEXT    NOT NULL,
	updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
