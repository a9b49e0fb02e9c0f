//! Doorbells (RING.md, "Waking"): the node's, which the router sleeps on, and each engine's
//! own, which it sleeps on when all its inbound rings are empty.

use crate::layout::*;
use crate::region::Region;
use crate::handoff::Handed;
use crate::segment::{map, map_handed, RingSegment, SegmentError};
use std::sync::atomic::{AtomicU32, Ordering};

/// A doorbell: a futex page a side sleeps on and the sides writing to its rings ring (RING.md,
/// "Waking"). The node's (the router's) is rung by every engine after writing its outbox; an
/// engine's own is rung by the router after writing its inbox and by the engines writing to it
/// on direct channels.
pub struct Doorbell {
    region: Region,
    pub name: String,
}

impl Doorbell {
    /// Opens the doorbell, creating it if it does not exist (the router does).
    pub fn open_or_create(name: &str) -> Result<Doorbell, SegmentError> {
        match map(name, Some(DOORBELL_SIZE)) {
            Ok(region) => {
                // The owner first: a sweep never sees a valid doorbell without one.
                region.u32_at(DOORBELL_ROUTER_PID_AT).store(std::process::id(), Ordering::Relaxed);
                region.u32_at(VERSION_AT).store(DOORBELL_VERSION, Ordering::Relaxed);
                region.u64_at(MAGIC_AT).store(DOORBELL_MAGIC, Ordering::Release);
                Ok(Doorbell { region, name: name.to_string() })
            }
            Err(SegmentError::System { source: nix::Error::EEXIST, .. }) => match Doorbell::open(name) {
                Ok(doorbell) => {
                    doorbell.set_router_pid(std::process::id());
                    Ok(doorbell)
                }
                // Not a doorbell this router may use (another user's, or not a doorbell at
                // all): removed and made afresh, or the error says why it cannot be.
                Err(unusable @ SegmentError::Invalid { .. }) => {
                    RingSegment::unlink(name).map_err(|_| unusable)?;
                    Doorbell::open_or_create(name)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Records `pid` as the router that opened it last.
    pub fn set_router_pid(&self, pid: u32) {
        self.region.u32_at(DOORBELL_ROUTER_PID_AT).store(pid, Ordering::Relaxed);
    }

    /// The process id of the router that last opened it.
    pub fn router_pid(&self) -> u32 {
        self.region.u32_at(DOORBELL_ROUTER_PID_AT).load(Ordering::Relaxed)
    }

    /// Opens an existing doorbell by name (a router does, to take it over).
    pub fn open(name: &str) -> Result<Doorbell, SegmentError> {
        Doorbell::checked(map(name, None)?, name)
    }

    /// Maps a doorbell the router handed over (engines do).
    pub fn handed(handed: Handed) -> Result<Doorbell, SegmentError> {
        let name = handed.name.clone();
        Doorbell::checked(map_handed(handed)?, &name)
    }

    fn checked(region: Region, name: &str) -> Result<Doorbell, SegmentError> {
        if region.len() < DOORBELL_SIZE || region.u64_at(MAGIC_AT).load(Ordering::Acquire) != DOORBELL_MAGIC {
            return Err(SegmentError::Invalid { name: name.to_string(), problem: "not a netmachine doorbell".into() });
        }
        let version = region.u32_at(VERSION_AT).load(Ordering::Relaxed);
        if version != DOORBELL_VERSION {
            return Err(SegmentError::Invalid { name: name.to_string(), problem: format!("doorbell layout version {version}, this side speaks {DOORBELL_VERSION}") });
        }
        Ok(Doorbell { region, name: name.to_string() })
    }

    #[inline]
    pub fn sleeping(&self) -> &AtomicU32 {
        self.region.u32_at(DOORBELL_SLEEPING_AT)
    }

    #[inline]
    pub fn rings(&self) -> &AtomicU32 {
        self.region.u32_at(DOORBELL_RINGS_AT)
    }

    /// The node's doorbell: an engine, after writing to its outbox, rings if the router sleeps.
    #[inline]
    pub fn ring(&self) {
        crate::wait::ring_doorbell(self.sleeping(), self.rings());
    }

    /// The node's doorbell: the router, with nothing to do, sleeps until an engine rings (or
    /// for a while).
    pub fn sleep(&self, anything_waiting: impl FnMut() -> bool) {
        crate::wait::sleep_on_doorbell(self.sleeping(), self.rings(), anything_waiting);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::doorbell_name;
    use crate::random_key as key;

    #[test]
    fn the_doorbell_is_shared_by_name() {
        let name = doorbell_name(&key());
        let router = Doorbell::open_or_create(&name).unwrap();
        let engine = Doorbell::open(&name).unwrap();
        engine.ring();
        assert_eq!(router.rings().load(Ordering::SeqCst), 0, "no ring while the router is awake");
        router.sleeping().store(1, Ordering::SeqCst);
        engine.ring();
        assert_eq!(router.rings().load(Ordering::SeqCst), 1);
        let again = Doorbell::open_or_create(&name).unwrap();
        assert_eq!(again.rings().load(Ordering::SeqCst), 1, "reopening keeps the doorbell");
        RingSegment::unlink(&name).unwrap();
    }
}
