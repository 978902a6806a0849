//! Warren's finalizer on its resources, and the apply/cleanup dispatch around it (what kube's
//! `finalizer()` helper does, without its JSON-patch `test` on the whole list, which a watch
//! cache a moment behind turns into 422 warnings at start).
//!
//! The finalizer is added by server-side apply under its own field manager: `finalizers` is a
//! set, so Warren's entry joins whatever other controllers put there, no resourceVersion is
//! needed, and `managedFields` names who added it. It is removed by a JSON patch that tests the
//! entry itself, so a concurrent change to the list can never remove someone else's.

use std::future::Future;
use std::sync::Arc;

use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::json;

use super::FINALIZER;
use crate::{Error, Result};

/// Field manager of the finalizer entry, shown in `managedFields`.
pub const FINALIZER_MANAGER: &str = "warren-operator-finalizer";

/// What the reconcile of one object has to do.
pub enum Step<K> {
    /// The object lives: converge it (the finalizer is in place).
    Apply(Arc<K>),
    /// The object is being deleted and still carries Warren's finalizer: clean up, after which
    /// the finalizer is removed.
    Cleanup(Arc<K>),
}

/// Adds the finalizer when missing, then runs `step` as Apply, or, for an object being deleted,
/// runs `step` as Cleanup and removes the finalizer once it succeeded. An object being deleted
/// without Warren's finalizer is none of Warren's business any more.
pub async fn reconcile<K, F, Fut>(api: &Api<K>, object: Arc<K>, step: F) -> Result<Action>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    F: FnOnce(Step<K>) -> Fut,
    Fut: Future<Output = Result<Action>>,
{
    let has_finalizer = object.finalizers().iter().any(|f| f == FINALIZER);
    if object.meta().deletion_timestamp.is_some() {
        if !has_finalizer {
            return Ok(Action::await_change());
        }
        let action = step(Step::Cleanup(object.clone())).await?;
        remove(api, &object).await?;
        return Ok(action);
    }
    if !has_finalizer {
        // Carry on with the object as stored now: its status apply is conditional on the
        // resourceVersion, which adding the finalizer moved on.
        let added = add(api, &object).await?;
        return step(Step::Apply(Arc::new(added))).await;
    }
    step(Step::Apply(object)).await
}

fn describe<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{} {}/{}",
        K::kind(&()),
        object.namespace().unwrap_or_default(),
        object.name_any()
    )
}

async fn add<K>(api: &Api<K>, object: &K) -> Result<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let patch = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"name": object.name_any(), "finalizers": [FINALIZER]},
    });
    api.patch(
        &object.name_any(),
        &PatchParams::apply(FINALIZER_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(|source| Error::Kube {
        action: format!("add finalizer {FINALIZER} to {}", describe(object)),
        source,
    })
}

/// Removes Warren's entry; when the object changed meanwhile (the entry moved), reads it again
/// once and retries. An object already gone is fine.
async fn remove<K>(api: &Api<K>, object: &K) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let name = object.name_any();
    let mut finalizers = object.finalizers().to_vec();
    for attempt in 0..2 {
        let Some(index) = finalizers.iter().position(|f| f == FINALIZER) else {
            return Ok(());
        };
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": format!("/metadata/finalizers/{index}"), "value": FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{index}")},
        ]))
        .map_err(|e| Error::Config(format!("finalizer patch: {e}")))?;
        match api
            .patch::<K>(&name, &PatchParams::default(), &Patch::Json(patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(kube::Error::Api(status)) if status.code == 422 && attempt == 0 => {
                match api.get_opt(&name).await {
                    Ok(Some(fresh)) => finalizers = fresh.finalizers().to_vec(),
                    Ok(None) => return Ok(()),
                    Err(source) => {
                        return Err(Error::Kube {
                            action: format!("read {} again", describe(object)),
                            source,
                        });
                    }
                }
            }
            Err(source) => {
                return Err(Error::Kube {
                    action: format!("remove finalizer {FINALIZER} from {}", describe(object)),
                    source,
                });
            }
        }
    }
    Ok(())
}
