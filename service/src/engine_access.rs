//! Which Unix users may attach engines to the node (`router.engine_users` and
//! `router.engine_groups`): the node's own user always; others only when named. A connection's
//! user is what the kernel says of the process at the other end of the socket.

use nix::unistd::{Gid, Group, Uid, User};
pub use netmachine_rpc::Peer;

/// The users and groups, besides the node's own user, whose engines may attach.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineAccess {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl EngineAccess {
    /// Resolves the configured names (or numeric ids); an entry that names no user or group on
    /// this system is the error: the setting it is in, and which entry.
    pub fn resolve(users: &[String], groups: &[String]) -> Result<EngineAccess, (&'static str, String)> {
        let uids = users.iter().map(|user| match user.parse::<u32>() {
            Ok(uid) => Ok(uid),
            Err(_) => match User::from_name(user) {
                Ok(Some(found)) => Ok(found.uid.as_raw()),
                _ => Err(format!("there is no user '{user}' on this system")),
            },
        });
        let gids = groups.iter().map(|group| match group.parse::<u32>() {
            Ok(gid) => Ok(gid),
            Err(_) => match Group::from_name(group) {
                Ok(Some(found)) => Ok(found.gid.as_raw()),
                _ => Err(format!("there is no group '{group}' on this system")),
            },
        });
        let uids = uids.collect::<Result<_, _>>().map_err(|problem| ("router.engine_users", problem))?;
        let gids = gids.collect::<Result<_, _>>().map_err(|problem| ("router.engine_groups", problem))?;
        Ok(EngineAccess { uids, gids })
    }

    /// Whether users other than the node's own may attach: the node's directories and the
    /// router's sockets are then opened to them, and each connection's user checked.
    pub fn open_to_others(&self) -> bool {
        !self.uids.is_empty() || !self.gids.is_empty()
    }

    /// Whether `peer` may attach engines; if not, why, in words an operator can act on.
    pub fn admits(&self, peer: &Peer) -> Result<(), String> {
        if is_node_user(peer) || self.uids.contains(&peer.uid) {
            return Ok(());
        }
        if !self.gids.is_empty() && groups_of(peer).iter().any(|gid| self.gids.contains(gid)) {
            return Ok(());
        }
        Err(format!(
            "user {} ({}) may not attach engines to this node: add it to router.engine_users, or one of its groups to router.engine_groups",
            name_of(peer.uid),
            peer.uid
        ))
    }
}

/// Whether `peer` runs as the node's own user, whom the node's own services and tools run as.
pub fn is_node_user(peer: &Peer) -> bool {
    peer.uid == Uid::effective().as_raw()
}

/// This process, as a peer of its own sockets.
pub fn this_process() -> Peer {
    Peer { uid: Uid::effective().as_raw(), gid: Gid::effective().as_raw(), pid: std::process::id() as i32 }
}

/// `peer`'s primary group and, where its process can be read, its supplementary groups.
fn groups_of(peer: &Peer) -> Vec<u32> {
    let mut groups = vec![peer.gid];
    if peer.pid > 0 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", peer.pid)).unwrap_or_default();
        if let Some(line) = status.lines().find_map(|line| line.strip_prefix("Groups:")) {
            groups.extend(line.split_whitespace().filter_map(|gid| gid.parse::<u32>().ok()));
        }
    }
    groups
}

fn name_of(uid: u32) -> String {
    match User::from_uid(Uid::from_raw(uid)) {
        Ok(Some(user)) => user.name,
        _ => "without a name".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_user_is_admitted_others_only_when_named_and_unknown_names_are_refused() {
        let me = Uid::effective().as_raw();
        let stranger = Peer { uid: me + 4242, gid: me + 4242, pid: 0 };
        let none = EngineAccess::default();
        assert!(!none.open_to_others());
        assert!(none.admits(&Peer { uid: me, gid: 0, pid: 0 }).is_ok());
        let refused = none.admits(&stranger).unwrap_err();
        assert!(refused.contains(&format!("({})", me + 4242)) && refused.contains("router.engine_users"), "{refused}");

        let by_uid = EngineAccess::resolve(&[(me + 4242).to_string()], &[]).unwrap();
        assert!(by_uid.open_to_others() && by_uid.admits(&stranger).is_ok());
        let by_gid = EngineAccess::resolve(&[], &[(me + 4242).to_string()]).unwrap();
        assert!(by_gid.admits(&stranger).is_ok());
        assert!(by_gid.admits(&Peer { uid: me + 1, gid: me + 1, pid: 0 }).is_err());

        let root = EngineAccess::resolve(&["root".into()], &["root".into()]).unwrap();
        assert_eq!((root.uids.as_slice(), root.gids.as_slice()), (&[0][..], &[Gid::from_raw(0).as_raw()][..]));
        let (field, unknown) = EngineAccess::resolve(&["no-such-group-either".into()], &[]).unwrap_err();
        assert!(field == "router.engine_users" && unknown.contains("no user 'no-such-group-either'"), "{field}: {unknown}");
        assert_eq!(EngineAccess::resolve(&[], &["no-such-group-here".into()]).unwrap_err().0, "router.engine_groups");
    }
}
