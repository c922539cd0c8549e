-- The SQLite twin of migrations/postgres/V15 (same dialect mapping as V1).

ALTER TABLE devices ADD COLUMN air_gapped INTEGER NOT NULL DEFAULT 0 CHECK (air_gapped IN (0, 1));
