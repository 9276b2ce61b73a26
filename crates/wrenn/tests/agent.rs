//! The host agent and the namespace runtime, through the real `wrenn agent`.

mod common;

use common::*;
use wrenn_protocol::hostagent::v1 as pb;

#[tokio::test]
async fn create_exec_destroy_leaves_nothing() {
    let agent = AgentProc::start();
    let c = agent.client();
    let id = new_id("basic");
    let sb = c
        .create_sandbox(create_req(&id))
        .await
        .expect("create")
        .into_owned();
    assert_eq!(sb.sandbox_id, id);
    assert_eq!(
        sb.state.as_known(),
        Some(pb::SandboxState::SANDBOX_STATE_RUNNING)
    );
    let (out, _, code) = sh(
        &c,
        &id,
        "echo hello; hostname; id -u; cat /etc/debian_version",
    )
    .await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hello");
    assert_eq!(lines[1], id);
    assert_eq!(lines[2], "0");
    assert!(lines[3].starts_with("12"), "{out}");
    c.destroy_sandbox(pb::SandboxRef {
        sandbox_id: id.clone(),
        ..Default::default()
    })
    .await
    .expect("destroy");
    assert_no_host_traces(&agent.data_dir);
}
