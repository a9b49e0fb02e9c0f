//! What the service tells those who watch it (SPEC.md's PubSub notifications): when this node
//! starts or stops receiving a topic from another node, and when another node starts or stops
//! reading one of this node's topics or falls a window behind.

use netmachine_schema::Identity;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// This node now receives `topic` from `node`, whose pubsub service is `peer`
    /// (TopicSubscribed; again after each subscribe that repaired the subscription).
    Subscribed { topic: Identity, node: Identity, peer: Identity },
    /// This node no longer receives `topic` (TopicUnsubscribed), and why.
    Unsubscribed { topic: Identity, reason: String },
    /// Another node's pubsub service `reader` now reads `topic` from this node.
    ReaderAdded { topic: Identity, reader: Identity },
    ReaderLeft { topic: Identity, reader: Identity, reason: String },
    /// `reader`'s window is full: under policy Block it holds the topic's publisher back, else
    /// it falls behind and catches up from the history.
    ReaderFull { topic: Identity, reader: Identity },
}

impl Notice {
    pub fn topic(&self) -> Identity {
        match self {
            Notice::Subscribed { topic, .. }
            | Notice::Unsubscribed { topic, .. }
            | Notice::ReaderAdded { topic, .. }
            | Notice::ReaderLeft { topic, .. }
            | Notice::ReaderFull { topic, .. } => *topic,
        }
    }
}
