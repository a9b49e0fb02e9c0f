# What every service answers: its health and counters. Every service interface extends Service.
@0xd5fe77bdc79ca94e;

using Id = import "identity.capnp";

struct Counter {
  name @0 :Text;
  value @1 :UInt64;
}

struct Link {
  service @0 :Text;          # the service this one connects to
  connected @1 :Bool;
}

struct ServiceStatus {
  name @0 :Text;             # router | transport | identity-store | pubsub | storage
  pid @1 :UInt32;
  state @2 :Text;            # "up" while serving
  node @3 :Id.Identity;      # the node this service belongs to
  note @4 :Text;             # what the service does not do yet, or other operator notes
  links @5 :List(Link);
  counters @6 :List(Counter);
  engines @7 :List(Id.Identity);  # router only: the attached engines
}

interface Service {
  status @0 () -> (status :ServiceStatus);
}

# Held by whoever subscribed to something; dropping it (or the connection) ends the
# subscription.
interface Subscription {}

# Where a stream of bytes goes, piece by piece, with Cap'n Proto's flow control: a slow
# reader holds the writer back.
interface ByteSink {
  write @0 (bytes :Data) -> stream;
}
