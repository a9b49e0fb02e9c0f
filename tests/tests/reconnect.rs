//! Connections between nodes come back after a transport dies: requests from A to an echo
//! engine on B run without pause while one node's transport is killed with SIGKILL, and replies
//! must flow again soon after the restarted transport connects, on both sides. The surviving
//! transport must not keep using the dead connection until QUIC's 30 s idle timeout.

use netmachine_engine::{Engine, Identity};
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, link, with_rpc, Node};
use std::time::{Duration, Instant};

/// Replies must resume within this long after the kill (QUIC would take 30 s to notice the
/// dead connection; the supervisor restarts transport within a second).
const RECOVERY: Duration = Duration::from_secs(10);

/// Answers every request `echo` receives, until the test ends.
fn answer_requests(echo: std::rc::Rc<Engine>) {
    tokio::task::spawn_local(async move {
        while let Some(request) = echo.recv().await {
            let _ = echo.reply(&request, request.body.clone()).await;
        }
    });
}

/// Makes requests to `dst` back to back (each with a deadline); returns once one is answered,
/// with the number of requests that were not.
async fn until_answered(asker: &Engine, dst: Identity, n: &mut u32, limit: Duration) -> Option<u32> {
    let start = Instant::now();
    let mut unanswered = 0;
    while start.elapsed() < limit {
        *n += 1;
        let body = n.to_le_bytes().to_vec();
        match asker.request(dst, body.clone(), Duration::from_millis(500)).await {
            Ok(reply) if reply.body == body => return Some(unanswered),
            _ => unanswered += 1,
        }
    }
    None
}

fn replies_flow_again_after_a_transport_is_killed(killed_side: usize) {
    let nodes = [Node::up(), Node::up()];
    link(&nodes[0], &nodes[1]);
    with_rpc(async {
        let asker = attach_engine(&nodes[0], |_| {}).await;
        let echo = std::rc::Rc::new(attach_engine(&nodes[1], |_| {}).await);
        let echo_id = echo.identity();
        answer_requests(echo);
        let mut n = 0;
        let unanswered = until_answered(&asker, echo_id, &mut n, Duration::from_secs(20)).await;
        assert!(unanswered.is_some(), "B's echo engine never answered");
        // Requests in flight at the kill: one is sent now, the kill lands while it waits.
        let in_flight = asker.request(echo_id, b"at the kill".to_vec(), Duration::from_millis(500));
        let victim = &nodes[killed_side];
        let old = victim.kill9(ServiceKind::Transport);
        let killed_at = Instant::now();
        let _ = in_flight.await;
        let answered = until_answered(&asker, echo_id, &mut n, RECOVERY).await;
        let recovered_after = killed_at.elapsed();
        assert!(
            answered.is_some(),
            "no reply within {RECOVERY:?} of killing node {killed_side}'s transport (pid {old}): the other node kept the dead connection"
        );
        assert_ne!(victim.pid(ServiceKind::Transport), Some(old), "the transport was restarted");
        eprintln!("node {killed_side}'s transport killed: replies again after {recovered_after:?}, {} requests unanswered", answered.unwrap());
    });
}

#[test]
fn replies_flow_again_soon_after_the_requesting_nodes_transport_is_killed() {
    replies_flow_again_after_a_transport_is_killed(0);
}

#[test]
fn replies_flow_again_soon_after_the_answering_nodes_transport_is_killed() {
    replies_flow_again_after_a_transport_is_killed(1);
}
