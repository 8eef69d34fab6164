//! The client's integration tests, one binary (each former test binary is
//! a module): `client_wire` against scripted fake daemons, `client_daemon`
//! against a real one (ours, or an external one: `testbed`).
//!
//! The real-Xen harness (`tests/xen`, scenario `xs-suites-real`) runs the
//! `client_daemon` module of this binary (`xenstore_it client_daemon::`)
//! against the C xenstored, and runs this binary inside its relay guest as
//! the relay agent, by the name `relay_agent_process` (`tests/xen/guest/
//! relay-init`): that test therefore sits here, at the crate root.

mod client_daemon;
mod client_wire;

/// Relays a guest's connection when this binary runs as the relay agent
/// (`XENSTORE_TEST_RELAY_AGENT`): inside a real PV guest (`tests/xen`), or
/// for `client_daemon::suite_against_a_separate_daemon_process` on our
/// daemon's guest socket. Passes at once otherwise.
#[test]
fn relay_agent_process() {
    let Some(endpoint) = std::env::var_os(testbed::guest_relay::AGENT_ENV) else {
        return;
    };
    testbed::guest_relay::run_agent(std::path::Path::new(&endpoint))
        .unwrap_or_else(|e| panic!("{e}"));
}
