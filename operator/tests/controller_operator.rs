//! `warren operator` around the controllers: the start-up CRD check (with its install hint) on a
//! mocked API server, and the /metrics, /healthz and /readyz endpoints over real HTTP.

mod controller_support;

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use kube::Client;
use kube::client::Body;
use serde_json::json;
use warren_operator::Error;
use warren_operator::controller::{Metrics, Probes, check_crds, router};

use controller_support::{ApiServer, not_found};

fn client() -> (Client, ApiServer) {
    let (service, handle) = tower_test::mock::pair::<http::Request<Body>, http::Response<Body>>();
    (Client::new(service, "default"), ApiServer(handle))
}

/// What the API server answers to a metadata-only list of an empty collection.
fn empty_list() -> serde_json::Value {
    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList", "metadata": {"resourceVersion": "1"}, "items": []})
}

#[tokio::test]
async fn missing_crds_stop_the_operator_with_an_install_hint() {
    let (client, mut api) = client();
    let scopes = [Some("apps".to_owned())];
    let (result, ()) = tokio::join!(check_crds(&client, &scopes), async {
        api.answer(
            Method::GET,
            "/apis/warren.dev/v1alpha1/namespaces/apps/brokers?&limit=1",
            200,
            &empty_list(),
        )
        .await;
        api.answer(
            Method::GET,
            "/apis/warren.dev/v1alpha1/namespaces/apps/exchanges?&limit=1",
            404,
            &not_found("exchanges.warren.dev", ""),
        )
        .await;
    });
    let error = result
        .err()
        .unwrap_or_else(|| panic!("a missing CRD is fatal"));
    assert!(matches!(&error, Error::CrdMissing { crd } if crd == "exchanges.warren.dev"));
    let text = error.to_string();
    assert!(
        text.contains("CRD exchanges.warren.dev not found")
            && text.contains("kubectl apply -f crds/")
            && text.contains("helm install warren charts/warren"),
        "{text}"
    );
    assert_eq!(error.metric_label(), "crd_missing");
    api.assert_idle();
}

#[tokio::test]
async fn installed_crds_pass_the_check_for_all_namespaces() {
    let (client, mut api) = client();
    let (result, ()) = tokio::join!(check_crds(&client, &[None]), async {
        for plural in [
            "brokers",
            "exchanges",
            "queues",
            "bindings",
            "policies",
            "workers",
        ] {
            api.answer(
                Method::GET,
                &format!("/apis/warren.dev/v1alpha1/{plural}?&limit=1"),
                200,
                &empty_list(),
            )
            .await;
        }
    });
    assert!(result.is_ok(), "{result:?}");
    api.assert_idle();
}

#[tokio::test]
async fn probes_and_metrics_are_served_over_http() {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    metrics.reconciled("Queue", Duration::from_millis(12));
    metrics.failed("Queue", "broker_not_found");
    metrics.set_leader(true);
    let probes = Probes::new(Arc::new(registry));

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let address = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let server = tokio::spawn(axum::serve(listener, router(probes.clone())).into_future());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let get = |path: &str| {
        let request = http.get(format!("http://{address}{path}"));
        async move {
            let response = request.send().await.unwrap_or_else(|e| panic!("GET: {e}"));
            let status = response.status().as_u16();
            (status, response.text().await.unwrap_or_default())
        }
    };

    assert_eq!(get("/healthz").await, (200, "ok".to_owned()));
    assert_eq!(
        get("/readyz").await.0,
        503,
        "not ready before the CRD check passed"
    );
    probes.set_ready(true);
    assert_eq!(get("/readyz").await.0, 200);

    let (status, body) = get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"warren_reconciliations_total{kind="Queue"} 1"#,
        r#"warren_reconcile_failures_total{kind="Queue",reason="broker_not_found"} 1"#,
        "warren_leader 1",
        r#"warren_reconcile_duration_seconds_count{kind="Queue"} 1"#,
    ] {
        assert!(body.lines().any(|l| l == line), "no `{line}` in:\n{body}");
    }
    server.abort();
}
