//! Leader election on a `coordination.k8s.io/v1` Lease, so only one replica reconciles. kube 5 has
//! none built in; this follows client-go: optimistic writes on resourceVersion, local-clock expiry.
//!
//! Expiry is judged by how long *this* replica has seen the record unchanged, never by comparing
//! the holder's `renewTime` with the local clock, so clock skew between nodes cannot split leadership.

use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::{Error, Result};

/// Who holds the Lease after one election round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// This replica holds it.
    Leading,
    /// Another replica holds it (its identity, or empty when unknown).
    Following(String),
}

/// Acquires, renews and releases one Lease for one identity.
pub struct LeaderElector {
    leases: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// resourceVersion of the record last seen and when this replica first saw it.
    observed: Option<(String, Instant)>,
}

impl LeaderElector {
    /// An elector for Lease `namespace/name`; `duration` is how long a silent holder keeps it.
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaderElector {
            leases: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observed: None,
        }
    }

    /// `namespace/name` of the Lease, for messages.
    pub fn lease(&self) -> String {
        format!(
            "{}/{}",
            self.leases.namespace().unwrap_or_default(),
            self.name
        )
    }

    /// How long the Lease lasts without renewal.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    fn kube_error(&self, verb: &str, source: kube::Error) -> Error {
        Error::Kube {
            action: format!("{verb} Lease {}", self.lease()),
            source,
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs())
            .unwrap_or(i32::MAX)
            .max(1)
    }

    /// One round: creates the Lease, renews it, or takes it over once it expired.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Leadership> {
        let now = Instant::now();
        let Some(lease) = self
            .leases
            .get_opt(&self.name)
            .await
            .map_err(|e| self.kube_error("get", e))?
        else {
            return self.create().await;
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().unwrap_or_default();
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        let seen_since = match &self.observed {
            Some((seen, since)) if *seen == version => *since,
            _ => {
                self.observed = Some((version, now));
                now
            }
        };
        let held_for = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.duration, Duration::from_secs);
        let ours = holder == self.identity;
        let expired = holder.is_empty() || now.duration_since(seen_since) >= held_for;
        if !ours && !expired {
            return Ok(Leadership::Following(holder));
        }
        let stamp = MicroTime(jiff::Timestamp::now());
        let mut updated = lease;
        updated.spec = Some(LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: if ours {
                spec.acquire_time.clone()
            } else {
                Some(stamp.clone())
            },
            renew_time: Some(stamp),
            lease_transitions: Some(spec.lease_transitions.unwrap_or(0).saturating_add(if ours {
                0
            } else {
                1
            })),
            ..spec
        });
        // `replace` sends metadata.resourceVersion: if anyone wrote since our read, the API
        // server answers 409 and we simply lost this round.
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &updated)
            .await
        {
            Ok(written) => {
                let version = written.metadata.resource_version.unwrap_or_default();
                self.observed = Some((version, Instant::now()));
                Ok(Leadership::Leading)
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Leadership::Following(holder))
            }
            Err(e) => Err(self.kube_error("update", e)),
        }
    }

    async fn create(&mut self) -> Result<Leadership> {
        let stamp = MicroTime(jiff::Timestamp::now());
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(stamp.clone()),
                renew_time: Some(stamp),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.leases.create(&PostParams::default(), &lease).await {
            Ok(written) => {
                let version = written.metadata.resource_version.unwrap_or_default();
                self.observed = Some((version, Instant::now()));
                Ok(Leadership::Leading)
            }
            // Another replica created it first.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Leadership::Following(String::new()))
            }
            Err(e) => Err(self.kube_error("create", e)),
        }
    }

    /// Gives the Lease up (on shutdown) so a standby takes over at once instead of waiting for
    /// it to expire. Does nothing when another replica holds it.
    pub async fn release(&mut self) -> Result<()> {
        let Some(mut lease) = self
            .leases
            .get_opt(&self.name)
            .await
            .map_err(|e| self.kube_error("get", e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        self.leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map_err(|e| self.kube_error("release", e))?;
        Ok(())
    }
}
