-- `billing-server stripe sync` (issue 16): where each backfill run stands,
-- saved after every page it applied, so that an interrupted run resumes
-- where it stopped. Starting a run supersedes the one still running.
CREATE TABLE stripe_backfill_runs (
    id          uuid PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('running', 'finished', 'superseded')),
    -- The lists' created[gte] (Unix seconds), if the run has one.
    since       bigint,
    -- The list being paged, and the last object of its last applied page.
    resource    text NOT NULL,
    after_id    text,
    -- The run's counts so far (seen, created, updated, ... per list).
    counts      jsonb NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE INDEX stripe_backfill_runs_running_idx ON stripe_backfill_runs (started_at DESC) WHERE status = 'running';
