//! Checking a block's bytes as they stream from a peer. A response to a range request is the
//! BLAKE3 tree's parent hashes and the requested 16 KiB chunk groups, in pre-order (as
//! `bao-tree` encodes it); each item is checked against the hash its parent vouched for the
//! moment its last byte arrives, so a peer that sends a bad byte is caught within one group.
//! Bytes may arrive in pieces of any size. A put is hashed the same way as it streams in
//! (`Hashing`), its outboard made on the way.

use bao_tree::iter::BaoChunk;
use bao_tree::{BaoTree, ChunkNum, ChunkRanges, TreeNode};
use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};
use bao_tree::io::sync::ReadAt;
use netmachine_schema::ContentId;

/// 16 KiB chunk groups: 2^4 BLAKE3 chunks.
pub const GROUP_BYTES: u64 = 16 * 1024;
pub const GROUP: bao_tree::BlockSize = bao_tree::BlockSize::from_chunk_log(4);
const CHUNKS_PER_GROUP: u64 = 16;

/// Groups in a block of `size` bytes (at least one: an empty block is one empty group).
pub fn groups(size: u64) -> u64 {
    size.div_ceil(GROUP_BYTES).max(1)
}

/// The chunk ranges of groups `first..end`.
pub fn group_ranges(first: u64, end: u64) -> ChunkRanges {
    ChunkRanges::from(ChunkNum(first * CHUNKS_PER_GROUP)..ChunkNum(end * CHUNKS_PER_GROUP))
}

/// Bytes a peer sent that its hashes do not vouch for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the bytes at offset {offset} of block {id} do not match its hash")]
pub struct Corrupt {
    pub id: ContentId,
    pub offset: u64,
}

/// A group checked: its offset in the block, and its bytes.
pub type Group = (u64, Vec<u8>);

/// A parent checked: its node in the tree, and its children's two hashes.
pub type Vouched = (TreeNode, [u8; 64]);

/// Checks one response to a request for some groups of one block.
pub struct Verifier {
    id: ContentId,
    /// What the response holds, in order.
    items: std::vec::IntoIter<BaoChunk>,
    current: Option<BaoChunk>,
    /// The hashes vouched for and not yet matched, the next on top.
    expected: Vec<[u8; 32]>,
    buffer: Vec<u8>,
    /// The parents checked since the last `take_vouched`.
    vouched: Vec<Vouched>,
}

impl Verifier {
    /// Expects the groups `ranges` of block `id`, of `size` bytes.
    pub fn new(id: ContentId, size: u64, ranges: &ChunkRanges) -> Self {
        let tree = BaoTree::new(size, GROUP);
        let items: Vec<BaoChunk> = tree.ranges_pre_order_chunks_iter_ref(ranges, 0).map(|item| item.without_ranges()).collect();
        let mut items = items.into_iter();
        let current = items.next();
        Verifier { id, items, current, expected: vec![id.0], buffer: Vec::new(), vouched: Vec::new() }
    }

    /// The parents checked since the last call, for the block's outboard.
    pub fn take_vouched(&mut self) -> Vec<Vouched> {
        std::mem::take(&mut self.vouched)
    }

    /// True once every item of the response arrived and was checked.
    pub fn finished(&self) -> bool {
        self.current.is_none()
    }

