# The storage service's interface: content-addressed blocks (SPEC.md "Storage"). Small blocks
# travel whole (put, get: up to the node's largest message); any block can be written as a
# stream of pieces (with Cap'n Proto's flow control) and read by ranges.
@0xa853fbfd9aedcf77;

using Id = import "identity.capnp";
using Msg = import "message.capnp";
using Svc = import "service.capnp";

interface Storage extends(Svc.Service) {
  # Stores a block given whole. `block.id` may be empty; if set, the content must hash to it.
  put @0 (block :Msg.BlockPut) -> (result :PutResult);
  # A held block, whole; `tooLarge` if it is larger than one message may carry (use read).
  get @1 (request :Msg.BlockGet) -> (result :GetResult);
  # Extends a block's lease to `expiry` (never shortens it; 0: the node's default lease).
  extend @2 (id :Id.ContentId, expiry :Id.Time) -> (result :ExtendResult);
  # Starts a put of `size` bytes, written in pieces. `id` as in put.
  write @3 (size :UInt64, prefs :Msg.BlockPrefs, id :Id.ContentId) -> (result :WriteResult);
  # Opens a block for reading by ranges; it is not collected while the reader is held. A block
  # not held here is fetched first, unless `localOnly`: from the node of `topic`'s publisher (if
  # set), then from the nodes `from` (none: every connected node); `progress`, if set, hears
  # how far the fetch is.
  open @4 (id :Id.ContentId, from :List(Id.Identity), localOnly :Bool, topic :Id.Identity, progress :FetchProgress) -> (result :OpenResult);
  # Every block held.
  blocks @5 () -> (blocks :List(BlockInfo));
  # Collects the blocks whose lease ended (a dry run only says which).
  collect @6 (dryRun :Bool) -> (reclaimed :List(BlockInfo), bytes :UInt64, held :UInt64);
  # Other nodes' block requests are not served here but on `$RUN/storage.bulk.sock`, where
  # the transport relays each block stream it accepts (see `netmachine_service::bulk`).
}

# What a node asks another for, on a block stream (serialized: the request a bulk socket's
# opening carries, and the QUIC stream's first frame after its kind).
struct BlockRequest {
  id @0 :Id.ContentId;
  union {
    last @1 :Void;                   # the size and the last group, which proves it
    groups :group {                  # groups first..end (16 KiB each; 64 at most)
      first @2 :UInt64;
      end @3 :UInt64;
    }
  }
}

# A block stream's answer starts with one byte:
#   0: served; then the block's size (8 bytes, little endian) and the groups asked for,
#      encoded for verified streaming (pre-order parents and groups, as bao-tree encodes them)
#   1: the block is not held here
#   2: denied: the block's minTrust is more than this node gives the asking one
#   3: malformed request

interface BlockWriter {
  write @0 (bytes :Data) -> stream;
  # Checks the size and the id, and keeps the block.
  finish @1 () -> (result :PutResult);
}

interface FetchProgress {
  # Bytes of the block checked and written so far, of `size`.
  fetched @0 (done :UInt64, size :UInt64) -> ();
}

interface BlockReader {
  # Up to `length` bytes from `offset` (fewer only at the block's end).
  read @0 (offset :UInt64, length :UInt32) -> (bytes :Data);
}

enum StorageRefusal {
  tooLarge @0;      # over storage.max_block_bytes (or, for get, over one message)
  overBudget @1;    # storage.max_bytes would be exceeded
  expired @2;       # the expiry asked for is already past
  unknown @3;       # no such block is held
  wrongId @4;       # the content does not hash to the id given
  sizeMismatch @5;  # the bytes written are not the size declared
  malformed @6;     # an id that is not 32 bytes, a range outside the block
  failed @7;        # the disk or the database failed
}

struct Refused {
  reason @0 :StorageRefusal;
  detail @1 :Text;
}

struct BlockInfo {
  id @0 :Id.ContentId;
  size @1 :UInt64;
  expiry @2 :Id.Time;
  minTrust @3 :UInt8;
  complete @4 :Bool;   # false while a fetch is filling it
}

struct PutResult {
  union {
    stored @0 :BlockInfo;
    refused @1 :Refused;
  }
}

struct GetResult {
  union {
    found @0 :Msg.BlockResponse;
    refused @1 :Refused;
  }
}

struct ExtendResult {
  union {
    extended @0 :BlockInfo;
    refused @1 :Refused;
  }
}

struct WriteResult {
  union {
    writer @0 :BlockWriter;
    refused @1 :Refused;
  }
}

struct OpenResult {
  union {
    opened :group {
      reader @0 :BlockReader;
      info @1 :BlockInfo;
    }
    refused @2 :Refused;
  }
}
