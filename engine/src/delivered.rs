//! Messages from other nodes taken once. A router killed after placing a message from another
//! node, before the frame that carried it was settled, places it again after its restart (the
//! sending node sends that frame again). The router stamps each such message with where it came
//! in: per sending engine and node, stamps only grow (frames are taken in order, a frame's
//! messages in order, and each destination's line is first in, first out), so a message whose
//! stamp does not is the second copy, and is dropped here and counted.

use netmachine_schema::{EngineMessage, Identity};
use std::collections::HashMap;

/// Senders remembered at most; beyond, the table starts over (a second copy can then slip by
/// only for a sender not heard from in that long).
const SENDERS: usize = 65_536;

/// The last stamp taken from each sending engine through each node.
#[derive(Default)]
pub(crate) struct Delivered {
    last: HashMap<(Identity, Identity), (u64, u64, u32)>,
}

impl Delivered {
    /// Whether `message` is new: unstamped (from this node), or stamped past the last one from
    /// its sender and node.
    pub fn fresh(&mut self, message: &EngineMessage) -> bool {
        let Some(stamp) = message.stamp else { return true };
        if self.last.len() >= SENDERS && !self.last.contains_key(&(message.src, stamp.node)) {
            self.last.clear();
        }
        let last = self.last.entry((message.src, stamp.node)).or_default();
        let fresh = stamp.position() > *last;
        if fresh {
            *last = stamp.position();
        }
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::{Destination, Keypair, Stamp};

    #[test]
    fn a_message_placed_again_by_a_restarted_router_is_dropped_and_others_are_not() {
        let (sender, other, node, elsewhere) = (Keypair::generate().identity(), Keypair::generate().identity(), Keypair::generate().identity(), Keypair::generate().identity());
        let message = |src: Identity, node: Identity, seq: u64, index: u32| {
            let mut message = EngineMessage::new(src, Destination::Engine(src), seq, vec![]);
            message.stamp = Some(Stamp { node, session: 9, seq, index });
            message
        };
        let mut delivered = Delivered::default();
        assert!(delivered.fresh(&message(sender, node, 4, 0)));
        assert!(delivered.fresh(&message(sender, node, 4, 2)));
        assert!(delivered.fresh(&message(other, node, 4, 1)), "another sender in the same frame");
        assert!(!delivered.fresh(&message(sender, node, 4, 0)), "the frame sent again after the router restarted");
        assert!(!delivered.fresh(&message(sender, node, 4, 2)));
        assert!(delivered.fresh(&message(sender, node, 5, 0)));
        assert!(delivered.fresh(&message(sender, elsewhere, 1, 0)), "the sender moved to another node, numbered apart");
        assert!(delivered.fresh(&EngineMessage::new(sender, Destination::Engine(sender), 1, vec![])), "a message from this node has no stamp");
    }
}
