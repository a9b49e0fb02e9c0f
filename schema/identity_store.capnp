# The identity store's interface (SPEC.md "Network Identity Store").
@0xcfa402a910ffea85;

using Id = import "identity.capnp";
using Svc = import "service.capnp";

struct IdentityEntry {
  id @0 :Id.Identity;
  record @1 :Id.IdentityRecord;
}

enum RefusalReason {
  malformed @0;              # a field has the wrong size or shape
  idMismatch @1;             # the record's own id is not the key it is stored under
  badSignature @2;           # the advert's signature does not verify
  olderVersion @3;           # the store holds a newer (or different same-version) advert
  full @4;                   # the store holds its configured maximum of records
}

struct UpdateResult {
  union {
    accepted @0 :Void;
    refused :group {
      reason @1 :RefusalReason;
      detail @2 :Text;
    }
  }
}

interface IdentityWatcher {
  # Called after every accepted update or delete; `record` is unset when the id was deleted.
  identityUpdated @0 (id :Id.Identity, deleted :Bool, record :Id.IdentityRecord) -> ();
}

interface IdentityStore extends(Svc.Service) {
  lookup @0 (id :Id.Identity) -> (found :Bool, record :Id.IdentityRecord);
  update @1 (id :Id.Identity, record :Id.IdentityRecord) -> (result :UpdateResult);
  delete @2 (id :Id.Identity) -> (existed :Bool);
  # Records of one kind in identity order, starting after `after` (empty: from the start).
  list @3 (kind :Id.RecordKind, after :Id.Identity, limit :UInt32) -> (entries :List(IdentityEntry));
  watch @4 (watcher :IdentityWatcher) -> (subscription :Svc.Subscription);
}
