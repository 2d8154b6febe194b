//! The in-process bus passes the bus conformance suite.

use std::sync::Arc;

#[tokio::test]
async fn in_process_bus_conforms() {
    tes_bus::conformance::run_all(Arc::new(tes_bus::InProcessBus::new())).await;
}
