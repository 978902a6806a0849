//! Schema and CEL building blocks shared by the CRD kinds.
//! Kept in one place so every kind words its immutability rules the same way.

use kube::core::{Message, Rule};
use schemars::{Schema, SchemaGenerator, json_schema};

/// Schema of a free-form object (queue `arguments`, policy `definition`).
///
/// A typed map of JSON values makes the API server reject nested values; preserving unknown
/// fields on a plain object is the structural way to accept anything.
pub fn free_form_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// CEL rule for a field that always has a value: it may never change.
pub fn immutable(message: &str) -> Rule {
    Rule::new("self == oldSelf").message(Message::Message(message.to_owned()))
}

/// CEL rule, placed on the parent object, locking an optional field once the object exists.
///
/// `self == oldSelf` on the field itself only runs when both old and new values are set, so
/// adding or removing the field would slip through; this rule compares presence too.
pub fn immutable_optional(field: &str, message: &str) -> Rule {
    Rule::new(format!(
        "has(self.{field}) == has(oldSelf.{field}) && (!has(self.{field}) || self.{field} == oldSelf.{field})"
    ))
    .message(Message::Message(message.to_owned()))
    .field_path(format!(".{field}"))
}
