-- Nothing to do on SQLite: V4 created nothing here (the two stores keep one
-- list of schema versions).
SELECT 1;
