//! Services for the node, between real processes: an engine that serves a protocol receives
//! what engines on another node send to its node in that protocol; another engine is refused
//! the same protocol; a message to the node in any other protocol is still answered by the
//! router; and the service is served again after its router restarts.

use netmachine_engine::{Destination, Engine, EngineError, TopicRefusal};
use netmachine_service::ServiceKind;
use netmachine_tests::{attach_engine, link, with_rpc, Node};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const PROTOCOL: &str = "test/service/1";

/// `sender` sends `body` to `node` in `protocol`.
async fn to_node(sender: &Engine, node: &Node, protocol: &str, body: &[u8]) -> Result<(), EngineError> {
    let node_id: netmachine_engine::Identity = node.id().parse().expect("a node identity");
    let mut message = sender.message(Destination::Node(node_id), body.to_vec());
    message.protocol = protocol.into();
    sender.send_message(message).await
}

/// Two linked nodes.
fn linked() -> (Node, Node) {
    let (a, b) = (Node::up(), Node::up());
    link(&a, &b);
    (a, b)
}

#[test]
fn an_engine_serving_a_protocol_gets_what_other_nodes_send_its_node_in_it() {
    let (a, b) = linked();
    with_rpc(async {
        let service = attach_engine(&a, |_| {}).await;
        let rival = attach_engine(&a, |_| {}).await;
        let sender = attach_engine(&b, |_| {}).await;
        service.serve(PROTOCOL).await.expect("serve the protocol");
        let refused = rival.serve(PROTOCOL).await;
        assert!(matches!(refused, Err(EngineError::TopicRefused { reason: TopicRefusal::Denied, .. })), "one engine per protocol: {refused:?}");

        to_node(&sender, &a, PROTOCOL, b"for the service").await.expect("sent");
        let got = tokio::time::timeout(WAIT, service.recv()).await.expect("within the deadline").expect("open");
        assert_eq!((got.src, got.body.as_slice(), got.protocol.as_str()), (sender.identity(), &b"for the service"[..], PROTOCOL));

        // Any other protocol is the router's: it answers with the node's information.
        let node_id: netmachine_engine::Identity = a.id().parse().unwrap();
        let answer = sender.request(Destination::Node(node_id), b"info".to_vec(), WAIT).await.expect("the router answers");
        assert_eq!(answer.src, node_id);
        assert!(tokio::time::timeout(Duration::from_millis(300), service.recv()).await.is_err(), "the service got nothing else");
    });
}

#[test]
fn a_service_is_served_again_after_its_router_restarts() {
    let (a, b) = linked();
    with_rpc(async {
        let service = attach_engine(&a, |_| {}).await;
        let sender = attach_engine(&b, |_| {}).await;
        service.serve(PROTOCOL).await.expect("serve the protocol");
        a.kill9(ServiceKind::Router);
        // Sends fail until the router is back and the service served again; count what arrives.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let got = loop {
            assert!(tokio::time::Instant::now() < deadline, "the service never got a message after the restart");
            let _ = to_node(&sender, &a, PROTOCOL, b"after").await;
            match tokio::time::timeout(Duration::from_millis(500), service.recv()).await {
                Ok(Some(message)) if message.protocol == PROTOCOL => break message,
                _ => continue,
            }
        };
        assert_eq!(got.body, b"after");
    });
}
