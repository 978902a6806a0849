//! Leader election on a Lease against a mocked API server: create, follow, take over only after
//! the holder stayed silent for the lease duration (by the local clock), renew, lose, release.

mod controller_support;

use std::time::Duration;

use http::Method;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use warren_operator::controller::leader::{LeaderElector, Leadership};

use controller_support::{ApiServer, not_found, reply};

const LEASE_URI: &str =
    "/apis/coordination.k8s.io/v1/namespaces/warren-system/leases/warren-operator";
const LEASES_URI: &str = "/apis/coordination.k8s.io/v1/namespaces/warren-system/leases?";

fn elector() -> (LeaderElector, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    let client = Client::new(service, "warren-system");
    let elector = LeaderElector::new(
        client,
        "warren-system",
        "warren-operator",
        "me",
        Duration::from_secs(15),
    );
    (elector, ApiServer(handle))
}

fn lease(holder: Option<&str>, version: &str, transitions: i32) -> Value {
    let mut spec = json!({
        "leaseDurationSeconds": 15,
        "renewTime": "2026-11-28T08:00:00.000000Z",
        "acquireTime": "2026-11-28T07:00:00.000000Z",
        "leaseTransitions": transitions
    });
    if let Some(holder) = holder {
        spec["holderIdentity"] = json!(holder);
    }
    json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "warren-operator", "namespace": "warren-system", "resourceVersion": version},
        "spec": spec
    })
}

/// Expects a replace of the Lease carrying `version` (the optimistic-concurrency check).
async fn expect_replace(
    api: &mut ApiServer,
    version: &str,
    status: u16,
    new_version: &str,
) -> Value {
    let (body, send) = api.expect(Method::PUT, &format!("{LEASE_URI}?")).await;
    assert_eq!(body["metadata"]["resourceVersion"], version, "{body}");
    let mut written = body.clone();
    written["metadata"]["resourceVersion"] = json!(new_version);
    if status == 409 {
        reply(
            send,
            409,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Conflict", "code": 409,
                    "message": "the object has been modified; please apply your changes to the latest version"}),
        );
    } else {
        reply(send, status, &written);
    }
    body
}

#[tokio::test]
async fn creates_the_lease_when_there_is_none() {
    let (mut elector, mut api) = elector();
    let (leadership, ()) = tokio::join!(elector.try_acquire_or_renew(), async {
        api.answer(
            Method::GET,
            LEASE_URI,
            404,
            &not_found("leases.coordination.k8s.io", "warren-operator"),
        )
        .await;
        let (body, send) = api.expect(Method::POST, LEASES_URI).await;
        assert_eq!(body["metadata"]["name"], "warren-operator");
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["leaseTransitions"], 0);
        let mut created = body.clone();
        created["metadata"]["resourceVersion"] = json!("1");
        reply(send, 201, &created);
    });
    assert_eq!(leadership.ok(), Some(Leadership::Leading));
    api.assert_idle();
}

#[tokio::test(start_paused = true)]
async fn follows_a_live_holder_and_takes_over_only_after_it_stayed_silent() {
    let (mut elector, mut api) = elector();
    // The record's renewTime is hours old by the wall clock; that must not count (clock skew).
    let (first, ()) = tokio::join!(elector.try_acquire_or_renew(), async {
        api.answer(Method::GET, LEASE_URI, 200, &lease(Some("other"), "5", 3))
            .await;
    });
    assert_eq!(first.ok(), Some(Leadership::Following("other".to_owned())));
    api.assert_idle();

    tokio::time::advance(Duration::from_secs(10)).await;
    let (second, ()) = tokio::join!(elector.try_acquire_or_renew(), async {
        api.answer(Method::GET, LEASE_URI, 200, &lease(Some("other"), "5", 3))
            .await;
    });
    assert_eq!(second.ok(), Some(Leadership::Following("other".to_owned())));
    api.assert_idle();

    tokio::time::advance(Duration::from_secs(6)).await;
    let (third, ()) = tokio::join!(elector.try_acquire_or_renew(), async {
        api.answer(Method::GET, LEASE_URI, 200, &lease(Some("other"), "5", 3))
            .await;
        let body = expect_replace(&mut api, "5", 200, "6").await;
        assert_eq!(body["spec"]["holderIdentity"], "me");
        assert_eq!(body["spec"]["leaseTransitions"], 4);
    });
    assert_eq!(third.ok(), Some(Leadership::Leading));
    api.assert_idle();
}

#[tokio::test]
async fn a_holder_that_renews_keeps_the_lease() {
    let (mut elector, mut api) = elector();
    let (leadership, ()) = tokio::join!(elector.try_acquire_or_renew(), async {
        api.answer(Method::GET, LEASE_URI, 200, &lease(Some("other"), "5", 0))
            .await;
    });
    assert_eq!(
        leadership.ok(),
        Some(Leadership::Following("other".to_owned()))
    );
    // A new resourceVersion means the holder renewed: the silence clock restarts.
    let (leadership, ()) = tokio::join!(elector.try_acquire_or_renew(), async {
        api.answer(Method::GET, LEASE_URI, 200, &lease(Some("other"), "6", 0))
            .await;
    });
    assert_eq!(
        leadership.ok(),
        Some(Leadership::Following("other".to_owned()))
    );
    api.assert_idle();
}

#[tokio::test]
async fn a_released_lease_is_taken_at_once_but_a_racing_write_loses_the_round() {
    let (mut elector, mut api) = elector();
    let (leadership, ()) = tokio::join!(elector.try_acquire_or_renew(), async {
        api.answer(Method::GET, LEASE_URI, 200, &lease(None, "8", 2))
            .await;
        expect_replace(&mut api, "8", 409, "9").await;
    });
    assert_eq!(leadership.ok(), Some(Leadership::Following(String::new())));
    api.assert_idle();
}

#[tokio::test]
async fn the_leader_renews_without_a_transition_and_releases_on_shutdown() {
    let (mut elector, mut api) = elector();
    let (leadership, ()) = tokio::join!(elector.try_acquire_or_renew(), async {
        api.answer(Method::GET, LEASE_URI, 200, &lease(Some("me"), "7", 2))
            .await;
        let body = expect_replace(&mut api, "7", 200, "8").await;
        assert_eq!(body["spec"]["leaseTransitions"], 2);
        assert_eq!(body["spec"]["acquireTime"], "2026-11-28T07:00:00.000000Z");
    });
    assert_eq!(leadership.ok(), Some(Leadership::Leading));

    let (released, ()) = tokio::join!(elector.release(), async {
        api.answer(Method::GET, LEASE_URI, 200, &lease(Some("me"), "8", 2))
            .await;
        let body = expect_replace(&mut api, "8", 200, "9").await;
        assert!(body["spec"].get("holderIdentity").is_none(), "{body}");
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
    });
    assert!(released.is_ok());
    api.assert_idle();
}
