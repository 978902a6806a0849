//! From a Broker resource and its Secrets to a management API client. Credentials are read from
//! the Secret on every reconcile (so rotation needs no restart) and never logged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};
use prometheus_client::metrics::counter::Counter;

use crate::crd::Broker;
use crate::rabbitmq::{
    BrokerConnection, BrokerLimit, Credentials, DEFAULT_MAX_IN_FLIGHT, HttpManagementApi,
    ManagementApi,
};
use crate::{Error, Result};

/// Builds a [`ManagementApi`] for a resolved connection. Tests swap in the in-memory fake.
pub trait BrokerConnector: Send + Sync {
    /// A client for `connection`; fails on a malformed URL or TLS material, not on reachability.
    fn connect(&self, connection: &BrokerConnection) -> Result<Arc<dyn ManagementApi>>;

    /// The counters of management API calls and, of them, writes, that `/metrics` shows; `None`
    /// for connectors that make no calls (the in-memory fake).
    fn call_counters(&self) -> Option<(Counter, Counter)> {
        None
    }
}

/// The production connector: HTTPS (or HTTP) to the management API.
///
/// Clients are kept per connection (URL, credentials, TLS material), so reconciles reuse pooled
/// keep-alive connections instead of a TCP and TLS handshake each; rotating the Secret yields a
/// new key and so a new client. Every client of one management URL shares one [`BrokerLimit`].
pub struct HttpConnector {
    clients: Mutex<HashMap<ConnectionKey, Arc<dyn ManagementApi>>>,
    limits: Mutex<HashMap<String, Arc<BrokerLimit>>>,
    max_in_flight: usize,
    per_second: u32,
    /// Management API calls (and of them, writes) made by every client this connector built.
    calls: Counter,
    writes: Counter,
}

impl Default for HttpConnector {
    fn default() -> Self {
        HttpConnector::with_limits(DEFAULT_MAX_IN_FLIGHT, 0)
    }
}

impl HttpConnector {
    /// A connector whose clients keep each broker to `max_in_flight` calls at once and, unless
    /// 0, `per_second` call starts per second.
    pub fn with_limits(max_in_flight: usize, per_second: u32) -> Self {
        HttpConnector {
            clients: Mutex::default(),
            limits: Mutex::default(),
            max_in_flight,
            per_second,
            calls: Counter::default(),
            writes: Counter::default(),
        }
    }

    /// Management API calls made through this connector's clients so far.
    pub fn calls(&self) -> u64 {
        self.calls.get()
    }

    /// Of [`HttpConnector::calls`], the writes (declarations and deletions).
    pub fn writes(&self) -> u64 {
        self.writes.get()
    }

    fn limit_of(&self, management_url: &str) -> Arc<BrokerLimit> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .entry(management_url.trim_end_matches('/').to_owned())
            .or_insert_with(|| Arc::new(BrokerLimit::new(self.max_in_flight, self.per_second)))
            .clone()
    }
}

/// Most Brokers a cluster plausibly has; past this the cache starts over (stale keys of rotated
/// credentials cannot pile up).
const MAX_CACHED_CLIENTS: usize = 64;

#[derive(Clone, PartialEq, Eq, Hash)]
struct ConnectionKey {
    management_url: String,
    username: String,
    password: String,
    ca_bundle_pem: Option<Vec<u8>>,
    client_identity_pem: Option<Vec<u8>>,
    timeout: Duration,
}

impl ConnectionKey {
    fn of(connection: &BrokerConnection) -> Self {
        ConnectionKey {
            management_url: connection.management_url.clone(),
            username: connection.credentials.username.clone(),
            password: connection.credentials.password.clone(),
            ca_bundle_pem: connection.ca_bundle_pem.clone(),
            client_identity_pem: connection.client_identity_pem.clone(),
            timeout: connection.timeout,
        }
    }
}

impl std::fmt::Debug for HttpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys hold credentials: never print them.
        f.debug_struct("HttpConnector").finish_non_exhaustive()
    }
}

