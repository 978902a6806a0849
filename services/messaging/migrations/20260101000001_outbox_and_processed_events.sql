-- Warren messaging core: the transactional outbox and the consumer's processed-event log.
-- Applied by warren_messaging::schema::migrate, tracked in _warren_messaging_migrations so it
-- never collides with the service's own migrations.

CREATE TABLE outbox (
    id              BIGSERIAL PRIMARY KEY,
    event_id        UUID        NOT NULL UNIQUE,
    event_type      TEXT        NOT NULL,
    aggregate_id    TEXT        NOT NULL,
    exchange        TEXT        NOT NULL,
    routing_key     TEXT        NOT NULL,
    correlation_id  TEXT        NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    payload         TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at    TIMESTAMPTZ,
    -- Set when the broker returned or refused the row: it waits until then, and so do the
    -- later rows of the same aggregate, which keeps per-aggregate order.
    next_attempt_at TIMESTAMPTZ,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    last_error      TEXT
);

-- The relay reads unpublished rows in id order; published rows only wait for retention.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_held_back ON outbox (aggregate_id, id)
    WHERE published_at IS NULL AND next_attempt_at IS NOT NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Wake relays at commit time: one notification per inserting statement, none per row.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('warren_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- The idempotent consumer records each handled event in the same transaction as its effect.
CREATE TABLE processed_events (
    consumer     TEXT        NOT NULL,
    event_id     UUID        NOT NULL,
    event_type   TEXT        NOT NULL,
    processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
CREATE INDEX processed_events_processed_at ON processed_events (processed_at);
