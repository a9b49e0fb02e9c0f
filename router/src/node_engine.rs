//! The router as an engine: the node identity is the router's, so a message addressed to the
//! node itself is answered by the router with the node's information, signed with the node
//! key. It serves as a ping that names the node, from this node or from any other.

use crate::drops::DropReason;
use crate::server::RouterState;
use netmachine_schema::{signing, Destination, EngineMessage};
use std::rc::Rc;

impl RouterState {
    /// Answers `message`, which is addressed to this node, to its sender.
    pub async fn answer_node_message(self: &Rc<Self>, message: EngineMessage) -> Result<(), (DropReason, String)> {
        if message.reply_to.is_some() {
            // A reply to the node itself: nothing waits for it.
            return Ok(());
        }
        let node = self.key.identity();
        let info = format!(
            "{{\"node\":\"{node}\",\"engines_attached\":{},\"protocol\":\"netmachine/1\",\"version\":\"{}\"}}",
            self.table.borrow().attached_count(),
            env!("CARGO_PKG_VERSION")
        );
        let mut answer = EngineMessage::new(node, Destination::Engine(message.src), message.id, info.into_bytes());
        answer.reply_to = Some(message.id);
        answer.expiry = message.expiry;
        answer.protocol = "netmachine/node-info".into();
        answer.sig = Some(self.key.sign(&signing::engine_message(&answer)));
        self.route(answer).await.map_err(|(reason, _, detail)| (reason, detail))
    }
}
