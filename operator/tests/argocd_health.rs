//! The Argo CD health check shipped in charts/warren/argocd/health.lua, run on sample statuses
//! with a Lua 5.1 interpreter (the dialect of Argo CD's gopher-lua).

use mlua::{Lua, LuaSerdeExt};
use serde_json::{Value, json};

fn health(object: &Value) -> (String, String) {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/warren/argocd/health.lua");
    let script =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lua = Lua::new();
    let obj = lua
        .to_value(object)
        .unwrap_or_else(|e| panic!("object to Lua: {e}"));
    lua.globals()
        .set("obj", obj)
        .unwrap_or_else(|e| panic!("set obj: {e}"));
    // Argo CD runs the script as a function body whose return value is the health.
    let result: mlua::Table = lua
        .load(&script)
        .eval()
        .unwrap_or_else(|e| panic!("health.lua: {e}"));
    let field = |name: &str| result.get::<String>(name).unwrap_or_default();
    (field("status"), field("message"))
}

/// A Queue at `generation`; a Null `status` is left out, as on a resource Warren has not seen.
fn queue(generation: i64, status: Value) -> Value {
    let mut object = json!({"apiVersion": "warren.dev/v1alpha1", "kind": "Queue",
                            "metadata": {"name": "orders", "generation": generation}});
    if !status.is_null() {
        object["status"] = status;
    }
    object
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message})
}

#[test]
fn statuses_map_to_argo_cd_health() {
    let cases = [
        (queue(1, Value::Null), "Progressing", "Waiting for Warren"),
        (
            queue(
                2,
                json!({"observedGeneration": 1, "conditions": [condition("Ready", "True", "Created", "created queue")]}),
            ),
            "Progressing",
            "generation 2",
        ),
        (
            queue(
                1,
                json!({"observedGeneration": 1, "conditions": [condition("Ready", "True", "Created", "created queue")]}),
            ),
            "Healthy",
            "Created: created queue",
        ),
        (
            queue(
                1,
                json!({"observedGeneration": 1, "conditions": [
                condition("Ready", "False", "Conflict", "x-message-ttl differs"),
                condition("Stalled", "True", "Conflict", "x-message-ttl differs")]}),
            ),
            "Degraded",
            "Conflict: x-message-ttl differs",
        ),
        (
            queue(
                1,
                json!({"observedGeneration": 1, "conditions": [
                condition("Ready", "False", "BrokerUnreachable", "connection refused"),
                condition("Reconciling", "True", "BrokerUnreachable", "connection refused")]}),
            ),
            "Progressing",
            "BrokerUnreachable: connection refused",
        ),
        (
            queue(
                1,
                json!({"observedGeneration": 1, "conditions": [
                condition("Ready", "False", "Waiting", "no exchange yet"),
                condition("Reconciling", "True", "Waiting", "no exchange yet")]}),
            ),
            "Progressing",
            "Waiting",
        ),
        (
            queue(
                1,
                json!({"observedGeneration": 1, "conditions": [condition("Ready", "False", "Duplicate", "Queue a/b owns it")]}),
            ),
            "Degraded",
            "Duplicate",
        ),
    ];
    for (object, want_status, want_message) in cases {
        let (status, message) = health(&object);
        assert_eq!(status, want_status, "{object}: {message}");
        assert!(message.contains(want_message), "{object}: {message}");
    }
}
