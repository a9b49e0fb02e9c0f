//! Every offset and constant of the ring segment, the direct channel and the doorbell (RING.md,
//! layout version 4).

/// `NMRING\0\0`, little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"NMRING\0\0");
/// `NMBELL\0\0`, little-endian.
pub const DOORBELL_MAGIC: u64 = u64::from_le_bytes(*b"NMBELL\0\0");
pub const VERSION: u32 = 4;
/// The doorbell's own layout version, which ring layouts 2 to 4 left unchanged.
pub const DOORBELL_VERSION: u32 = 1;
pub const HEADER_SIZE: usize = 4096;
pub const DOORBELL_SIZE: usize = 4096;
/// The smallest ring capacity, in bytes.
pub const MIN_CAPACITY: usize = 4096;

pub const MAGIC_AT: usize = 0;
pub const VERSION_AT: usize = 8;
pub const HEADER_SIZE_AT: usize = 12;
pub const CAPACITY_AT: usize = 16;
pub const ENGINE_AT: usize = 24;
pub const ROUTER_PID_AT: usize = 56;
pub const ENGINE_PID_AT: usize = 60;
pub const OUTBOX_TAIL_AT: usize = 256;
pub const OUTBOX_HEAD_AT: usize = 384;
pub const OUTBOX_PRODUCER_WAITING_AT: usize = 512;
pub const INBOX_TAIL_AT: usize = 768;
pub const INBOX_HEAD_AT: usize = 896;
/// How many times the router changed the engine's channel table.
pub const GRANTS_AT: usize = 1024;
/// The engines this one may write to by direct channel: `CHANNEL_SLOTS` identities, zero
/// where the slot is free.
pub const CHANNEL_TABLE_AT: usize = 2048;
pub const CHANNEL_SLOTS: usize = 16;

/// `NMCHAN\0\0`, little-endian.
pub const CHANNEL_MAGIC: u64 = u64::from_le_bytes(*b"NMCHAN\0\0");
pub const CHANNEL_PRODUCER_AT: usize = 24;
pub const CHANNEL_CONSUMER_AT: usize = 56;
pub const CHANNEL_PRODUCER_PID_AT: usize = 88;
pub const CHANNEL_CONSUMER_PID_AT: usize = 92;
pub const CHANNEL_ROUTER_PID_AT: usize = 96;
pub const CHANNEL_MAX_BODY_AT: usize = 100;
pub const CHANNEL_TAIL_AT: usize = 256;
pub const CHANNEL_HEAD_AT: usize = 384;
pub const CHANNEL_PRODUCER_WAITING_AT: usize = 512;
pub const CHANNEL_CLOSED_AT: usize = 640;
pub const CHANNEL_WRITTEN_AT: usize = 768;
pub const CHANNEL_READ_AT: usize = 896;
pub const CHANNEL_DROPPED_AT: usize = 1024;
pub const CHANNEL_LEFT_AT: usize = 1152;

pub const DOORBELL_ROUTER_PID_AT: usize = 64;
pub const DOORBELL_SLEEPING_AT: usize = 128;
pub const DOORBELL_RINGS_AT: usize = 256;

/// A record's header: length (u32) and kind (u32).
pub const RECORD_HEADER: usize = 8;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    /// An EngineMessage (RING.md, "Message records").
    Message = 1,
    /// Space to skip up to the end of the data area.
    Padding = 2,
    /// The router could not route a message the engine wrote (inbox only).
    Refusal = 3,
    /// The engine's messages to an engine go by their direct channel from here on (outbox only).
    ChannelSwitch = 4,
    /// Another engine's messages come by a direct channel from here on (inbox only).
    ChannelOpen = 5,
    /// Messages alike but for their bodies, one after another (direct channels only).
    Run = 6,
}

impl Kind {
    pub fn from_u32(kind: u32) -> Option<Kind> {
        match kind {
            1 => Some(Kind::Message),
            2 => Some(Kind::Padding),
            3 => Some(Kind::Refusal),
            4 => Some(Kind::ChannelSwitch),
            5 => Some(Kind::ChannelOpen),
            6 => Some(Kind::Run),
            _ => None,
        }
    }
}

/// Bytes a record with a `length`-byte body takes in the ring.
pub fn record_size(length: usize) -> usize {
    RECORD_HEADER + length.div_ceil(8) * 8
}

/// Bytes of a segment whose rings hold `capacity` bytes each.
pub fn segment_size(capacity: usize) -> usize {
    HEADER_SIZE + 2 * capacity
}

/// Bytes of a direct channel whose ring holds `capacity` bytes.
pub fn channel_size(capacity: usize) -> usize {
    HEADER_SIZE + capacity
}

/// Where a ring's data starts.
pub fn outbox_data_at() -> usize {
    HEADER_SIZE
}

pub fn inbox_data_at(capacity: usize) -> usize {
    HEADER_SIZE + capacity
}

/// Whether `capacity` is a valid ring capacity.
pub fn valid_capacity(capacity: usize) -> bool {
    capacity >= MIN_CAPACITY && capacity.is_power_of_two() && capacity <= 1 << 30
}

/// The contract itself, RING.md, against which implementations check their constants.
pub const RING_MD: &str = include_str!("../RING.md");

