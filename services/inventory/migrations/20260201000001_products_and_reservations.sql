-- Inventory: products with their stock counters, and reservations of stock for order lines.
-- Tracked by sqlx in _sqlx_migrations; the messaging tables have their own migration table.

CREATE TABLE products (
    id                  UUID        PRIMARY KEY,
    name                TEXT        NOT NULL CHECK (length(name) > 0),
    total_received      BIGINT      NOT NULL CHECK (total_received >= 0),
    available           BIGINT      NOT NULL CHECK (available >= 0),
    reserved            BIGINT      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold                BIGINT      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    low_stock_threshold BIGINT      NOT NULL DEFAULT 10 CHECK (low_stock_threshold >= 0),
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- Every unit ever received is exactly one of: available, reserved, sold.
    CONSTRAINT products_stock_balances CHECK (available + reserved + sold = total_received)
);

CREATE TABLE reservations (
    id             UUID        PRIMARY KEY,
    order_id       UUID        NOT NULL,
    product_id     UUID        NOT NULL REFERENCES products (id),
    quantity       INTEGER     NOT NULL CHECK (quantity > 0),
    status         TEXT        NOT NULL CHECK (status IN ('reserved', 'confirmed', 'released')),
    release_reason TEXT        CHECK (release_reason IN ('order_cancelled', 'reservation_expired', 'payment_failed')),
    expires_at     TIMESTAMPTZ NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- One reservation per order line: the idempotency key of POST /inventory/reserve.
    CONSTRAINT reservations_order_line UNIQUE (order_id, product_id),
    CONSTRAINT reservations_reason_iff_released
        CHECK ((status = 'released') = (release_reason IS NOT NULL))
);

-- The expiry sweeper's scan.
CREATE INDEX reservations_status_expires_at ON reservations (status, expires_at);
CREATE INDEX reservations_product_id ON reservations (product_id);
