-- Orders worker: orders, their lines with the reservation each holds at inventory, and the
-- history of every status change. Applied by warren_orders::start (tracked in _sqlx_migrations).

CREATE TABLE orders (
    id              UUID        PRIMARY KEY,
    user_id         UUID        NOT NULL,
    status          TEXT        NOT NULL CHECK (status IN
                        ('pending', 'reserved', 'completing', 'processing', 'cancelled')),
    -- Why the order was cancelled (insufficient_stock, unknown_product, reservation_expired,
    -- payment_failed, customer_request, order_cancelled); NULL while it is not.
    reason          TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Reservation driver: failed rounds so far and when the next round is due (NULL when no
    -- line of the order still waits for inventory's answer).
    reserve_attempts INTEGER    NOT NULL DEFAULT 0,
    next_reserve_at TIMESTAMPTZ,
    last_reserve_error TEXT
);

-- The driver looks for pending orders whose next round is due.
CREATE INDEX orders_due_for_reservation ON orders (next_reserve_at)
    WHERE status = 'pending' AND next_reserve_at IS NOT NULL;

CREATE TABLE order_items (
    order_id           UUID    NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    product_id         UUID    NOT NULL,
    quantity           INTEGER NOT NULL CHECK (quantity >= 1),
    position           INTEGER NOT NULL,
    reservation_id     UUID,
    -- requested: not yet accepted by inventory; accepted: inventory answered 2xx and its
    -- inventory.reserved event is on its way; then reserved, confirmed, released (from events)
    -- or refused (inventory answered 409/404).
    reservation_status TEXT    NOT NULL DEFAULT 'requested' CHECK (reservation_status IN
                           ('requested', 'accepted', 'reserved', 'confirmed', 'released', 'refused')),
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE order_history (
    id       BIGSERIAL   PRIMARY KEY,
    order_id UUID        NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status   TEXT        NOT NULL,
    reason   TEXT,
    at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX order_history_by_order ON order_history (order_id, id);