    /// Takes the next bytes of the response: the groups they completed, checked; the first bad
    /// item is an error (and nothing after it is read). Bytes past the end are refused too.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<Group>, Corrupt> {
        let mut groups = Vec::new();
        while let Some(item) = self.current {
            let want = match item {
                BaoChunk::Parent { .. } => 64,
                BaoChunk::Leaf { size, .. } => size,
            };
            let take = (want - self.buffer.len()).min(bytes.len());
            self.buffer.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buffer.len() < want {
                break;
            }
            let item_bytes = std::mem::take(&mut self.buffer);
            let expected = self.expected.pop().unwrap_or_default();
            match item {
                BaoChunk::Parent { is_root, left, right, node, .. } => {
                    let (l, r): (ChainingValue, ChainingValue) = (item_bytes[..32].try_into().unwrap_or_default(), item_bytes[32..].try_into().unwrap_or_default());
                    let actual = if is_root { *merge_subtrees_root(&l, &r, Mode::Hash).as_bytes() } else { merge_subtrees_non_root(&l, &r, Mode::Hash) };
                    if actual != expected {
                        return Err(Corrupt { id: self.id, offset: node.chunk_range().start.to_bytes() });
                    }
                    if right {
                        self.expected.push(r);
                    }
                    if left {
                        self.expected.push(l);
                    }
                    self.vouched.push((node, item_bytes.try_into().unwrap_or([0; 64])));
                }
                BaoChunk::Leaf { start_chunk, is_root, .. } => {
                    let actual = if is_root {
                        *blake3::hash(&item_bytes).as_bytes()
                    } else {
                        blake3::Hasher::new().set_input_offset(start_chunk.to_bytes()).update(&item_bytes).finalize_non_root()
                    };
                    if actual != expected {
                        return Err(Corrupt { id: self.id, offset: start_chunk.to_bytes() });
                    }
                    groups.push((start_chunk.to_bytes(), item_bytes));
                }
            }
            self.current = self.items.next();
        }
        if !bytes.is_empty() {
            return Err(Corrupt { id: self.id, offset: u64::MAX });
        }
        Ok(groups)
    }
}

/// Encodes groups `ranges` of block `id` (`size` bytes of `data`) as a provider answers a
/// request: the tree's parents and the groups, in pre-order, from the block's pre-order
/// outboard. Not checked on the way out: the asking node checks every byte, and cuts a
/// provider whose disk returned bad ones.
pub fn encode(data: impl ReadAt, size: u64, outboard: &[u8], ranges: &ChunkRanges) -> std::io::Result<Vec<u8>> {
    let mut encoded = Vec::new();
    encode_onto(data, size, outboard, ranges, &mut encoded)?;
    Ok(encoded)
}

/// `encode`, after what `encoded` holds already. Each group is read straight into `encoded`
/// (`bao-tree`'s own encoder reads it into a buffer of its own first: a second copy of every
/// byte served).
pub fn encode_onto(data: impl ReadAt, size: u64, outboard: &[u8], ranges: &ChunkRanges, encoded: &mut Vec<u8>) -> std::io::Result<()> {
    let tree = BaoTree::new(size, GROUP);
    for item in tree.ranges_pre_order_chunks_iter_ref(ranges, 0) {
        match item {
            BaoChunk::Parent { node, .. } => {
                let pair = tree.pre_order_offset(node).and_then(|at| outboard.get(at as usize * 64..at as usize * 64 + 64));
                let pair = pair.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("the outboard of {} bytes lacks parent {node:?}", outboard.len())))?;
                encoded.extend_from_slice(pair);
            }
            BaoChunk::Leaf { start_chunk, size, .. } => {
                let at = encoded.len();
                encoded.resize(at + size, 0);
                data.read_exact_at(start_chunk.to_bytes(), &mut encoded[at..])?;
            }
        }
    }
    Ok(())
}

/// A block's pre-order outboard, put together from the parents a fetch checked: once every
/// group is checked, every parent was (each group's path to the root), so the fetched block
/// need not be read and hashed again to keep it.
pub struct Assembled {
    tree: BaoTree,
    data: Vec<u8>,
}

impl Assembled {
    /// For a block of `size` bytes (the proven size: the tree's shape depends on it).
    pub fn new(size: u64) -> Self {
        let tree = BaoTree::new(size, GROUP);
        Assembled { tree, data: vec![0; tree.outboard_size() as usize] }
    }

    pub fn add(&mut self, (node, pair): &Vouched) {
        if let Some(at) = self.tree.pre_order_offset(*node) {
            let at = at as usize * 64;
            self.data[at..at + 64].copy_from_slice(pair);
        }
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }
}

/// A block's id and pre-order outboard, computed as its bytes stream in, in order (a put of
/// known size): each 16 KiB group is hashed as it completes, and each parent as soon as its
/// two children are, so keeping the block needs no second pass over its bytes.
pub struct Hashing {
    /// The tree's items in post-order: groups in order, each parent after its children.
    items: std::iter::Peekable<bao_tree::iter::PostOrderChunkIter>,
    /// Hashes of the subtrees done and not yet merged.
    stack: Vec<[u8; 32]>,
    outboard: Assembled,
    group: Vec<u8>,
}

