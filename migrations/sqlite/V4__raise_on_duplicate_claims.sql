-- Nothing to do on SQLite: its claim runs on its own and reports a duplicate
-- at once (PostgreSQL's needs a function; the two stores keep one list of
-- schema versions).
SELECT 1;
