//! Cleaning up after nodes and engines that are gone (RING.md, "The segment"): any router, when
//! it starts, removes the shared-memory objects no live process can use any more.

use crate::channel::ChannelSegment;
use crate::doorbell::Doorbell;
use crate::layout::{CHANNEL_CONSUMER_PID_AT, CHANNEL_PRODUCER_PID_AT, CHANNEL_ROUTER_PID_AT};
use crate::segment::{RingSegment, BELL_SUFFIX, CHANNEL_INFIX, SEGMENT_PREFIX};
use std::sync::atomic::Ordering;

/// Whether process `pid` exists (0: no process was recorded).
pub fn process_alive(pid: u32) -> bool {
    // EPERM: it exists, as another user's process (an engine of another user, or a router an
    // engine of another user attached to).
    pid != 0 && matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None), Ok(()) | Err(nix::Error::EPERM))
}

/// Removes the netmachine objects whose names start with `prefix` (`SEGMENT_PREFIX`: of any
/// node) that nobody can use any more: ring segments whose router and engine are both gone,
/// engines' doorbells whose ring segment is gone, direct channels whose router and two engines
/// are all gone, and nodes' doorbells whose router is gone and for whose node no ring segment is left.
/// Returns how many it removed.
pub fn sweep_orphans(prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/dev/shm") else { return 0 };
    let names: Vec<String> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|f| f.starts_with(SEGMENT_PREFIX) && f.starts_with(prefix))
        .collect();
    // Something unreadable may be in the middle of being made by a router starting right now:
    // it is left alone until it is old enough to be sure.
    let settled = |file: &str| {
        std::fs::metadata(format!("/dev/shm/{file}"))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(60)))
    };
    let mut removed = 0;
    let mut remove = |file: &str| {
        if RingSegment::unlink(&format!("/{file}")).is_ok() {
            removed += 1;
        }
    };
    let (node_bells, rest): (Vec<&String>, Vec<&String>) = names.iter().partition(|f| f.ends_with("-doorbell"));
    let (engine_bells, rest): (Vec<&String>, Vec<&String>) = rest.into_iter().partition(|f| f.ends_with(BELL_SUFFIX));
    let (channels, rings): (Vec<&String>, Vec<&String>) = rest.into_iter().partition(|f| f.contains(CHANNEL_INFIX));
    let mut rings_left = std::collections::HashSet::new();
    for file in rings {
        let orphan = match RingSegment::open(&format!("/{file}"), None) {
            Ok(segment) => !process_alive(segment.router_pid()) && !process_alive(segment.engine_pid()),
            Err(_) => settled(file),
        };
        if orphan {
            remove(file);
        } else {
            rings_left.insert(file.as_str());
        }
    }
    for file in channels {
        let orphan = match ChannelSegment::open(&format!("/{file}"), None, None) {
            // Before its engines map it, only the router that made it is there to keep it.
            Ok(channel) => [CHANNEL_ROUTER_PID_AT, CHANNEL_PRODUCER_PID_AT, CHANNEL_CONSUMER_PID_AT].iter().all(|&at| !process_alive(channel.word(at).load(Ordering::Relaxed))),
            Err(_) => settled(file),
        };
        if orphan {
            remove(file);
        }
    }
    for file in engine_bells {
        if !rings_left.contains(file.trim_end_matches(BELL_SUFFIX)) {
            remove(file);
        }
    }
    let nodes_left: std::collections::HashSet<&str> = rings_left.iter().filter_map(|file| file.rsplit_once('-').map(|(node, _)| node)).collect();
    for file in node_bells {
        let orphan = match Doorbell::open(&format!("/{file}")) {
            Ok(doorbell) => !process_alive(doorbell.router_pid()),
            Err(_) => settled(file),
        };
        if orphan && !nodes_left.contains(file.trim_end_matches("-doorbell")) {
            remove(file);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random_key as key;
    use crate::segment::{bell_name as bell_name_of, channel_name, doorbell_name, hex, segment_name};

    #[test]
    fn orphans_are_swept_and_what_a_live_process_holds_is_kept() {
        let node = key();
        let (live, dead) = (key(), key());
        let live_name = segment_name(&node, &live);
        let dead_name = segment_name(&node, &dead);
        let kept = RingSegment::create(&live_name, &live, 4096).unwrap();
        kept.set_engine_pid(std::process::id());
        kept.set_router_pid(0);
        let orphan = RingSegment::create(&dead_name, &dead, 4096).unwrap();
        orphan.set_router_pid(0);
        orphan.set_engine_pid(0);
        let bell_name = doorbell_name(&node);
        let bell = Doorbell::open_or_create(&bell_name).unwrap();
        bell.set_router_pid(0);
        // Each engine's own doorbell, and a channel each way between them (the dead engine's
        // end of each recorded as gone).
        let engine_bells = [bell_name_of(&node, &live), bell_name_of(&node, &dead)];
        for name in &engine_bells {
            Doorbell::open_or_create(name).unwrap().set_router_pid(0);
        }
        let (to_dead, from_dead, unmapped) = (channel_name(&node, &live, &dead), channel_name(&node, &dead, &dead), channel_name(&node, &dead, &live));
        let live_channel = ChannelSegment::create(&to_dead, &live, &dead, 4096, 100).unwrap();
        live_channel.word(CHANNEL_ROUTER_PID_AT).store(0, Ordering::Relaxed);
        live_channel.word(CHANNEL_PRODUCER_PID_AT).store(std::process::id(), Ordering::Relaxed);
        ChannelSegment::create(&from_dead, &dead, &dead, 4096, 100).unwrap().word(CHANNEL_ROUTER_PID_AT).store(0, Ordering::Relaxed);
        // Just made by a live router, not yet mapped by either engine: kept (another node's
        // router starting at that moment once removed it under a granted engine's feet).
        ChannelSegment::create(&unmapped, &dead, &live, 4096, 100).unwrap();
        // Only this test's node: other tests' (and other nodes') segments are left alone.
        let this_node = format!("netmachine-{}-", &hex(&node)[..16]);
        assert_eq!(sweep_orphans(&this_node), 3, "the dead engine's rings, its doorbell and the channel of no live engine");
        assert!(RingSegment::open(&dead_name, None).is_err(), "the orphan is removed");
        assert!(Doorbell::open(&engine_bells[1]).is_err() && ChannelSegment::open(&from_dead, None, None).is_err());
        assert!(RingSegment::open(&live_name, None).is_ok(), "a live engine's rings stay");
        assert!(Doorbell::open(&engine_bells[0]).is_ok(), "and its doorbell");
        assert!(ChannelSegment::open(&to_dead, None, None).is_ok(), "and a channel it writes");
        assert!(ChannelSegment::open(&unmapped, None, None).is_ok(), "and a channel its router just made");
        assert!(Doorbell::open(&bell_name).is_ok(), "the doorbell stays while its node has rings");
        RingSegment::unlink(&live_name).unwrap();
        RingSegment::unlink(&to_dead).unwrap();
        RingSegment::unlink(&unmapped).unwrap();
        assert_eq!(sweep_orphans(&this_node), 2);
        assert!(Doorbell::open(&bell_name).is_err(), "then it goes too, with the engine's");
    }
}
