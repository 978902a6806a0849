//! The operator's HTTP endpoints: `/metrics` (OpenMetrics text), `/healthz` (the process serves)
//! and `/readyz` (CRDs found and this replica either reconciles or stands by for the Lease).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Router, extract::State, http::StatusCode, http::header, response::IntoResponse, routing::get,
};
use prometheus_client::{encoding::text::encode, registry::Registry};

/// State behind the endpoints.
#[derive(Clone)]
pub struct Probes {
    registry: Arc<Registry>,
    ready: Arc<AtomicBool>,
}

impl Probes {
    /// Endpoints over `registry`; not ready until [`Probes::set_ready`].
    pub fn new(registry: Arc<Registry>) -> Self {
        Probes {
            registry,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Marks the replica ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// The router serving `/metrics`, `/healthz` and `/readyz`.
pub fn router(probes: Probes) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(probes)
}

async fn metrics(State(probes): State<Probes>) -> impl IntoResponse {
    let mut body = String::new();
    match encode(&mut body, &probes.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "cannot encode metrics".to_owned(),
        ),
    }
}

async fn readyz(State(probes): State<Probes>) -> (StatusCode, &'static str) {
    if probes.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}
