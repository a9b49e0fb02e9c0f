//! What pubsub services say to each other across nodes, and what a router tells its own pubsub
//! service (the wire's PeerMessage): the body of an [`EngineMessage`] whose protocol is
//! [`PUBSUB_PROTOCOL`]. Reading one checks every length and bounds the traversal, so a peer's
//! malformed body is an error, never a panic or a large allocation.

use crate::identity::Identity;
use crate::message::{EngineMessage, MessageError};
use crate::pubsub_capnp::{peer_batch, peer_message};
pub use crate::pubsub_capnp::PeerRefusal;
use crate::router_capnp::TopicPolicy;

/// The protocol of messages between pubsub services; a router routes a message to its node
/// with this protocol to the engine that serves it (the node's pubsub service).
pub const PUBSUB_PROTOCOL: &str = "netmachine/pubsub/1";

/// The protocol of several PeerMessages from one pubsub service's engine to another's.
pub const PUBSUB_BATCH_PROTOCOL: &str = "netmachine/pubsub-batch/1";

/// The bytes a PeerMessage takes around the event it carries, at most: an event of a topic that
/// may leave its node is this much under the node's body limit, so that it fits once carried.
pub const PEER_EVENT_OVERHEAD: usize = 1024;

/// One message about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMessage {
    pub topic: Identity,
    pub says: Says,
}

/// What a [`PeerMessage`] says about its topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Says {
    /// Subscriber to publisher node: send events from this seq on (0: from the next one).
    Subscribe(u64),
    /// The answer to Subscribe: the seq of the topic's last event.
    /// The answer to Subscribe: the seq of the topic's last event, and its policy.
    Subscribed { last_seq: u64, policy: TopicPolicy },
    Refused { reason: PeerRefusal, detail: String },
    Unsubscribe,
    Unsubscribed,
    /// The publisher's message to the topic, signed by the publisher; its id is its seq.
    Event(EngineMessage),
    /// Every event up to this seq is in the subscriber node's queue.
    Ack(u64),
    /// Events `from..=to` were lost on the way: send them again.
    Resend { from: u64, to: u64 },
    /// Events no longer in the publisher's history: the subscriber will never have them.
    Missing { from: u64, to: u64 },
    /// An idle publisher's last seq, so that a lost tail is noticed.
    Heartbeat(u64),
    /// Router to its pubsub: engines on this node subscribe (from this seq; 0: the next one).
    Want(u64),
    /// Router to its pubsub: no engine on this node subscribes any more.
    Unwant,
}

impl PeerMessage {
    pub fn new(topic: Identity, says: Says) -> Self {
        PeerMessage { topic, says }
    }

