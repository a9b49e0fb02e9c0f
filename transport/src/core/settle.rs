//! Which of two connections to one node stays. Both nodes must reach the same answer without
//! talking, or each closes the connection the other kept. The rule:
//! - a connection from another incarnation of the peer's transport (it restarted) replaces the
//!   old one at once: the old one is dead, however long QUIC would take to notice;
//! - a connection made in the same direction as the current one replaces it: its dialer had
//!   given the current one up;
//! - otherwise both nodes dialed each other at about the same time, and the connection dialed
//!   by the node with the lower identity stays. A dial takes at most `connect_timeout`, so two
//!   such connections are established within that window of each other; an opposite-direction
//!   connection later than that means the peer gave the current one up, and replaces it.

use netmachine_schema::Identity;

/// Who opened a connection, seen from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Dialed,
    Accepted,
}

/// What settling needs to know of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Side {
    pub direction: Direction,
    /// The peer transport's incarnation, as it said in the handshake.
    pub incarnation: u64,
    /// When it was established, in the pool's milliseconds.
    pub since: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Current,
    New,
}

/// Which stays of `current` and `new`, both to `remote`, seen from `local`.
pub fn keep(local: &Identity, remote: &Identity, current: &Side, new: &Side, window: u64) -> Keep {
    if new.incarnation != current.incarnation || new.direction == current.direction {
        return Keep::New;
    }
    let dialed_by_lower = if local < remote { Direction::Dialed } else { Direction::Accepted };
    let simultaneous = new.direction == Direction::Dialed || new.since.saturating_sub(current.since) < window;
    match simultaneous && current.direction == dialed_by_lower {
        true => Keep::Current,
        false => Keep::New,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    fn side(direction: Direction, incarnation: u64, since: u64) -> Side {
        Side { direction, incarnation, since }
    }

    fn ordered() -> (Identity, Identity) {
        let (a, b) = (Keypair::generate().identity(), Keypair::generate().identity());
        (a.min(b), a.max(b))
    }

    #[test]
    fn simultaneous_dials_keep_the_same_connection_on_both_nodes_in_any_order() {
        let (low, high) = ordered();
        // Connection L is dialed by `low`, H by `high`; each node may establish either first.
        // Seen from `low`, L is Dialed and H Accepted; seen from `high`, the reverse.
        let sides = |dialed_l: Direction, dialed_h: Direction, l_at: u64, h_at: u64| {
            (side(dialed_l, 1, l_at), side(dialed_h, 1, h_at))
        };
        for (l_at, h_at) in [(0, 10), (10, 0)] {
            for (local, remote, l_dir, h_dir) in
                [(low, high, Direction::Dialed, Direction::Accepted), (high, low, Direction::Accepted, Direction::Dialed)]
            {
                let (l, h) = sides(l_dir, h_dir, l_at, h_at);
                let kept = match l_at <= h_at {
                    true => keep(&local, &remote, &l, &h, 1000) == Keep::Current,
                    false => keep(&local, &remote, &h, &l, 1000) == Keep::New,
                };
                assert!(kept, "{} keeps the connection dialed by the lower identity", if local == low { "low" } else { "high" });
            }
        }
    }

    #[test]
    fn a_restarted_peer_or_a_redial_in_the_same_direction_replaces_the_current_connection() {
        let (low, high) = ordered();
        let current = side(Direction::Dialed, 1, 0);
        assert_eq!(keep(&low, &high, &current, &side(Direction::Accepted, 2, 5), 1000), Keep::New);
        assert_eq!(keep(&low, &high, &current, &side(Direction::Dialed, 1, 5), 1000), Keep::New);
        // The peer gave up `low`'s connection long after it was made: its dial replaces it.
        assert_eq!(keep(&low, &high, &current, &side(Direction::Accepted, 1, 5000), 1000), Keep::New);
        assert_eq!(keep(&low, &high, &current, &side(Direction::Accepted, 1, 500), 1000), Keep::Current);
    }
}
