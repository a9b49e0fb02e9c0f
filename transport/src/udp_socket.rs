//! The UDP sockets QUIC runs on. Each is bound with receive and send buffers of
//! `transport.udp_buffer_bytes`: the kernel's default (about 200 KiB) fills whenever this
//! process is descheduled for a moment under a bulk stream, and every datagram it drops costs
//! QUIC a loss, a resend and a halved congestion window. How much the kernel granted, and how
//! many datagrams it dropped for want of room (its own count, in `/proc/net/udp`), are in the
//! transport's status.

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;

/// What the kernel made of the buffers asked for, for one bound socket.
pub struct SocketBuffers {
    /// The receive buffer the kernel granted, in bytes of datagrams (Linux sets aside, and
    /// reports, twice that for its own accounting).
    pub receive: usize,
    /// The socket's inode, to find its line in `/proc/net/udp`.
    inode: u64,
}

/// Binds `address` with receive and send buffers of `buffer` bytes. When the kernel's limit
/// (`net.core.rmem_max`) grants less, a process allowed to (CAP_NET_ADMIN) takes them anyway;
/// otherwise it runs with what it got, and says so.
pub fn bind(address: SocketAddr, buffer: usize) -> std::io::Result<(UdpSocket, SocketBuffers)> {
    let socket = UdpSocket::bind(address)?;
    let receive = grow(&socket, buffer, sockopt::RcvBuf, sockopt::RcvBufForce)?;
    let send = grow(&socket, buffer, sockopt::SndBuf, sockopt::SndBufForce)?;
    if receive < buffer || send < buffer {
        tracing::warn!(
            %address, asked = buffer, receive, send,
            "the kernel granted smaller UDP buffers than transport.udp_buffer_bytes: bulk streams will lose datagrams when this process is busy; raise net.core.rmem_max and net.core.wmem_max"
        );
    }
    let inode = nix::sys::stat::fstat(socket.as_fd()).map_err(std::io::Error::from)?.st_ino;
    Ok((socket, SocketBuffers { receive, inode }))
}

impl SocketBuffers {
    /// Datagrams the kernel dropped on arrival because this socket's receive buffer was full,
    /// or `None` where `/proc/net/udp` does not say.
    pub fn receive_drops(&self) -> Option<u64> {
        ["/proc/net/udp", "/proc/net/udp6"].iter().find_map(|table| drops_in(&std::fs::read_to_string(table).ok()?, self.inode))
    }
}

/// Sets one buffer to at least `wanted` bytes of datagrams if the kernel lets it; the size it
/// then has.
fn grow<Plain, Forced>(socket: &UdpSocket, wanted: usize, plain: Plain, forced: Forced) -> std::io::Result<usize>
where
    Plain: nix::sys::socket::SetSockOpt<Val = usize> + nix::sys::socket::GetSockOpt<Val = usize> + Copy,
    Forced: nix::sys::socket::SetSockOpt<Val = usize>,
{
    // Linux doubles the size set (capped at its limit) and reports the doubled figure.
    let granted = || getsockopt(socket, plain).map(|reported| reported / 2);
    if granted()? >= wanted {
        return Ok(granted()?);
    }
    setsockopt(socket, plain, &wanted)?;
    if granted()? < wanted {
        // Past the limit only with CAP_NET_ADMIN; refused otherwise, which is fine.
        let _ = setsockopt(socket, forced, &wanted);
    }
    Ok(granted()?)
}

/// The `drops` column of the line for socket `inode` in a `/proc/net/udp` table.
fn drops_in(table: &str, inode: u64) -> Option<u64> {
    table.lines().skip(1).find_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode ref pointer drops
        match (columns.get(9)?.parse::<u64>().ok()?, columns.get(12)) {
            (found, Some(drops)) if found == inode => drops.parse().ok(),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_buffers_asked_for_are_granted_and_the_sockets_drop_count_is_found() {
        // Within the kernel's limit, which any process may have.
        let limit: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max").unwrap().trim().parse().unwrap();
        let wanted = limit.min(1 << 20);
        let (_socket, buffers) = bind("127.0.0.1:0".parse().unwrap(), wanted).unwrap();
        assert!(buffers.receive >= wanted, "asked for {wanted}, granted {}", buffers.receive);
        assert_eq!(buffers.receive_drops(), Some(0));
    }

    #[test]
    fn a_full_receive_buffer_shows_in_the_drop_count() {
        let (socket, buffers) = bind("127.0.0.1:0".parse().unwrap(), 1 << 16).unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = socket.local_addr().unwrap();
        // Nobody reads: the buffer fills, and the kernel counts what it drops.
        for _ in 0..4096 {
            sender.send_to(&[7u8; 1200], to).unwrap();
        }
        let drops = buffers.receive_drops().unwrap();
        assert!(drops > 0, "4096 datagrams of 1200 bytes into a buffer of {}, none dropped", buffers.receive);
    }

    #[test]
    fn the_drops_column_is_read_from_the_sockets_own_line() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            1: 0100007F:0FAA 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 555 2 0000000000000000 3\n\
            2: 0100007F:0FAB 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 41\n";
        assert_eq!(drops_in(table, 777), Some(41));
        assert_eq!(drops_in(table, 555), Some(3));
        assert_eq!(drops_in(table, 999), None);
    }
}
