//! `warren dlq` against the real broker: messages the idempotent consumer parked are listed and
//! shown in place, replayed to their original exchange (leaving the dead-letter queue only once
//! the republish is confirmed) and purged only when confirmed.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use uuid::Uuid;
use warren_messaging::HandlerError;
use warren_messaging::config;
use warren_messaging::topology::{
    INVENTORY_EXCHANGE, ORDERS_INVENTORY_EVENTS_QUEUE, dead_letter_queue,
};
use warren_operator::cli::ApplyOptions;
use warren_operator::cli::dlq::{self, Selection, Target};
use warren_tests::eventually;
use warren_tests::harness::{Harness, stock_replenished};

const WAIT: Duration = Duration::from_secs(30);

async fn target(h: &Harness) -> Target {
    Target::open(
        &config::management_url(),
        &h.vhost.name,
        ORDERS_INVENTORY_EVENTS_QUEUE,
        &ApplyOptions::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn parked(h: &Harness) -> u32 {
    h.vhost
        .ready_messages(&dead_letter_queue(ORDERS_INVENTORY_EVENTS_QUEUE))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_events_are_listed_in_place_replayed_once_confirmed_and_purged_when_confirmed() {
    let mut h = Harness::start("dlq").await;
    h.spawn_consumer();
    let (first, second) = (
        stock_replenished(Uuid::new_v4(), 1),
        stock_replenished(Uuid::new_v4(), 2),
    );
    for env in [&first, &second] {
        h.handler.fail(
            env.event_id,
            vec![HandlerError::permanent("no such product here")],
        );
        h.vhost.publish_envelope(INVENTORY_EXCHANGE, env).await;
    }
    eventually(WAIT, "both events parked", || async {
        parked(&h).await == 2
    })
    .await;

    let t = target(&h).await;
    let listed = dlq::list(&t.api, &t.vhost, &t.dlq, 100)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(listed.len(), 2, "{listed:?}");
    for message in &listed {
        assert_eq!(message.reason.as_deref(), Some("permanent"), "{message:?}");
        assert!(
            message
                .error
                .as_deref()
                .is_some_and(|e| e.contains("no such product here")),
            "{message:?}"
        );
        assert_eq!(message.attempts, Some(1), "{message:?}");
        assert_eq!(
            message.event_type.as_deref(),
            Some("inventory.stock_replenished")
        );
        assert_eq!(
            message.original_exchange.as_deref(),
            Some(INVENTORY_EXCHANGE)
        );
        assert!(message.dead_lettered_at.is_some(), "{message:?}");
    }
    let table = dlq::table(&listed);
    assert!(
        table.contains(&first.event_id.to_string()),
        "the table names each message: {table}"
    );
    let shown = dlq::show(&t.api, &t.vhost, &t.dlq, &first.event_id.to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        shown.payload.as_ref().map(|p| p["eventId"].clone()),
        Some(serde_json::json!(first.event_id)),
        "{shown:?}"
    );
    assert_eq!(
        parked(&h).await,
        2,
        "list and show leave every message in place"
    );

    // Replaying one: it leaves the dead-letter queue and is applied; the other stays.
    let url = t.amqp_url(None).await.unwrap_or_else(|e| panic!("{e}"));
    let unknown = Uuid::new_v4().to_string();
    let report = dlq::replay(
        &url,
        &t.dlq,
        &Selection::Ids([first.event_id.to_string(), unknown.clone()].into()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.replayed, [first.event_id.to_string()]);
    assert_eq!(report.missing, [unknown]);
    assert!(report.failed.is_empty(), "{report:?}");
    eventually(WAIT, "the replayed event applied", || async {
        h.effects_of(first.event_id).await == 1
    })
    .await;
    assert_eq!(parked(&h).await, 1, "the other one stays parked");
    assert_eq!(h.effects_of(second.event_id).await, 0);

    // Purging asks for confirmation first.
    let refused = dlq::purge(&t.api, &t.vhost, &t.dlq, false).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("--yes")),
        "{refused:?}"
    );
    assert_eq!(parked(&h).await, 1, "nothing purged without --yes");
    dlq::purge(&t.api, &t.vhost, &t.dlq, true)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually(WAIT, "purged", || async { parked(&h).await == 0 }).await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_cannot_be_confirmed_leaves_the_message_parked() {
    let h = Harness::start("dlq-keep").await;
    // A message parked for an exchange that no longer exists (as after a topology change).
    let conn = h.vhost.connect().await;
    let channel = conn
        .create_channel()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut headers = FieldTable::default();
    for (name, value) in [
        ("x-warren-original-exchange", "gone.events"),
        ("x-warren-original-routing-key", "inventory.reserved"),
        ("x-warren-reason", "permanent"),
    ] {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let id = Uuid::new_v4().to_string();
    channel
        .basic_publish(
            "".into(),
            dead_letter_queue(ORDERS_INVENTORY_EVENTS_QUEUE)
                .as_str()
                .into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default()
                .with_message_id(id.as_str().into())
                .with_headers(headers),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually(WAIT, "parked", || async { parked(&h).await == 1 }).await;

    let t = target(&h).await;
    let url = t.amqp_url(None).await.unwrap_or_else(|e| panic!("{e}"));
    let report = dlq::replay(&url, &t.dlq, &Selection::All)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(report.replayed.is_empty(), "{report:?}");
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].1.contains("gone.events"), "{report:?}");
    eventually(
        WAIT,
        "the message is back in the dead-letter queue",
        || async { parked(&h).await == 1 },
    )
    .await;
    h.stop().await;
}