impl Hashing {
    /// For `size` bytes to come.
    pub fn new(size: u64) -> Self {
        let tree = BaoTree::new(size, GROUP);
        Hashing { items: tree.post_order_chunks_iter().peekable(), stack: Vec::new(), outboard: Assembled::new(size), group: Vec::with_capacity(GROUP_BYTES as usize) }
    }

    /// The next bytes, in order; bytes past the size are left out (the put's size check says
    /// so).
    pub fn update(&mut self, mut bytes: &[u8]) {
        while let Some(BaoChunk::Leaf { size, .. }) = self.items.peek().copied() {
            let take = (size - self.group.len()).min(bytes.len());
            self.group.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.group.len() < size {
                return;
            }
            self.close_group();
        }
    }

    fn close_group(&mut self) {
        let Some(BaoChunk::Leaf { start_chunk, is_root, .. }) = self.items.next() else { return };
        let hash = if is_root {
            *blake3::hash(&self.group).as_bytes()
        } else {
            blake3::Hasher::new().set_input_offset(start_chunk.to_bytes()).update(&self.group).finalize_non_root()
        };
        self.group.clear();
        self.stack.push(hash);
        while let Some(BaoChunk::Parent { node, is_root, .. }) = self.items.peek().copied() {
            self.items.next();
            let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else { return };
            let mut pair = [0; 64];
            pair[..32].copy_from_slice(&left);
            pair[32..].copy_from_slice(&right);
            self.outboard.add(&(node, pair));
            self.stack.push(if is_root { *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes() } else { merge_subtrees_non_root(&left, &right, Mode::Hash) });
        }
    }

    /// The id and the outboard, once every byte came (`None` if some are missing).
    pub fn finish(mut self) -> Option<(ContentId, Vec<u8>)> {
        // An empty block's one group is empty, and complete before any byte.
        if matches!(self.items.peek(), Some(BaoChunk::Leaf { size: 0, .. })) {
            self.close_group();
        }
        match (self.items.next(), self.stack.as_slice()) {
            (None, [root]) => Some((ContentId(*root), self.outboard.into_bytes())),
            _ => None,
        }
    }
}

