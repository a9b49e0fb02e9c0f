//! Writing a block's groups to its file with direct I/O (`O_DIRECT`), past the page cache, as
//! it is fetched or put. Copying every byte into fresh page cache cost the fetching node about as
//! much CPU as one of the transports, and a block need not sit in memory: it is kept, and read
//! when asked for. Direct I/O wants aligned memory, offsets and lengths, and large writes, so groups
//! are gathered into 1 MiB regions of the file, each in a buffer aligned to 4 KiB (buffers are
//! reused, so their memory stays mapped), and a region goes out in one write once every group of
//! it is in, or, at a flush, in runs of the groups it has. A run that ends the block off the
//! 4 KiB grid, or a file system that refuses direct I/O, goes through the page cache instead.

use crate::core::verify::GROUP_BYTES;
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// What direct I/O aligns memory, offsets and lengths to.
const ALIGN: usize = 4096;
const GROUPS_PER_REGION: u64 = 64;
const REGION: u64 = GROUPS_PER_REGION * GROUP_BYTES;
/// Regions gathered at once at most: past it, the lowest is written as it stands (groups that
/// arrive scattered, as in a resumed fetch, would otherwise each hold 1 MiB); and buffers kept
/// for reuse at most.
const REGIONS: usize = 32;

/// A 1 MiB region of the file being gathered.
struct Region {
    memory: Vec<u8>,
    /// Where the aligned region starts in `memory`.
    start: usize,
    /// The groups in, one bit each.
    filled: u64,
}

/// The direct writer of one block of `size` bytes.
pub struct DirectWriter {
    /// `None` once the file system refused direct I/O (or never allowed it).
    direct: Option<File>,
    size: u64,
    regions: BTreeMap<u64, Region>,
    spare: Vec<Vec<u8>>,
}

impl DirectWriter {
    /// Opens `path` (already sized) for direct writes, if its file system allows them.
    pub fn open(path: &Path, size: u64) -> DirectWriter {
        let direct = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(path).ok();
        DirectWriter { direct, size, regions: BTreeMap::new(), spare: Vec::new() }
    }

    /// Takes a group's `bytes` at `offset` (a multiple of the group size); a region complete
    /// with it is written at once. `buffered` writes what direct I/O cannot.
    pub fn write(&mut self, offset: u64, bytes: &[u8], buffered: &File) -> io::Result<()> {
        let (index, within) = (offset / REGION, (offset % REGION) as usize);
        if within + bytes.len() > REGION as usize || !(within as u64).is_multiple_of(GROUP_BYTES) {
            return Err(io::Error::other(format!("a group at offset {offset} of {} bytes crosses its region", bytes.len())));
        }
        let mut region = match self.regions.remove(&index) {
            Some(region) => region,
            None => {
                if self.regions.len() >= REGIONS {
                    if let Some((lowest, oldest)) = self.regions.pop_first() {
                        self.write_runs(lowest, &oldest, buffered)?;
                        self.recycle(oldest);
                    }
                }
                let memory = self.spare.pop().unwrap_or_else(|| vec![0; REGION as usize + ALIGN]);
                let start = memory.as_ptr().align_offset(ALIGN);
                Region { memory, start, filled: 0 }
            }
        };
        region.memory[region.start + within..region.start + within + bytes.len()].copy_from_slice(bytes);
        region.filled |= 1 << (within as u64 / GROUP_BYTES);
        if region.filled == self.all_groups(index) {
            self.write_runs(index, &region, buffered)?;
            self.recycle(region);
        } else {
            self.regions.insert(index, region);
        }
        Ok(())
    }

    /// Writes every group taken and not yet written.
    pub fn flush(&mut self, buffered: &File) -> io::Result<()> {
        while let Some((index, region)) = self.regions.pop_first() {
            self.write_runs(index, &region, buffered)?;
            self.recycle(region);
        }
        Ok(())
    }

    fn recycle(&mut self, region: Region) {
        if self.spare.len() < REGIONS {
            self.spare.push(region.memory);
        }
    }

    /// The bits of region `index`'s groups (the last region may have fewer than 64).
    fn all_groups(&self, index: u64) -> u64 {
        let groups = self.size.div_ceil(GROUP_BYTES).saturating_sub(index * GROUPS_PER_REGION).min(GROUPS_PER_REGION);
        if groups == GROUPS_PER_REGION {
            u64::MAX
        } else {
            (1 << groups) - 1
        }
    }

    /// Writes region `index`'s runs of groups, each in one write.
    fn write_runs(&mut self, index: u64, region: &Region, buffered: &File) -> io::Result<()> {
        let mut pending = region.filled;
        while pending != 0 {
            let first = pending.trailing_zeros() as u64;
            let run = (pending >> first).trailing_ones() as u64;
            let from = index * REGION + first * GROUP_BYTES;
            let to = (from + run * GROUP_BYTES).min(self.size);
            let at = region.start + (first * GROUP_BYTES) as usize;
            let bytes = &region.memory[at..at + (to - from) as usize];
            self.write_at(bytes, from, buffered)?;
            pending &= !(if run == 64 { u64::MAX } else { ((1 << run) - 1) << first });
        }
        Ok(())
    }

    fn write_at(&mut self, bytes: &[u8], offset: u64, buffered: &File) -> io::Result<()> {
        if let Some(direct) = self.direct.as_ref().filter(|_| bytes.len().is_multiple_of(ALIGN)) {
            match direct.write_all_at(bytes, offset) {
                Ok(()) => return Ok(()),
                // The file system takes the file but not direct writes to it.
                Err(error) if error.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!("direct I/O refused for a block; writing through the page cache");
                    self.direct = None;
                }
                Err(error) => return Err(error),
            }
        }
        buffered.write_all_at(bytes, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_in_any_order_with_flushes_between_make_the_block() {
        // /dev/shm's file system may refuse direct I/O: then the page cache takes every write.
        for root in [std::env::temp_dir(), std::path::PathBuf::from("/dev/shm")].into_iter().filter(|root| root.is_dir()) {
            write_blocks_in(&root.join(format!("nm-direct-{}", std::process::id())));
        }
    }

    fn write_blocks_in(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for size in [1u64, 16_384, 16_385, REGION, REGION + 5_000, 3 * REGION - 77] {
            let path = dir.join(format!("block-{size}"));
            let content: Vec<u8> = (0..size).map(|i| (i * 131 % 251) as u8).collect();
            let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
            file.set_len(size).unwrap();
            let mut writer = DirectWriter::open(&path, size);
            let groups: Vec<u64> = (0..size.div_ceil(GROUP_BYTES)).collect();
            // Odd groups first, backwards, a flush halfway, then the even ones.
            let order: Vec<u64> = groups.iter().rev().filter(|g| *g % 2 == 1).chain(groups.iter().filter(|g| *g % 2 == 0)).copied().collect();
            for (n, group) in order.iter().enumerate() {
                let from = group * GROUP_BYTES;
                let to = (from + GROUP_BYTES).min(size);
                writer.write(from, &content[from as usize..to as usize], &file).unwrap();
                if n == order.len() / 2 {
                    writer.flush(&file).unwrap();
                }
            }
            writer.flush(&file).unwrap();
            assert!(std::fs::read(&path).unwrap() == content, "size {size} in {}", dir.display());
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
