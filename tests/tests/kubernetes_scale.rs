//! The operator with many resources on the real API server (the envtest tier): after a restart it
//! reads RabbitMQ back in listings, one per kind and vhost, not one call per resource; it
//! re-declares nothing; queue counters come from those listings; and a queue deleted by hand
//! is back within one resync period.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use warren_operator::controller::HttpConnector;
use warren_tests::operator::{BROKER, CREDENTIALS, Fixture};
use warren_tests::support::management;

fn broker() -> Value {
    json!({"apiVersion": "warren.dev/v1alpha1", "kind": "Broker", "metadata": {"name": BROKER},
           "spec": {"managementUrl": warren_messaging::config::management_url(),
                    "credentialsSecretRef": {"name": CREDENTIALS}}})
}

fn queue(f: &Fixture, i: usize) -> Value {
    json!({"apiVersion": "warren.dev/v1alpha1", "kind": "Queue", "metadata": {"name": format!("q{i}")},
           "spec": {"brokerRef": {"name": BROKER}, "name": format!("scale.q{i}"),
                    "vhost": f.vhost.name, "type": "classic", "durable": true}})
}

#[tokio::test]
async fn a_restart_reads_rabbitmq_back_in_listings_and_a_hand_deleted_queue_returns_within_one_resync()
 {
    const N: usize = 60;
    const RESYNC_SECONDS: u64 = 8;
    let Some(f) = Fixture::new("scale").await else {
        return;
    };
    let first = f.start_operator("warren-0").await;
    f.apply(&[broker()]).await;
    let queues: Vec<Value> = (0..N).map(|i| queue(&f, i)).collect();
    f.apply(&queues).await;
    f.wait_all_ready(&queues).await;
    assert!(first.stop().await.is_ok());

    // A message in every queue while no operator runs, RabbitMQ's statistics showing it before
    // the next operator starts: once every status counts it, that operator has reconciled them
    // all, with the counts from its listings.
    let mgmt = management();
    for i in 0..N {
        mgmt.publish_to_queue(&f.vhost.name, &format!("scale.q{i}"), "waiting")
            .await;
    }
    let listing = format!(
        "queues/{}?columns=name,messages",
        urlencoding::encode(&f.vhost.name)
    );
    warren_tests::support::eventually(
        Duration::from_secs(30),
        "RabbitMQ's statistics to count the messages",
        || async {
            let queues = mgmt.get(&listing).await;
            queues
                .as_array()
                .is_some_and(|q| q.len() == N && q.iter().all(|q| q["messages"] == 1))
        },
    )
    .await;
    let connector = Arc::new(HttpConnector::default());
    let second = f
        .start_operator_through(
            "warren-1",
            |args| args.resync_seconds = RESYNC_SECONDS,
            connector.clone(),
        )
        .await;
    for i in 0..N {
        f.wait_for(
            "Queue",
            &format!("q{i}"),
            "messages from the listing",
            Duration::from_secs(60),
            |q| q.is_some_and(|q| q["status"]["messages"] == 1 && q["status"]["consumers"] == 0),
        )
        .await;
    }
    let (calls, writes) = (connector.calls(), connector.writes());
    assert_eq!(writes, 0, "a restart re-declares nothing");
    // One read-back per queue would be two calls each (vhost, queue): 120 at least.
    assert!(
        calls <= 20,
        "{calls} management calls to confirm {N} queues after a restart"
    );
    let (ok, table) = f.kubectl(&["get", "queues"]);
    assert!(ok, "{table}");
    assert!(
        table.contains("MESSAGES") && table.contains("CONSUMERS"),
        "{table}"
    );

    mgmt.delete_queue(&f.vhost.name, "scale.q7").await;
    let deleted = Instant::now();
    let deadline = Duration::from_secs(RESYNC_SECONDS + 4);
    while !f.rabbitmq_queues().await.iter().any(|q| q == "scale.q7") {
        assert!(
            deleted.elapsed() < deadline,
            "a hand-deleted queue was not back within {deadline:?} (resync {RESYNC_SECONDS}s)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        connector.writes(),
        1,
        "only the deleted queue is declared again"
    );

    for i in 0..N {
        f.delete("Queue", &format!("q{i}")).await;
    }
    for i in 0..N {
        f.wait_for(
            "Queue",
            &format!("q{i}"),
            "deletion",
            Duration::from_secs(60),
            |q| q.is_none(),
        )
        .await;
    }
    assert!(f.rabbitmq_queues().await.is_empty());
    assert!(second.stop().await.is_ok());
}