/// The pre-order outboard of `content`, as the store keeps it.
pub fn outboard(content: &[u8]) -> Vec<u8> {
    bao_tree::io::outboard::PreOrderMemOutboard::create(content, GROUP).data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 31 % 253) as u8).collect()
    }

    fn check(content: &[u8], ranges: &ChunkRanges, piece: usize) -> Result<Vec<Group>, Corrupt> {
        let encoded = encode(content, content.len() as u64, &outboard(content), ranges).unwrap();
        let mut verifier = Verifier::new(ContentId::of(content), content.len() as u64, ranges);
        let mut groups = Vec::new();
        for bytes in encoded.chunks(piece) {
            groups.extend(verifier.feed(bytes)?);
        }
        // The end of the stream (an empty block's one group is empty).
        groups.extend(verifier.feed(&[])?);
        assert!(verifier.finished());
        Ok(groups)
    }

    #[test]
    fn every_group_of_a_response_checks_out_whatever_the_pieces_it_arrives_in() {
        for size in [0, 1, 16_384, 16_385, 100_000, 1_000_003] {
            let block = content(size);
            let all = groups(size as u64);
            for piece in [1, 77, 16_384, 1 << 20] {
                let got = check(&block, &group_ranges(0, all), piece).unwrap();
                let joined: Vec<u8> = got.iter().flat_map(|(_, bytes)| bytes.clone()).collect();
                assert_eq!(joined, block, "size {size}, pieces of {piece}");
            }
            // The last group alone proves the size.
            let last = check(&block, &group_ranges(all - 1, all), 1000).unwrap();
            assert_eq!(last.len(), 1);
            assert_eq!(last[0].0, (all - 1) * GROUP_BYTES);
        }
    }

    #[test]
    fn the_encoding_is_bao_trees_byte_for_byte_and_a_short_outboard_is_an_error() {
        for size in [0usize, 1, 16_384, 16_385, 100_000, 1_000_003] {
            let block = content(size);
            let (id, all) = (ContentId::of(&block), groups(size as u64));
            let outboard = outboard(&block);
            for (first, end) in [(0, all), (all - 1, all), (0, 1), (all / 2, all)] {
                let ranges = group_ranges(first, end);
                let theirs = bao_tree::io::outboard::PreOrderOutboard { root: blake3::Hash::from_bytes(id.0), tree: BaoTree::new(size as u64, GROUP), data: &outboard[..] };
                let mut expected = Vec::new();
                bao_tree::io::sync::encode_ranges(&block[..], theirs, &ranges, &mut expected).unwrap();
                assert!(encode(&block[..], size as u64, &outboard, &ranges).unwrap() == expected, "size {size}, groups {first}..{end}");
            }
            if !outboard.is_empty() {
                let short = encode(&block[..], size as u64, &outboard[..outboard.len() - 64], &group_ranges(0, all));
                assert_eq!(short.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof, "size {size}");
            }
        }
    }

    #[test]
    fn the_parents_checked_over_every_group_make_the_blocks_outboard() {
        for size in [16_385usize, 100_000, 1_000_003] {
            let block = content(size);
            let (id, all) = (ContentId::of(&block), groups(size as u64));
            let mut assembled = Assembled::new(size as u64);
            // In ranges of three groups, last first, as a fetch asks.
            let mut asked = vec![(all - 1, all)];
            asked.extend((0..all - 1).step_by(3).map(|first| (first, (first + 3).min(all - 1))));
            for (first, end) in asked {
                let ranges = group_ranges(first, end);
                let encoded = encode(&block[..], size as u64, &outboard(&block), &ranges).unwrap();
                let mut verifier = Verifier::new(id, size as u64, &ranges);
                verifier.feed(&encoded).unwrap();
                verifier.take_vouched().iter().for_each(|vouched| assembled.add(vouched));
            }
            assert!(assembled.into_bytes() == outboard(&block), "size {size}");
        }
    }

    #[test]
    fn hashing_as_the_bytes_stream_in_gives_the_id_and_outboard_of_hashing_them_whole() {
        for size in [0usize, 1, 16_384, 16_385, 100_000, 1_000_003] {
            let block = content(size);
            for piece in [1, 5_000, 16_384, 1 << 20] {
                let mut hashing = Hashing::new(size as u64);
                block.chunks(piece).for_each(|bytes| hashing.update(bytes));
                let (id, outboard) = hashing.finish().expect("every byte came");
                assert_eq!(id, ContentId::of(&block), "size {size}, pieces of {piece}");
                assert!(outboard == self::outboard(&block), "size {size}, pieces of {piece}");
            }
            if size > 0 {
                let mut short = Hashing::new(size as u64);
                short.update(&block[..size - 1]);
                assert!(short.finish().is_none(), "a byte short, no id");
            }
        }
    }

    #[test]
    fn a_bad_byte_is_caught_in_its_own_group_and_a_wrong_size_is_caught() {
        let block = content(200_000);
        let ranges = group_ranges(2, 6);
        let mut encoded = encode(&block[..], block.len() as u64, &outboard(&block), &ranges).unwrap();
        let len = encoded.len();
        encoded[len - 100] ^= 1;
        let mut verifier = Verifier::new(ContentId::of(&block), block.len() as u64, &ranges);
        let mut good = Vec::new();
        let mut caught = None;
        for bytes in encoded.chunks(4096) {
            match verifier.feed(bytes) {
                Ok(groups) => good.extend(groups.into_iter().map(|(offset, _)| offset)),
                Err(corrupt) => {
                    caught = Some(corrupt.offset);
                    break;
                }
            }
        }
        assert_eq!(good, vec![2 * GROUP_BYTES, 3 * GROUP_BYTES, 4 * GROUP_BYTES], "the groups before the bad one check out");
        assert_eq!(caught, Some(5 * GROUP_BYTES));
        // A provider that claims another size: its last group does not check out.
        let last = groups(200_000);
        let honest = encode(&block[..], block.len() as u64, &outboard(&block), &group_ranges(last - 1, last)).unwrap();
        let mut lied = Verifier::new(ContentId::of(&block), 200_000 + GROUP_BYTES, &group_ranges(last, last + 1));
        assert!(lied.feed(&honest).is_err());
    }
}
