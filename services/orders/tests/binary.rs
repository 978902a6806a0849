//! The `orders` binary as a Deployment runs it: `--help` names every variable it reads, and a
//! malformed setting stops it at once with the option named, before it touches anything.

use std::process::Command;

#[test]
fn help_names_every_variable_and_a_bad_setting_fails_fast() {
    let help = Command::new(env!("CARGO_BIN_EXE_orders"))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run orders --help: {e}"));
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for variable in [
        "WARREN_AMQP_URL",
        "WARREN_DATABASE_URL",
        "WARREN_HTTP_ADDR",
        "WARREN_INVENTORY_URL",
        "WARREN_DATABASE_MAX_CONNECTIONS",
        "WARREN_CONSUMER_LANES",
        "WARREN_PROCESSED_RETENTION_SECONDS",
        "WARREN_AMQP_PASSWORD",
    ] {
        assert!(text.contains(variable), "--help names {variable}:\n{text}");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_orders"))
        .env("WARREN_HTTP_ADDR", "nowhere")
        .output()
        .unwrap_or_else(|e| panic!("run orders: {e}"));
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("--http-addr"), "{err}");
}