impl BrokerConnector for HttpConnector {
    fn connect(&self, connection: &BrokerConnection) -> Result<Arc<dyn ManagementApi>> {
        let key = ConnectionKey::of(connection);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok(client.clone());
        }
        let client: Arc<dyn ManagementApi> = Arc::new(
            HttpManagementApi::new(connection)?
                .with_limit(self.limit_of(&connection.management_url))
                .with_counters(self.calls.clone(), self.writes.clone()),
        );
        if clients.len() >= MAX_CACHED_CLIENTS {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn call_counters(&self) -> Option<(Counter, Counter)> {
        Some((self.calls.clone(), self.writes.clone()))
    }
}

/// Reads the Broker's Secrets and assembles its connection.
///
/// A missing Secret or key is [`Error::Config`] (the user must fix it; retrying will not help
/// until they do); the message names the Secret and key, never a value.
pub async fn broker_connection(client: &Client, broker: &Broker) -> Result<BrokerConnection> {
    let namespace = broker.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let credentials_name = &broker.spec.credentials_secret_ref.name;
    let credentials = secret(&secrets, &namespace, credentials_name).await?;
    let username = utf8_key(&credentials, &namespace, credentials_name, "username")?;
    let password = utf8_key(&credentials, &namespace, credentials_name, "password")?;
    let mut connection = BrokerConnection::new(
        broker.spec.management_url.clone(),
        Credentials { username, password },
    );
    if let Some(tls) = &broker.spec.tls {
        if let Some(ca) = &tls.ca_secret_ref {
            let ca_secret = secret(&secrets, &namespace, &ca.name).await?;
            connection.ca_bundle_pem = Some(key(&ca_secret, &namespace, &ca.name, &ca.key)?);
        }
        if let Some(client_cert) = &tls.client_cert_secret_ref {
            let cert_secret = secret(&secrets, &namespace, &client_cert.name).await?;
            let mut pem = key(&cert_secret, &namespace, &client_cert.name, "tls.crt")?;
            pem.push(b'\n');
            pem.extend(key(&cert_secret, &namespace, &client_cert.name, "tls.key")?);
            connection.client_identity_pem = Some(pem);
        }
    }
    Ok(connection)
}

async fn secret(secrets: &Api<Secret>, namespace: &str, name: &str) -> Result<Secret> {
    secrets
        .get_opt(name)
        .await
        .map_err(|source| Error::Kube {
            action: format!("get Secret {namespace}/{name}"),
            source,
        })?
        .ok_or_else(|| Error::Config(format!("Secret {namespace}/{name} not found")))
}

fn key(secret: &Secret, namespace: &str, name: &str, key: &str) -> Result<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|value| value.0.clone())
        .ok_or_else(|| Error::Config(format!("Secret {namespace}/{name} has no key {key:?}")))
}

fn utf8_key(secret: &Secret, namespace: &str, name: &str, field: &str) -> Result<String> {
    let bytes = key(secret, namespace, name, field)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::Config(format!(
            "Secret {namespace}/{name} key {field:?} is not UTF-8"
        ))
    })?;
    // `kubectl create secret --from-file` keeps a trailing newline that no password contains.
    Ok(text.trim_end_matches(['\r', '\n']).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_of_one_management_url_shares_one_limit() {
        let connector = HttpConnector::with_limits(3, 0);
        let (a, b) = (
            connector.limit_of("http://rabbitmq.example:15672"),
            connector.limit_of("http://rabbitmq.example:15672/"),
        );
        assert!(Arc::ptr_eq(&a, &b));
        let other = connector.limit_of("http://elsewhere:15672");
        assert!(!Arc::ptr_eq(&a, &other));
    }

    fn connection(password: &str) -> BrokerConnection {
        BrokerConnection::new(
            "http://rabbitmq.example:15672",
            Credentials {
                username: "warren".to_owned(),
                password: password.to_owned(),
            },
        )
    }

    #[test]
    fn clients_are_reused_per_connection_and_renewed_with_the_credentials() {
        let connector = HttpConnector::default();
        let connect = |password: &str| {
            connector
                .connect(&connection(password))
                .unwrap_or_else(|e| panic!("{e}"))
        };
        let first = connect("one");
        assert!(
            Arc::ptr_eq(&first, &connect("one")),
            "same connection, same client"
        );
        assert!(
            !Arc::ptr_eq(&first, &connect("two")),
            "rotated password, new client"
        );
        assert!(
            !format!("{connector:?}").contains("one"),
            "Debug never shows credentials"
        );
    }
}