    /// The message as an EngineMessage body.
    pub fn encode(&self) -> Vec<u8> {
        let mut wire = capnp::message::Builder::new_default();
        self.write(wire.init_root::<peer_message::Builder<'_>>());
        capnp::serialize::write_message_to_words(&wire)
    }

    /// Messages for one engine as one EngineMessage body, in protocol [`PUBSUB_BATCH_PROTOCOL`].
    pub fn encode_batch(messages: &[PeerMessage]) -> Vec<u8> {
        let mut wire = capnp::message::Builder::new_default();
        let mut list = wire.init_root::<peer_batch::Builder<'_>>().init_messages(messages.len() as u32);
        for (i, message) in messages.iter().enumerate() {
            message.write(list.reborrow().get(i as u32));
        }
        capnp::serialize::write_message_to_words(&wire)
    }

    fn write(&self, mut root: peer_message::Builder<'_>) {
        root.set_topic(&self.topic.0);
        match &self.says {
            Says::Subscribe(from) => root.set_subscribe(*from),
            Says::Subscribed { last_seq, policy } => {
                let mut subscribed = root.init_subscribed();
                subscribed.set_last_seq(*last_seq);
                subscribed.set_policy(*policy);
            }
            Says::Refused { reason, detail } => {
                let mut refused = root.init_refused();
                refused.set_reason(*reason);
                refused.set_detail(detail.as_str());
            }
            Says::Unsubscribe => root.set_unsubscribe(()),
            Says::Unsubscribed => root.set_unsubscribed(()),
            Says::Event(message) => message.write(root.init_event()),
            Says::Ack(seq) => root.set_ack(*seq),
            Says::Resend { from, to } => {
                let mut resend = root.init_resend();
                resend.set_from(*from);
                resend.set_to(*to);
            }
            Says::Missing { from, to } => {
                let mut missing = root.init_missing();
                missing.set_from(*from);
                missing.set_to(*to);
            }
            Says::Heartbeat(seq) => root.set_heartbeat(*seq),
            Says::Want(from) => root.set_want(*from),
            Says::Unwant => root.set_unwant(()),
        }
    }

    /// Reads a body of at most `max_bytes` (a node's largest message, plus room for the frame).
    pub fn decode(body: &[u8], max_bytes: usize) -> Result<Self, MessageError> {
        let wire = capnp::serialize::read_message_from_flat_slice(&mut &body[..], read_options(max_bytes))?;
        Self::read(wire.get_root::<peer_message::Reader<'_>>()?)
    }

    /// Reads a batch body of at most `max_bytes`.
    pub fn decode_batch(body: &[u8], max_bytes: usize) -> Result<Vec<Self>, MessageError> {
        let wire = capnp::serialize::read_message_from_flat_slice(&mut &body[..], read_options(max_bytes))?;
        wire.get_root::<peer_batch::Reader<'_>>()?.get_messages()?.iter().map(Self::read).collect()
    }

    fn read(root: peer_message::Reader<'_>) -> Result<Self, MessageError> {
        let topic = Identity::from_slice("topic", root.get_topic()?)?;
        use peer_message::Which;
        let says = match root.which()? {
            Which::Subscribe(from) => Says::Subscribe(from),
            Which::Subscribed(subscribed) => Says::Subscribed { last_seq: subscribed.get_last_seq(), policy: subscribed.get_policy()? },
            Which::Refused(refused) => Says::Refused {
                reason: refused.get_reason()?,
                detail: refused.get_detail()?.to_string().map_err(|_| MessageError::ProtocolNotUtf8)?,
            },
            Which::Unsubscribe(()) => Says::Unsubscribe,
            Which::Unsubscribed(()) => Says::Unsubscribed,
            Which::Event(message) => Says::Event(EngineMessage::read(message?)?),
            Which::Ack(seq) => Says::Ack(seq),
            Which::Resend(resend) => Says::Resend { from: resend.get_from(), to: resend.get_to() },
            Which::Missing(missing) => Says::Missing { from: missing.get_from(), to: missing.get_to() },
            Which::Heartbeat(seq) => Says::Heartbeat(seq),
            Which::Want(from) => Says::Want(from),
            Which::Unwant(()) => Says::Unwant,
        };
        Ok(PeerMessage { topic, says })
    }
}

/// Bounds the traversal of a body of at most `max_bytes`.
fn read_options(max_bytes: usize) -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(max_bytes / 8 + 64)).nesting_limit(16);
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Destination, Keypair};

    #[test]
    fn the_largest_event_that_may_leave_its_node_fits_the_limit_once_carried() {
        let (publisher, topic) = (Keypair::generate(), Keypair::generate().identity());
        let limit = 1 << 20;
        let mut event = EngineMessage::new(publisher.identity(), Destination::Topic(topic), u64::MAX - 1, vec![7; limit - PEER_EVENT_OVERHEAD]);
        event.sig = Some(publisher.sign(b"any"));
        event.expiry = Some(u64::MAX);
        event.reply_to = Some(u64::MAX);
        let carried = PeerMessage::new(topic, Says::Event(event)).encode();
        assert!(carried.len() <= limit, "{} bytes carried", carried.len());
    }

    #[test]
    fn a_batch_survives_the_wire_in_order_and_garbage_is_an_error() {
        let topic = Keypair::generate().identity();
        let messages: Vec<PeerMessage> = (1..=3).map(|n| PeerMessage::new(topic, Says::Ack(n))).collect();
        assert_eq!(PeerMessage::decode_batch(&PeerMessage::encode_batch(&messages), 1 << 20).unwrap(), messages);
        assert!(PeerMessage::decode_batch(&[9; 40], 1 << 20).is_err());
    }

    #[test]
    fn every_kind_survives_the_wire_and_garbage_is_an_error() {
        let topic = Keypair::generate().identity();
        let event = EngineMessage::new(topic, Destination::Topic(topic), 7, vec![1; 300]);
        let all = [
            Says::Subscribe(3),
            Says::Subscribed { last_seq: 9, policy: TopicPolicy::CutSlow },
            Says::Refused { reason: PeerRefusal::Denied, detail: "scope local".into() },
            Says::Unsubscribe,
            Says::Unsubscribed,
            Says::Event(event),
            Says::Ack(4),
            Says::Resend { from: 5, to: 9 },
            Says::Missing { from: 2, to: 6 },
            Says::Heartbeat(8),
            Says::Want(1),
            Says::Unwant,
        ];
        for says in all {
            let message = PeerMessage::new(topic, says);
            assert_eq!(PeerMessage::decode(&message.encode(), 4096).unwrap(), message);
        }
        assert!(PeerMessage::decode(b"not a capnp message", 4096).is_err());
        let big = PeerMessage::new(topic, Says::Event(EngineMessage::new(topic, Destination::Topic(topic), 1, vec![0; 100_000])));
        assert!(PeerMessage::decode(&big.encode(), 4096).is_err(), "a body over the limit is refused");
    }
}
