//! The messaging core against the real RabbitMQ and PostgreSQL: outbox → relay → consumer,
//! duplicates, retries, dead-lettering, crashes and faults.

use std::str::FromStr;
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;
use warren_messaging::retry;
use warren_messaging::topology::{
    INVENTORY_EXCHANGE, ORDERS_INVENTORY_EVENTS_QUEUE, dead_letter_queue,
};
use warren_messaging::{
    ConsumerConfig, Envelope, HandlerError, IdempotentConsumer, OutboxRelay, RetryPolicy,
};
use warren_tests::eventually;
use warren_tests::harness::{Harness, TEST_MAX_ATTEMPTS, enqueue_in, stock_replenished};
use warren_tests::support::{apply_topology, header};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_feeds_consumer_end_to_end_in_aggregate_order() {
    let mut h = Harness::start("e2e").await;
    h.spawn_relay();
    h.spawn_consumer();
    let products: Vec<Uuid> = (0..10).map(|_| Uuid::new_v4()).collect();
    for seq in 0..30 {
        for p in &products {
            h.enqueue(*p, seq).await;
        }
    }
    eventually(WAIT, "300 effects", || async { h.effects().await == 300 }).await;
    assert!(
        h.metrics.is_relay_connected(),
        "the relay reports its connection"
    );
    assert!(h.metrics.is_consuming(ORDERS_INVENTORY_EVENTS_QUEUE));
    let sequences = h.sequences().await;
    for p in &products {
        assert_eq!(
            sequences[p],
            (0..30).collect::<Vec<_>>(),
            "order of product {p}"
        );
    }
    // The consumer can apply an event before the relay has had the broker's confirm and
    // marked the row, so the marks and the counter are waited for, not assumed.
    eventually(WAIT, "every row marked published and counted", || async {
        h.unpublished().await == 0
            && h.metrics.encode().contains(
                "test_events_published_total{event_type=\"inventory.stock_replenished\"} 300",
            )
    })
    .await;
    let kept: (i64, Option<i32>) =
        sqlx::query_as("SELECT count(*), max(attempts) FROM outbox_published")
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert_eq!(
        kept,
        (300, Some(1)),
        "published rows are kept for the retention"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_event_delivered_twice_is_applied_once() {
    let mut h = Harness::start("dup").await;
    h.spawn_consumer();
    let product = Uuid::new_v4();
    let replenished = |level| {
        Envelope::new(
            warren_messaging::Event::StockReplenished(warren_messaging::events::StockReplenished {
                product_id: product,
                quantity_added: warren_messaging::events::Quantity::new(3).unwrap(),
                new_stock_level: level,
            }),
            "test-service",
            "corr-dup",
        )
    };
    let env = replenished(7);
    let body = env.to_json();
    let id = env.event_id.to_string();
    h.vhost
        .publish(INVENTORY_EXCHANGE, env.event_type(), &body, Some(&id))
        .await;
    eventually(WAIT, "the first delivery applied", || async {
        h.effects_of(env.event_id).await == 1
    })
    .await;
    // Alone, so it is found a duplicate on the one-event path (its failed insert rolled back).
    h.vhost
        .publish(INVENTORY_EXCHANGE, env.event_type(), &body, Some(&id))
        .await;
    eventually(WAIT, "the second delivery skipped", || async {
        h.metrics.encode().contains("status=\"duplicate\"} 1")
    })
    .await;
    assert_eq!(h.effects_of(env.event_id).await, 1);
    // The same aggregate's lane, on the same connection, goes on applying new events.
    let next = replenished(10);
    let next_id = next.event_id.to_string();
    h.vhost
        .publish(
            INVENTORY_EXCHANGE,
            next.event_type(),
            &next.to_json(),
            Some(&next_id),
        )
        .await;
    eventually(WAIT, "the next event applied", || async {
        h.effects_of(next.event_id).await == 1
    })
    .await;
    assert_eq!(
        h.vhost.ready_messages(ORDERS_INVENTORY_EVENTS_QUEUE).await,
        0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_with_growing_delays_then_succeeds() {
    let mut h = Harness::start("retry").await;
    h.spawn_relay();
    h.spawn_consumer();
    // Another event of another aggregate right behind it must not wait for the retries.
    let product = Uuid::new_v4();
    let mut tx = h.pool().begin().await.unwrap();
    let flaky = enqueue_in(&mut tx, product, 1).await;
    h.handler.fail(
        flaky,
        vec![
            HandlerError::transient("database timeout"),
            HandlerError::transient("database timeout again"),
        ],
    );
    let bystander = enqueue_in(&mut tx, Uuid::new_v4(), 1).await;
    tx.commit().await.unwrap();

    eventually(WAIT, "bystander handled", || async {
        h.effects_of(bystander).await == 1
    })
    .await;
    assert_eq!(
        h.effects_of(flaky).await,
        0,
        "still waiting in a retry tier"
    );
    eventually(WAIT, "flaky event handled", || async {
        h.effects_of(flaky).await == 1
    })
    .await;
    let attempts = h.handler.attempts_of(flaky);
    assert_eq!(attempts.len(), 3, "two failures, then success");
    let first_wait = attempts[1] - attempts[0];
    let second_wait = attempts[2] - attempts[1];
    assert!(
        first_wait >= Duration::from_millis(300),
        "tier 1 waited {first_wait:?}"
    );
    assert!(
        second_wait >= Duration::from_millis(1200),
        "tier 2 waited {second_wait:?}"
    );
    assert!(second_wait > first_wait);
    assert_eq!(
        h.vhost
            .ready_messages(&dead_letter_queue(ORDERS_INVENTORY_EVENTS_QUEUE))
            .await,
        0
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_and_malformed_messages_are_dead_lettered_with_their_reason() {
    let mut h = Harness::start("dlq").await;
    h.spawn_relay();
    h.spawn_consumer();
    // Failures are scripted before the commit, so the relay cannot beat the script.
    let mut tx = h.pool().begin().await.unwrap();
    let doomed = enqueue_in(&mut tx, Uuid::new_v4(), 1).await;
    h.handler.fail(
        doomed,
        vec![HandlerError::permanent("product does not exist")],
    );
    let exhausted = enqueue_in(&mut tx, Uuid::new_v4(), 2).await;
    h.handler.fail(
        exhausted,
        (0..4)
            .map(|i| HandlerError::transient(format!("down {i}")))
            .collect(),
    );
    tx.commit().await.unwrap();
    h.vhost
        .publish(
            INVENTORY_EXCHANGE,
            "inventory.garbage",
            b"{this is not json",
            None,
        )
        .await;
    h.vhost.publish(INVENTORY_EXCHANGE, "inventory.teleported",
        br#"{"eventType":"inventory.teleported","eventId":"6f1c2f0e-9a51-4c4e-8f5e-2f8f3b2a9d01","timestamp":"2025-10-17T10:00:00Z","version":"1.0","data":{},"metadata":{"service":"x","correlationId":"c"}}"#,
        None,
    )
    .await;
    h.vhost.publish(INVENTORY_EXCHANGE, "inventory.reserved",
        br#"{"eventType":"inventory.reserved","eventId":"6f1c2f0e-9a51-4c4e-8f5e-2f8f3b2a9d02","timestamp":"2025-10-17T10:00:00Z","version":"2.0","data":{},"metadata":{"service":"x","correlationId":"c"}}"#,
        None,
    )
    .await;

    let dlq = dead_letter_queue(ORDERS_INVENTORY_EVENTS_QUEUE);
    eventually(WAIT, "five dead letters", || async {
        h.vhost.ready_messages(&dlq).await == 5
    })
    .await;
    let parked = h.vhost.drain(&dlq).await;
    let mut reasons: Vec<String> = parked
        .iter()
        .map(|m| header(m, retry::REASON_HEADER).unwrap_or_default())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        vec![
            "malformed_json",
            "permanent",
            "retries_exhausted",
            "unknown_type",
            "wrong_version"
        ]
    );
    for m in &parked {
        assert_eq!(
            header(m, retry::ORIGINAL_EXCHANGE_HEADER).as_deref(),
            Some(INVENTORY_EXCHANGE)
        );
        assert!(
            header(m, retry::ORIGINAL_ROUTING_KEY_HEADER)
                .is_some_and(|k| k.starts_with("inventory."))
        );
        assert!(header(m, retry::ERROR_HEADER).is_some_and(|e| !e.is_empty()));
        assert_eq!(
            header(m, retry::QUEUE_HEADER).as_deref(),
            Some(ORDERS_INVENTORY_EVENTS_QUEUE)
        );
        match header(m, retry::REASON_HEADER).as_deref() {
            Some("permanent") => {
                assert!(
                    header(m, retry::ERROR_HEADER)
                        .unwrap()
                        .contains("product does not exist")
                );
                assert_eq!(header(m, retry::ATTEMPTS_HEADER).as_deref(), Some("1"));
            }
            Some("retries_exhausted") => {
                let attempts = TEST_MAX_ATTEMPTS.to_string();
                assert_eq!(
                    header(m, retry::ATTEMPTS_HEADER).as_deref(),
                    Some(attempts.as_str())
                );
                assert_eq!(
                    header(m, retry::ORIGINAL_ROUTING_KEY_HEADER).as_deref(),
                    Some("inventory.stock_replenished"),
                    "the original key survives the retry tiers"
                );
            }
            _ => {}
        }
    }
    assert_eq!(h.effects().await, 0);
    assert_eq!(
        h.vhost.ready_messages(ORDERS_INVENTORY_EVENTS_QUEUE).await,
        0
    );
    let text = h.metrics.encode();
    assert!(
        text.contains("test_events_dlq_total{event_type=\"unknown\"} 3"),
        "{text}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_stopped_between_publish_and_mark_republishes_and_the_consumer_dedups() {
    let mut h = Harness::start("crash").await;
    h.spawn_consumer();
    let product = Uuid::new_v4();
    for seq in 0..20 {
        h.enqueue(product, seq).await;
    }
    // Marking fails as if the relay died right after the broker confirmed the batch.
    sqlx::query(
        "CREATE FUNCTION refuse_mark() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'relay crashed before marking'; END; $$",
    )
    .execute(h.pool())
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER refuse_mark BEFORE DELETE ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_mark()")
        .execute(h.pool())
        .await
        .unwrap();
    let relay: OutboxRelay = h.relay();
    let mut channel = relay.connect().await.expect("relay connects");
    let crashed = relay.relay_batch(&mut channel).await;
    assert!(crashed.is_err(), "marking must fail: {crashed:?}");
    eventually(WAIT, "first copies consumed", || async {
        h.effects().await == 20
    })
    .await;
    assert_eq!(h.unpublished().await, 20, "nothing was marked");

    sqlx::query("DROP TRIGGER refuse_mark ON outbox")
        .execute(h.pool())
        .await
        .unwrap();
    let report = relay.relay_batch(&mut channel).await.expect("second batch");
    assert_eq!(report.published, 20);
    channel.close().await;
    eventually(WAIT, "20 duplicates skipped", || async {
        h.metrics.encode().contains("status=\"duplicate\"} 20")
    })
    .await;
    assert_eq!(h.effects().await, 20, "each event applied once");
    assert_eq!(h.sequences().await[&product], (0..20).collect::<Vec<_>>());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_and_database_connections_killed_mid_stream_lose_nothing() {
    let mut h = Harness::start("fault").await;
    h.spawn_relay();
    h.spawn_consumer();
    let products: Vec<Uuid> = (0..8).map(|_| Uuid::new_v4()).collect();
    // The producer has a pool of its own, spared by the fault, so each of its commits is known.
    let producer_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect_with(
            sqlx::postgres::PgConnectOptions::from_str(&h.db.url)
                .unwrap()
                .application_name("warren-test-producer"),
        )
        .await
        .unwrap();
    let producer_products = products.clone();
    let producer = tokio::spawn(async move {
        for seq in 0..150 {
            for p in &producer_products {
                let mut tx = producer_pool.begin().await.unwrap();
                enqueue_in(&mut tx, *p, seq).await;
                tx.commit().await.unwrap();
            }
        }
    });
    eventually(WAIT, "traffic flowing", || async {
        h.effects().await > 100
    })
    .await;
    // Connections show in the management API a moment after they open.
    eventually(WAIT, "relay and consumer connections listed", || async {
        h.vhost
            .mgmt
            .connections_named(&h.vhost.name, "test-")
            .await
            .len()
            >= 2
    })
    .await;
    let closed = h.vhost.mgmt.connections_named(&h.vhost.name, "test-").await;
    for name in &closed {
        h.vhost.mgmt.close_connection(name).await;
    }
    // PostgreSQL goes away too: every session of the relay, its listener and the consumer.
    let mut admin = h.db.pool.acquire().await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() \
           AND application_name <> 'warren-test-producer'",
    )
    .fetch_all(&mut *admin)
    .await
    .unwrap();
    drop(admin);
    assert!(!killed.is_empty(), "some database sessions were killed");
    producer.await.unwrap();
    eventually(WAIT, "all 1200 events applied", || async {
        h.effects().await >= 1200
    })
    .await;
    let sequences = h.sequences().await;
    for p in &products {
        let mut seen = sequences[p].clone();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen,
            (0..150).collect::<Vec<_>>(),
            "every event of {p} arrived"
        );
        assert_eq!(sequences[p].len(), 150, "and none twice");
    }
    eventually(WAIT, "outbox drained", || async {
        h.unpublished().await == 0
    })
    .await;
    eventually(
        WAIT,
        "relay and consumer report connected again",
        || async {
            h.metrics.is_relay_connected() && h.metrics.is_consuming(ORDERS_INVENTORY_EVENTS_QUEUE)
        },
    )
    .await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_rows_are_kept_for_the_retention_then_removed_and_backlog_is_measured() {
    let h = Harness::start("retention").await;
    let product = Uuid::new_v4();
    let first = h.enqueue(product, 1).await;
    h.enqueue(product, 2).await;
    let mut config = h.relay_config();
    config.retention = Duration::from_secs(3600);
    let relay = h.relay_with(config.clone());
    relay.refresh_backlog_metrics().await.unwrap();
    assert!(h.metrics.encode().contains("test_outbox_backlog 2"));
    let mut channel = relay.connect().await.unwrap();
    assert_eq!(relay.relay_batch(&mut channel).await.unwrap().published, 2);
    assert_eq!(h.kept_published().await, 2);

    h.enqueue(product, 3).await; // not published: must survive the cleanup
    sqlx::query(
        "UPDATE outbox_published SET published_at = now() - interval '2 hours' WHERE event_id = $1",
    )
    .bind(first)
    .execute(h.pool())
    .await
    .unwrap();
    relay.housekeeping().await;
    assert_eq!(
        h.kept_published().await,
        1,
        "only the row past retention is gone"
    );
    assert_eq!(h.unpublished().await, 1);
    assert!(h.metrics.encode().contains("test_outbox_backlog 1"));

    // A zero retention keeps nothing.
    config.retention = Duration::ZERO;
    let relay = h.relay_with(config);
    assert_eq!(relay.relay_batch(&mut channel).await.unwrap().published, 1);
    assert_eq!(h.unpublished().await, 0);
    assert_eq!(h.kept_published().await, 1);
    channel.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_outbox_lose_nothing_and_keep_aggregate_order() {
    let mut h = Harness::start("tworelays").await;
    h.spawn_relay();
    h.spawn_relay();
    h.spawn_consumer();
    let products: Vec<Uuid> = (0..5).map(|_| Uuid::new_v4()).collect();
    for seq in 0..100 {
        for p in &products {
            h.enqueue(*p, seq).await;
        }
    }
    eventually(WAIT, "500 effects", || async { h.effects().await == 500 }).await;
    let sequences = h.sequences().await;
    for p in &products {
        assert_eq!(sequences[p], (0..100).collect::<Vec<_>>(), "order of {p}");
    }
    assert!(
        h.metrics.encode().contains(
            "test_events_consumed_total{event_type=\"inventory.stock_replenished\",status=\"duplicate\"} 0"
        ),
        "the relays took turns: nothing went out twice"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_after_higher_ids_were_published_is_still_published() {
    let mut h = Harness::start("late").await;
    h.spawn_consumer();
    let relay = h.relay();
    let mut channel = relay.connect().await.expect("relay connects");

    let mut slow = h.pool().begin().await.unwrap();
    let late = enqueue_in(&mut slow, Uuid::new_v4(), 1).await; // lower id, not committed yet
    let early = h.enqueue(Uuid::new_v4(), 2).await; // higher id, committed
    let report = relay.relay_batch(&mut channel).await.unwrap();
    assert_eq!(report.published, 1);
    eventually(WAIT, "early event handled", || async {
        h.effects_of(early).await == 1
    })
    .await;

    slow.commit().await.unwrap();
    let report = relay.relay_batch(&mut channel).await.unwrap();
    assert_eq!(
        report.published, 1,
        "the late row is found below the published ids"
    );
    eventually(WAIT, "late event handled", || async {
        h.effects_of(late).await == 1
    })
    .await;
    channel.close().await;
    h.stop().await;
}

/// The leading relay starts its selects above rows it published, but never above a row whose
/// transaction was still open: here the fallback poll (which rescans everything) is an hour
/// away, so only the commit's NOTIFY and a select that still looks low enough can find it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leading_relay_finds_a_late_row_below_everything_it_published() {
    let mut h = Harness::start("late-leader").await;
    h.spawn_consumer();
    let mut config = h.relay_config();
    config.poll_interval = Duration::from_secs(3600);
    h.spawn_relay_with(config);

    let mut slow = h.pool().begin().await.unwrap();
    let late = enqueue_in(&mut slow, Uuid::new_v4(), 0).await; // lowest id, still open
    let mut early = Vec::new();
    for seq in 1..=60 {
        early.push(h.enqueue(Uuid::new_v4(), seq).await);
    }
    eventually(WAIT, "the 60 committed events handled", || async {
        h.effects().await == 60
    })
    .await;
    // More selects after the others ended, so the relay had every chance to move past them.
    for seq in 61..=70 {
        early.push(h.enqueue(Uuid::new_v4(), seq).await);
    }
    eventually(WAIT, "70 events handled", || async {
        h.effects().await == 70
    })
    .await;

    slow.commit().await.unwrap();
    eventually(
        Duration::from_secs(20),
        "the late event handled",
        || async { h.effects_of(late).await == 1 },
    )
    .await;
    for id in early {
        assert_eq!(h.effects_of(id).await, 1);
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_events_stay_in_the_outbox_and_are_reported() {
    let h = Harness::start("unroutable").await;
    // A backoff far longer than the test, so the second batch below cannot find the row due
    // again however slow the machine is.
    let mut config = h.relay_config();
    config.failed_row_backoff = Duration::from_secs(300);
    let relay = h.relay_with(config);
    let mut channel = relay.connect().await.expect("relay connects");
    // Nothing is bound for order.* on the inventory exchange.
    let env = Envelope::new(
        warren_messaging::Event::OrderCompleted(warren_messaging::events::OrderCompleted {
            order_id: Uuid::new_v4(),
            user_id: Uuid::new_v4(),
            items: vec![],
        }),
        "test-service",
        "corr-x",
    );
    let mut tx = h.pool().begin().await.unwrap();
    warren_messaging::enqueue(&mut tx, INVENTORY_EXCHANGE, &env)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let report = relay.relay_batch(&mut channel).await.unwrap();
    assert_eq!((report.published, report.failed), (0, 1));
    let error: Option<String> =
        sqlx::query_scalar("SELECT last_error FROM outbox WHERE event_id = $1")
            .bind(env.event_id)
            .fetch_one(h.pool())
            .await
            .unwrap();
    assert!(error.unwrap_or_default().contains("NO_ROUTE"));
    // It waits with backoff instead of being hammered.
    let report = relay.relay_batch(&mut channel).await.unwrap();
    assert_eq!((report.published, report.failed), (0, 0));
    assert!(
        h.metrics
            .encode()
            .contains("test_events_publish_errors_total{event_type=\"order.completed\"} 1")
    );
    channel.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_refuses_to_start_without_its_topology_and_names_what_is_missing() {
    let h = Harness::start("missing").await;
    let mut config: ConsumerConfig = h.consumer_config();
    config.queue = "no.such.queue".into();
    config.dead_letter_queue = "no.such.queue.dlq".into();
    let consumer = IdempotentConsumer::new(
        h.pool().clone(),
        config,
        h.handler.clone(),
        h.metrics.clone(),
    );
    let err = tokio::time::timeout(
        WAIT,
        consumer.run(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("fails fast")
    .expect_err("missing topology is an error");
    let text = err.to_string();
    assert!(text.contains("queue 'no.such.queue'"), "{text}");
    assert!(text.contains("queue 'no.such.queue.retry.1'"), "{text}");
    h.stop().await;
}

/// A valid `inventory.stock_replenished` event published straight to the inventory exchange (the
/// relay needs the database, which these tests take away); returns its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregate_order_holds_at_first_attempts_and_a_retried_event_is_overtaken_as_documented() {
    let mut h = Harness::start("order-contract").await;
    h.spawn_relay();
    h.spawn_consumer();
    let product = Uuid::new_v4();
    let mut tx = h.pool().begin().await.unwrap();
    let first = enqueue_in(&mut tx, product, 1).await;
    h.handler
        .fail(first, vec![HandlerError::transient("scripted failure")]);
    for seq in 2..=5 {
        enqueue_in(&mut tx, product, seq).await;
    }
    tx.commit().await.unwrap();
    eventually(WAIT, "all five applied", || async {
        h.effects().await == 5
    })
    .await;
    // The four that succeeded at once are in order; the retried one comes after them.
    assert_eq!(h.sequences().await[&product], [2, 3, 4, 5, 1]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_rolled_back_batch_applied_is_committed_once_not_once_per_attempt() {
    let mut h = Harness::start("commit-once").await;
    // One lane, so events queued before the consumer starts reach it in batches.
    let product = Uuid::new_v4();
    let mut ids = Vec::new();
    for seq in 0..20 {
        ids.push(publish_event(&h, product, seq).await);
    }
    // A failure late in a batch rolls back the events before it, which are then handled again
    // one by one.
    for at in [5, 10, 15, 19] {
        h.handler
            .fail(ids[at], vec![HandlerError::transient("scripted failure")]);
    }
    let mut config = h.consumer_config();
    config.lanes = 1;
    h.spawn_consumer_with(config);
    eventually(WAIT, "every event applied", || async {
        h.effects().await == 20
    })
    .await;
    for id in &ids {
        assert_eq!(h.handler.commits_of(*id), 1, "event {id} committed once");
    }
    assert!(
        ids.iter()
            .enumerate()
            .any(|(at, id)| ![5, 10, 15, 19].contains(&at) && h.handler.attempts_of(*id).len() > 1),
        "some event was handled in a batch that rolled back, and handled again"
    );
    h.stop().await;
}

async fn publish_event(h: &Harness, product: Uuid, seq: i64) -> Uuid {
    let env = stock_replenished(product, seq);
    h.vhost.publish_envelope(INVENTORY_EXCHANGE, &env).await;
    env.event_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_holds_deliveries_and_spends_none_of_their_attempts() {
    let mut h = Harness::start("dbdown").await;
    // The consumed queue again with a delivery limit of 1: a second requeue of a message
    // dead-letters it, so any delivery spent on the outage shows in the dead-letter queue.
    let queue = ORDERS_INVENTORY_EVENTS_QUEUE;
    let mgmt = &h.vhost.mgmt;
    mgmt.delete_queue(&h.vhost.name, queue).await;
    mgmt.declare_queue(
        &h.vhost.name,
        queue,
        json!({
            "x-queue-type": "quorum",
            "x-delivery-limit": 1,
            "x-dead-letter-exchange": "warren.dlx",
            "x-dead-letter-routing-key": queue,
        }),
    )
    .await;
    mgmt.bind(&h.vhost.name, INVENTORY_EXCHANGE, queue, "inventory.*")
        .await;
    h.spawn_consumer();
    eventually(WAIT, "consuming", || async {
        h.metrics.is_consuming(queue)
    })
    .await;

    h.db.refuse_connections().await;
    let mut ids = Vec::new();
    for seq in 0..5 {
        ids.push(publish_event(&h, Uuid::new_v4(), seq).await);
    }
    // The fault lasts long enough for several of the lanes' reconnects (0.2 s, 0.4 s, 0.8 s,
    // 1.6 s): each used to requeue the batch.
    tokio::time::sleep(Duration::from_secs(4)).await;
    h.db.allow_connections().await;

    eventually(
        WAIT,
        "every event applied once the database is back",
        || async { h.effects().await >= 5 },
    )
    .await;
    for id in &ids {
        assert_eq!(h.effects_of(*id).await, 1, "event {id} applied once");
        assert_eq!(
            h.handler.attempts_of(*id).len(),
            1,
            "no attempt of {id} spent on the outage"
        );
    }
    assert_eq!(
        h.vhost.ready_messages(&dead_letter_queue(queue)).await,
        0,
        "nothing dead-lettered for the outage"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_park_is_tried_again_with_backoff_without_running_the_handler_again() {
    let mut h = Harness::start("parkfail").await;
    let queue = ORDERS_INVENTORY_EVENTS_QUEUE;
    h.spawn_consumer();
    eventually(WAIT, "consuming", || async {
        h.metrics.is_consuming(queue)
    })
    .await;
    // The first retry tier disappears: parking a failed message there comes back unroutable.
    h.vhost
        .mgmt
        .delete_queue(&h.vhost.name, &RetryPolicy::tier_queue(queue, 1))
        .await;
    let env = stock_replenished(Uuid::new_v4(), 1);
    h.handler.fail(
        env.event_id,
        vec![HandlerError::transient("try again later")],
    );
    h.vhost.publish_envelope(INVENTORY_EXCHANGE, &env).await;
    eventually(WAIT, "first attempt", || async {
        !h.handler.attempts_of(env.event_id).is_empty()
    })
    .await;
    // While the park keeps failing, the message waits: the handler is not run again (it used to
    // be requeued at once, a hot loop that ran the handler again and again).
    let window = std::time::Instant::now() + Duration::from_secs(2);
    while std::time::Instant::now() < window {
        assert_eq!(h.handler.attempts_of(env.event_id).len(), 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The tier comes back: the park succeeds, and the retry tier hands the event back.
    apply_topology(&h.vhost.name).await;
    eventually(WAIT, "handled after the tier's delay", || async {
        h.effects_of(env.event_id).await == 1
    })
    .await;
    assert_eq!(h.handler.attempts_of(env.event_id).len(), 2);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exchange_declared_after_its_row_was_held_back_is_used_without_a_reconnect() {
    let h = Harness::start("lateexchange").await;
    let mut config = h.relay_config();
    config.failed_row_backoff = Duration::from_millis(100);
    config.failed_row_backoff_max = Duration::from_millis(200);
    let relay = h.relay_with(config);
    let mut channel = relay.connect().await.expect("relay connects");
    let exchange = "test.late";
    let env = stock_replenished(Uuid::new_v4(), 1);
    let mut tx = h.pool().begin().await.unwrap();
    warren_messaging::enqueue(&mut tx, exchange, &env)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let report = relay.relay_batch(&mut channel).await.unwrap();
    assert_eq!(
        (report.published, report.failed),
        (0, 1),
        "held: no such exchange"
    );

    // The exchange (and a queue bound to it) appear; the same channel publishes the row once it
    // is due again. The missing exchange used to be remembered for the connection's life.
    let mgmt = &h.vhost.mgmt;
    mgmt.declare_exchange(&h.vhost.name, exchange, "topic")
        .await;
    mgmt.declare_queue(&h.vhost.name, "test.late.q", json!({}))
        .await;
    mgmt.bind(&h.vhost.name, exchange, "test.late.q", "#").await;
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let report = relay.relay_batch(&mut channel).await.unwrap();
        if report.published == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the held row was not published on the same channel within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(channel.is_connected());
    assert_eq!(h.vhost.ready_messages("test.late.q").await, 1);
    channel.close().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_waits_for_a_queue_deleted_while_it_runs_and_consumes_again() {
    let mut h = Harness::start("queueblip").await;
    let queue = ORDERS_INVENTORY_EVENTS_QUEUE;
    h.spawn_consumer();
    eventually(WAIT, "consuming", || async {
        h.metrics.is_consuming(queue)
    })
    .await;
    // The queue goes away behind the worker's back (RabbitMQ cancels the consumer) and stays
    // away for a while: several reconnects find it missing. That used to end the consumer for
    // good, while the process kept answering /healthz.
    h.vhost.mgmt.delete_queue(&h.vhost.name, queue).await;
    eventually(WAIT, "the consumer notices", || async {
        !h.metrics.is_consuming(queue)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    apply_topology(&h.vhost.name).await;
    eventually(WAIT, "consuming again", || async {
        h.metrics.is_consuming(queue)
    })
    .await;
    let id = publish_event(&h, Uuid::new_v4(), 1).await;
    eventually(WAIT, "an event after the blip is handled", || async {
        h.effects_of(id).await == 1
    })
    .await;
    // And the consumer task is still alive and ends cleanly (stop() checks it).
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_event_ids_are_kept_for_the_retention_then_removed() {
    let mut h = Harness::start("prune").await;
    let queue = ORDERS_INVENTORY_EVENTS_QUEUE;
    // Ids applied two days ago by this consumer and by another one.
    let (old, others) = (Uuid::new_v4(), Uuid::new_v4());
    for (consumer, id) in [(queue, old), ("another.queue", others)] {
        sqlx::query(
            "INSERT INTO processed_events (consumer, event_id, event_type, processed_at) \
             VALUES ($1, $2, 'inventory.stock_replenished', now() - interval '2 days')",
        )
        .bind(consumer)
        .bind(id)
        .execute(h.pool())
        .await
        .unwrap();
    }
    let mut config = h.consumer_config();
    config.processed_retention = Duration::from_secs(24 * 3600);
    config.housekeeping_interval = Duration::from_millis(200);
    h.spawn_consumer_with(config);
    let recent = publish_event(&h, Uuid::new_v4(), 1).await;
    eventually(WAIT, "a new event applied", || async {
        h.effects_of(recent).await == 1
    })
    .await;
    let kept = |consumer: &'static str, id: Uuid| {
        let pool = h.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM processed_events WHERE consumer = $1 AND event_id = $2",
            )
            .bind(consumer)
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
                == 1
        }
    };
    eventually(WAIT, "the id past retention removed", || async {
        !kept(queue, old).await
    })
    .await;
    assert!(kept(queue, recent).await, "a recent id stays");
    assert!(
        kept("another.queue", others).await,
        "another consumer's ids are its own business"
    );
    h.stop().await;
}
