-- Warren messaging core: the outbox keeps only what is still to publish.
--
-- Marking a row published used to rewrite it, payload and all, plus every index: most of the
-- relay's database work. Now a confirmed row is deleted from `outbox` and, while a retention
-- is configured, appended to `outbox_published`, which has only a BRIN index on the time it
-- was published (rows arrive in that order, so the index is nearly free and the retention
-- cleanup still finds old rows without a full scan).

CREATE TABLE outbox_published (
    id             BIGINT      NOT NULL,
    event_id       UUID        NOT NULL,
    event_type     TEXT        NOT NULL,
    aggregate_id   TEXT        NOT NULL,
    exchange       TEXT        NOT NULL,
    routing_key    TEXT        NOT NULL,
    correlation_id TEXT        NOT NULL,
    occurred_at    TIMESTAMPTZ NOT NULL,
    payload        TEXT        NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL,
    published_at   TIMESTAMPTZ NOT NULL,
    -- Publish attempts, the successful one included.
    attempts       INTEGER     NOT NULL
);

INSERT INTO outbox_published
SELECT id, event_id, event_type, aggregate_id, exchange, routing_key, correlation_id,
       occurred_at, payload, created_at, published_at, attempts
FROM outbox WHERE published_at IS NOT NULL;
DELETE FROM outbox WHERE published_at IS NOT NULL;

DROP INDEX outbox_unpublished;
DROP INDEX outbox_published_at;
DROP INDEX outbox_held_back;
ALTER TABLE outbox DROP COLUMN published_at;

CREATE INDEX outbox_published_at ON outbox_published USING brin (published_at);

-- Rows the broker returned or refused wait until next_attempt_at, and so do the later rows
-- of their aggregate. Both indexes hold only such rows, so they stay tiny.
CREATE INDEX outbox_held_back ON outbox (aggregate_id, id) WHERE next_attempt_at IS NOT NULL;
CREATE INDEX outbox_held_back_id ON outbox (id) WHERE next_attempt_at IS NOT NULL;

-- The outbox is a queue: rows come and go all the time. Vacuum it after a fixed number of
-- deletes rather than a fraction of its (small) size, so dead index entries never pile up.
ALTER TABLE outbox SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

-- The relay scans from a floor below which nothing is left, and raises the floor only once
-- every transaction that could still add a row beneath it has ended (read from
-- pg_current_snapshot()). That holds only if a row's transaction id is assigned before its row
-- id, which this default does.
CREATE FUNCTION outbox_next_id() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN nextval('outbox_id_seq');
END;
$$;
ALTER TABLE outbox ALTER COLUMN id SET DEFAULT outbox_next_id();
