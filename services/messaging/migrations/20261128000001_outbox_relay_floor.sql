-- Warren messaging core: what lets the relay skip rows it already published.
--
-- Published rows leave dead entries in outbox_unpublished until VACUUM; a relay that scanned
-- from the start of that index on every select would walk all of them. The relay scans from a
-- floor below which every row is published, and raises the floor only once every transaction
-- that could still add a row beneath it has ended (read from pg_current_snapshot()). That
-- holds only if a row's transaction id is assigned before its row id: this default does so.

CREATE FUNCTION outbox_next_id() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_current_xact_id();
    RETURN nextval('outbox_id_seq');
END;
$$;
ALTER TABLE outbox ALTER COLUMN id SET DEFAULT outbox_next_id();

-- The lowest held-back row bounds the floor; held-back rows are few, so this index is tiny.
CREATE INDEX outbox_held_back_id ON outbox (id)
    WHERE published_at IS NULL AND next_attempt_at IS NOT NULL;
