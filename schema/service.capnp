# What every service answers: its health and counters. Every service interface extends Service.
@0xd5fe77bdc79ca94e;

using Id = import "identity.capnp";

struct Counter {
  name @0 :Text;
  value @1 :UInt64;
}

# A gauge about one thing (an engine, a node): its name, what the label names, and the value.
struct LabelledGauge {
  name @0 :Text;             # e.g. engine_queue_depth
  label @1 :Text;            # e.g. engine
  key @2 :Text;              # e.g. the engine's identity, hex
  value @3 :UInt64;
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
  counters @6 :List(Counter);     # counts that only grow, carried over the service's restarts
  engines @7 :List(Id.Identity);  # router only: the attached engines
  version @8 :Text;               # the service binary's version
  startedMs @9 :UInt64;           # when this process started, ms since the Unix epoch
  starts @10 :UInt64;             # how many times this service has started on this node home
  residentBytes @11 :UInt64;      # the process's resident memory
  gauges @12 :List(Counter);      # values that go up and down (queues, connections), this process's
  labelled @13 :List(LabelledGauge);
}

interface Service {
  status @0 () -> (status :ServiceStatus);
}

# Held by whoever subscribed to something; dropping it (or the connection) ends the
# subscription.
interface Subscription {}