/// The rows of `rows` (an offset, and words of its field) that no table of RING.md has as a row
/// `| offset | ... field ...`: what an implementation's constants and the contract disagree on.
pub fn rows_missing_from_ring_md<'a>(rows: &[(usize, &'a str)]) -> Vec<(usize, &'a str)> {
    let has_row = |offset: usize, field: &str| RING_MD.lines().map(str::trim_start).any(|l| l.starts_with(&format!("| {offset} |")) && l.contains(field));
    rows.iter().copied().filter(|&(offset, field)| !has_row(offset, field)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The constants here and the tables in RING.md must agree.
    #[test]
    fn the_layout_matches_ring_md() {
        let doc = RING_MD;
        let (version, doorbell_version) = (format!("layout version, `{VERSION}`"), format!("layout version, `{DOORBELL_VERSION}`"));
        let rows = [
            (MAGIC_AT, "magic `0x0000_474e_4952_4d4e`"),
            (VERSION_AT, version.as_str()),
            (HEADER_SIZE_AT, "header size, `4096`"),
            (CAPACITY_AT, "capacity of each ring"),
            (ENGINE_AT, "the engine identity"),
            (ROUTER_PID_AT, "the router's process id"),
            (ENGINE_PID_AT, "the engine's process id"),
            (OUTBOX_TAIL_AT, "outbox `tail`"),
            (OUTBOX_HEAD_AT, "outbox `head`"),
            (OUTBOX_PRODUCER_WAITING_AT, "outbox `producer_waiting`"),
            (INBOX_TAIL_AT, "inbox `tail`"),
            (INBOX_HEAD_AT, "inbox `head`"),
            (GRANTS_AT, "`grants`"),
            (CHANNEL_TABLE_AT, "the channel table"),
            (CHANNEL_PRODUCER_AT, "the producer's identity"),
            (CHANNEL_CONSUMER_AT, "the consumer's identity"),
            (CHANNEL_PRODUCER_PID_AT, "the producer's process id"),
            (CHANNEL_CONSUMER_PID_AT, "the consumer's process id"),
            (CHANNEL_ROUTER_PID_AT, "the granting router's process id"),
            (CHANNEL_MAX_BODY_AT, "the largest message body"),
            (CHANNEL_TAIL_AT, "`tail`"),
            (CHANNEL_HEAD_AT, "`head`"),
            (CHANNEL_PRODUCER_WAITING_AT, "`producer_waiting`"),
            (CHANNEL_CLOSED_AT, "`closed`"),
            (CHANNEL_WRITTEN_AT, "`written`"),
            (CHANNEL_READ_AT, "`read`"),
            (CHANNEL_DROPPED_AT, "`dropped`"),
            (CHANNEL_LEFT_AT, "`left`"),
            (VERSION_AT, doorbell_version.as_str()),
            (DOORBELL_ROUTER_PID_AT, "the process id of the router that made it"),
            (DOORBELL_SLEEPING_AT, "`sleeping`"),
            (DOORBELL_RINGS_AT, "`rings`"),
        ];
        assert_eq!(rows_missing_from_ring_md(&rows), [], "RING.md has no row for these");
        assert_eq!(MAGIC, 0x0000_474e_4952_4d4e);
        assert_eq!(DOORBELL_MAGIC, 0x0000_4c4c_4542_4d4e);
        assert_eq!(CHANNEL_MAGIC, 0x0000_4e41_4843_4d4e);
        assert!(doc.contains("# The netmachine ring, layout version 4"));
        for kind in [Kind::Message, Kind::Padding, Kind::Refusal, Kind::ChannelSwitch, Kind::ChannelOpen, Kind::Run] {
            assert!(doc.contains(&format!("- `{}` ", kind as u32)), "RING.md does not describe kind {kind:?}");
        }
    }

    #[test]
    fn every_control_word_has_a_cache_line_pair_of_its_own() {
        let segment = [OUTBOX_TAIL_AT, OUTBOX_HEAD_AT, OUTBOX_PRODUCER_WAITING_AT, INBOX_TAIL_AT, INBOX_HEAD_AT, GRANTS_AT, CHANNEL_TABLE_AT];
        let channel = [CHANNEL_TAIL_AT, CHANNEL_HEAD_AT, CHANNEL_PRODUCER_WAITING_AT, CHANNEL_CLOSED_AT, CHANNEL_WRITTEN_AT, CHANNEL_READ_AT, CHANNEL_DROPPED_AT, CHANNEL_LEFT_AT];
        for words in [&segment[..], &channel[..]] {
            for pair in words.windows(2) {
                assert!(pair[1] - pair[0] >= 128 && pair[0] % 128 == 0);
            }
            assert!(*words.last().unwrap() + 128 <= HEADER_SIZE);
        }
        assert!(CHANNEL_TABLE_AT + 32 * CHANNEL_SLOTS <= HEADER_SIZE);
    }

    #[test]
    fn records_are_padded_to_eight_bytes() {
        assert_eq!(record_size(0), 8);
        assert_eq!(record_size(1), 16);
        assert_eq!(record_size(8), 16);
        assert_eq!(record_size(9), 24);
        assert!(valid_capacity(4096) && !valid_capacity(4095) && !valid_capacity(6000));
    }
}
