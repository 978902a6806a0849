//! Test support shared by Warren's end-to-end tests and benchmarks.
//!
//! Every test gets its own RabbitMQ vhost and its own PostgreSQL database, removed when the
//! guard drops, so tests run in parallel, in any order, and twice in a row against the one
//! broker and the one database server of the machine.

pub mod chart;
pub mod envtest;
pub mod faults;
pub mod harness;
pub mod operator;
pub mod stage_log;
pub mod support;
pub mod topology_bench;

pub use support::{
    Management, TestDatabase, TestVhost, apply_topology, eventually, management,
    test_worker_settings, unique_name,
};
