//! From a Broker resource and its Secrets to a management API client. Credentials are read from
//! the Secret on every reconcile (so rotation needs no restart) and never logged.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client, ResourceExt};

use crate::crd::Broker;
use crate::rabbitmq::{BrokerConnection, Credentials, HttpManagementApi, ManagementApi};
use crate::{Error, Result};

/// Builds a [`ManagementApi`] for a resolved connection. Tests swap in the in-memory fake.
pub trait BrokerConnector: Send + Sync {
    /// A client for `connection`; fails on a malformed URL or TLS material, not on reachability.
    fn connect(&self, connection: &BrokerConnection) -> Result<Arc<dyn ManagementApi>>;
}

/// The production connector: HTTPS (or HTTP) to the management API.
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpConnector;

impl BrokerConnector for HttpConnector {
    fn connect(&self, connection: &BrokerConnection) -> Result<Arc<dyn ManagementApi>> {
        Ok(Arc::new(HttpManagementApi::new(connection)?))
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
