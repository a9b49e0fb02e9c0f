//! A received message borrowed rather than owned: what [`crate::Engine::poll_blocking`] hands
//! its handler, so that a stream of small messages is read without an allocation each. Its
//! protocol and body borrow the engine's own copy of the record (never the shared ring, which
//! the sender may rewrite), and live until the handler returns.

use netmachine_schema::message_capnp::Scope;
use netmachine_schema::{Destination, EngineMessage, Identity, SignatureBytes, Stamp};

/// A message, its protocol and body borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageView<'a> {
    pub src: Identity,
    pub dst: Destination,
    pub id: u64,
    pub reply_to: Option<u64>,
    /// Milliseconds since the Unix epoch after which the message is dropped.
    pub expiry: Option<u64>,
    pub scope: Scope,
    pub ordered: bool,
    pub reliable: bool,
    pub encrypted: bool,
    pub protocol: &'a str,
    pub body: &'a [u8],
    pub sig: Option<SignatureBytes>,
    /// Where it came in from another node (written by the router).
    pub stamp: Option<Stamp>,
}

impl<'a> MessageView<'a> {
    /// A view of an owned message.
    pub fn of(message: &'a EngineMessage) -> MessageView<'a> {
        MessageView {
            src: message.src,
            dst: message.dst,
            id: message.id,
            reply_to: message.reply_to,
            expiry: message.expiry,
            scope: message.scope,
            ordered: message.ordered,
            reliable: message.reliable,
            encrypted: message.encrypted,
            protocol: &message.protocol,
            body: &message.body,
            sig: message.sig,
            stamp: message.stamp,
        }
    }

    /// The message, owned (its protocol and body copied).
    pub fn to_message(&self) -> EngineMessage {
        EngineMessage {
            src: self.src,
            dst: self.dst,
            id: self.id,
            reply_to: self.reply_to,
            expiry: self.expiry,
            scope: self.scope,
            ordered: self.ordered,
            reliable: self.reliable,
            encrypted: self.encrypted,
            protocol: self.protocol.to_string(),
            body: self.body.to_vec(),
            sig: self.sig,
            stamp: self.stamp,
        }
    }

    /// Neither signed, stamped, a reply nor expiring: nothing to verify, look up or compare
    /// with the clock before it is handed on.
    pub fn is_plain(&self) -> bool {
        self.sig.is_none() && self.stamp.is_none() && self.reply_to.is_none() && self.expiry.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_carries_every_field_and_only_a_bare_message_is_plain() {
        let message = EngineMessage::with_every_field();
        assert_eq!(MessageView::of(&message).to_message(), message);
        assert!(!MessageView::of(&message).is_plain());
        let bare = EngineMessage::new(message.src, message.dst, 1, b"x".to_vec());
        assert!(MessageView::of(&bare).is_plain());
        for unplain in [
            EngineMessage { sig: Some([1; 64]), ..bare.clone() },
            EngineMessage { stamp: message.stamp, ..bare.clone() },
            EngineMessage { reply_to: Some(0), ..bare.clone() },
            EngineMessage { expiry: Some(u64::MAX), ..bare.clone() },
        ] {
            assert!(!MessageView::of(&unplain).is_plain(), "{unplain:?}");
        }
    }
}
