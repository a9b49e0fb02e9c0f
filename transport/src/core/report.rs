//! Which peers' frame counts the transport reports on its events stream: those whose counts
//! changed since they were last reported. A peer that is gone is forgotten, so it is reported
//! afresh if it comes back.

use netmachine_schema::Identity;
use std::collections::BTreeMap;

/// Frames sent to and received from one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameCounts {
    pub sent: u64,
    pub received: u64,
}

/// The counts last reported, per peer.
#[derive(Debug, Default)]
pub struct CountReport {
    reported: BTreeMap<Identity, FrameCounts>,
}

impl CountReport {
    /// Of the `current` counts of every peer there is, those to report now, in identity order.
    pub fn changed(&mut self, current: impl IntoIterator<Item = (Identity, FrameCounts)>) -> Vec<(Identity, FrameCounts)> {
        let current: BTreeMap<Identity, FrameCounts> = current.into_iter().collect();
        self.reported.retain(|id, _| current.contains_key(id));
        current.into_iter().filter(|(id, counts)| self.reported.insert(*id, *counts) != Some(*counts)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netmachine_schema::Keypair;

    #[test]
    fn only_changed_counts_are_reported_and_a_returning_peer_is_reported_afresh() {
        let (a, b) = (Keypair::generate().identity(), Keypair::generate().identity());
        let counts = |sent, received| FrameCounts { sent, received };
        let mut report = CountReport::default();
        assert_eq!(report.changed([(a, counts(1, 0)), (b, counts(0, 0))]).len(), 2);
        assert_eq!(report.changed([(a, counts(1, 0)), (b, counts(0, 3))]), vec![(b, counts(0, 3))]);
        assert!(report.changed([(a, counts(1, 0)), (b, counts(0, 3))]).is_empty());
        assert!(report.changed([(a, counts(1, 0))]).is_empty(), "b is gone");
        assert_eq!(report.changed([(a, counts(1, 0)), (b, counts(0, 3))]), vec![(b, counts(0, 3))]);
    }
}
