# The storage service's interface: content-addressed blocks (SPEC.md "Storage").
@0xa853fbfd9aedcf77;

using Id = import "identity.capnp";
using Msg = import "message.capnp";
using Svc = import "service.capnp";

interface Storage extends(Svc.Service) {
  put @0 (block :Msg.BlockPut) -> (id :Id.ContentId);
  get @1 (request :Msg.BlockGet) -> (found :Bool, response :Msg.BlockResponse);
  extend @2 (id :Id.ContentId, expiry :Id.Time) -> ();
}
