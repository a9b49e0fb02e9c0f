//! `netmachine`: runs a node (`up`), reports on it (`status`), makes engine keys, and attaches
//! as an engine from the shell (`listen`, `send`, `request`; topics: `topic`, `publish`,
//! `subscribe`, `topics`).

use clap::{Parser, Subcommand};
use netmachine::{bench, blocks, configuration, demo, events, key, messaging, peers, status, topics, up};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "netmachine", version, about = "netmachine: the networking layer for engines")]
struct Cli {
    /// Node home directory [default: $NETMACHINE_HOME, else ~/.netmachine]
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    /// Override one config setting, e.g. --set limits.engine_queue=4096 (repeatable)
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node: start its five services, restart any that dies, stop them all on Ctrl-C
    Up,
    /// Show each service's state, the attached engines and the drop counters
    Status {
        /// One JSON object instead of text
        #[arg(long)]
        json: bool,
        /// Redraw every SECONDS with each counter and what it gained since, until Ctrl-C
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "1", value_parser = seconds)]
        watch: Option<std::time::Duration>,
        /// Wait up to SECONDS for every service to be up and linked; exit 3 if they are not
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "30", value_parser = seconds, conflicts_with = "watch")]
        wait: Option<std::time::Duration>,
        /// Only this service (a container's health check): exit 0 if it is up, 3 if not
        #[arg(long, value_parser = service_kind)]
        service: Option<netmachine_service::ServiceKind>,
    },
    /// Check the node's configuration, or show every setting and where it came from
    #[command(subcommand)]
    Config(configuration::ConfigCommand),
    /// Engine keys
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Print this node's signed advert, for `peer add` on other nodes
    Advert,
    /// Add or remove another node
    #[command(subcommand)]
    Peer(peers::PeerCommand),
    /// List the connected nodes
    Peers {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Connect to a known node now
    Connect {
        /// The node's identity (hex)
        node: String,
    },
    /// Close the connections to a node
    Disconnect {
        /// The node's identity (hex)
        node: String,
    },
    /// Print the node's events: transport (connected, connect failed, disconnected, refused,
    /// counts) and pubsub (topic advert received, subscribed, unsubscribed, readers)
    Events {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Start two nodes on loopback, connect them, exchange messages and requests both ways
    Demo,
    /// Benchmarks, each printed next to its baseline from the same run
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Attach as an engine and print each message body received, one per line
    Listen {
        /// The engine's key file
        #[arg(long)]
        key: PathBuf,
        /// Print each message as a JSON object
        #[arg(long)]
        json: bool,
        /// Answer every message that is not itself a reply with the same body
        #[arg(long)]
        echo: bool,
    },
    /// Attach as an engine and send one message; exits 0 once the router accepted it
    Send {
        /// The engine's key file (`key new` makes one)
        #[arg(long)]
        key: PathBuf,
        /// The destination: an engine's identity, or a node's (hex)
        #[arg(long)]
        to: String,
        /// The message body; `-` reads it from standard input
        body: String,
    },
    /// Attach as an engine, send a request and print the reply's body
    Request {
        /// The engine's key file (`key new` makes one)
        #[arg(long)]
        key: PathBuf,
        /// The destination: an engine's identity, or a node's, whose router answers (hex)
        #[arg(long)]
        to: String,
        /// Give up after this many milliseconds
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
        /// The request body; `-` reads it from standard input
        body: String,
    },
    /// Create or delete a topic on this node
    #[command(subcommand)]
    Topic(topics::TopicCommand),
    /// Attach as a topic's publisher and publish one event; `-` publishes each line of standard input
    Publish {
        /// The engine's key file (`key new` makes one)
        #[arg(long)]
        key: PathBuf,
        /// The topic's identity (hex), from `topic create`
        #[arg(long)]
        topic: String,
        /// The event's body; `-` publishes each line of standard input as an event
        body: String,
    },
    /// Subscribe to a topic and print each event body, one per line (gaps go to standard error)
    Subscribe {
        /// The engine's key file (`key new` makes one)
        #[arg(long)]
        key: PathBuf,
        /// The topic's identity (hex)
        #[arg(long)]
        topic: String,
        /// Only a topic on this node
        #[arg(long)]
        local: bool,
    },
    /// List the topics on this node, their publishers and subscribers
    Topics {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Store a file as a block; prints its id (the BLAKE3 hash of the content)
    Put {
        /// The file; `-` reads standard input
        file: PathBuf,
        /// How long to keep it: a number with s, m, h or d (default: storage.default_lease_ms)
        #[arg(long, value_parser = blocks::parse_duration)]
        expiry: Option<u64>,
        /// The trust another node needs to be served the block
        #[arg(long, default_value_t = 0)]
        min_trust: u8,
    },
    /// Write a block's content to a file or standard output
    Get {
        /// The block's id (64 hex digits)
        id: String,
        /// The file to write (default: standard output)
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// A node to fetch it from if this node does not hold it (repeatable; default: every
        /// connected node)
        #[arg(long)]
        from: Vec<String>,
        /// Ask the node of this topic's publisher first (the topic's identity, hex)
        #[arg(long)]
        topic: Option<String>,
    },
    /// List the blocks this node holds: id, size, expiry, complete or partial
    Blocks {
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Collect expired blocks, or extend a block's lease
    #[command(subcommand)]
    Storage(blocks::StorageCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Engine-to-engine latency and throughput on one node, against the shared-cache-line
    /// floor, the bare ring and a Unix socket; and the CPU an idle node uses
    Local {
        /// Round trips for each latency figure
        #[arg(long, default_value_t = 20_000)]
        rounds: usize,
        /// Messages for each throughput figure
        #[arg(long, default_value_t = 2_000_000)]
        messages: u64,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Topic fan-out to 1, 4 and 16 subscribers on one node, against local unicast
    Pubsub {
        /// Events per figure
        #[arg(long, default_value_t = 50_000)]
        events: u64,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// Blocks: put and get against plain file writes and reads, a fetch between two nodes
    /// against a raw quinn bulk stream, and checking a stream against BLAKE3 hashing
    Storage {
        /// The block's size in MiB
        #[arg(long, default_value_t = 256)]
        mib: usize,
        /// Rounds, each with a block of its own; every figure is the median of the rounds, and
        /// every ratio the median of the rounds' ratios
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=9))]
        rounds: u32,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
    },
    /// The processes the local benchmark starts
    #[command(subcommand, hide = true)]
    Helper(bench::helpers::Helper),
    /// Node-to-node throughput and latency against raw quinn and ed25519 batch verification
    Remote {
        /// Messages per throughput figure
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Requests for the latency figure
        #[arg(long, default_value_t = 2_000)]
        requests: usize,
        /// One JSON object instead of text
        #[arg(long)]
        json: bool,
    },
}

fn service_kind(name: &str) -> Result<netmachine_service::ServiceKind, String> {
    netmachine_service::ServiceKind::ALL.into_iter().find(|k| k.name() == name).ok_or_else(|| {
        let names: Vec<&str> = netmachine_service::ServiceKind::ALL.iter().map(|k| k.name()).collect();
        format!("'{name}' is not a service; the services are {}", names.join(", "))
    })
}

/// A number of seconds (fractions allowed) as a duration.
fn seconds(text: &str) -> Result<std::time::Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 1e9)
        .map(std::time::Duration::from_secs_f64)
        .ok_or_else(|| format!("'{text}' is not a number of seconds"))
}

fn main() -> ExitCode {
    // Output piped into `head` that closes early ends the command quietly, as with any Unix
    // tool, instead of a panic on the failed write.
    // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = Cli::parse();
    netmachine_service::process::init_logging_quiet();
    let root = cli.home.unwrap_or_else(netmachine_service::home::default_home);
    let outcome = match cli.command {
        Command::Up => return up::run(&root, &cli.set),
        Command::Status { json, watch, wait, service } => {
            return status::run(&root, &cli.set, status::StatusArgs { json, watch, wait, service })
        }
        Command::Config(command) => return configuration::run(&root, &cli.set, command),
        Command::Key(command) => key::run(command),
        Command::Advert => peers::advert(&root, &cli.set),
        Command::Peer(command) => peers::peer(&root, &cli.set, command),
        Command::Peers { json } => peers::peers(&root, &cli.set, json),
        Command::Connect { node } => peers::connect_to(&root, &cli.set, &node, false),
        Command::Disconnect { node } => peers::connect_to(&root, &cli.set, &node, true),
        Command::Events { json } => events::run(&root, &cli.set, json),
        Command::Demo => demo::run(),
        Command::Bench(BenchCommand::Remote { messages, requests, json }) => bench::remote::run(messages, requests, json, &cli.set),
        Command::Bench(BenchCommand::Local { rounds, messages, json }) => bench::local::run(rounds, messages, json, &cli.set),
        Command::Bench(BenchCommand::Pubsub { events, json }) => bench::pubsub::run(events, json, &cli.set),
        Command::Bench(BenchCommand::Storage { mib, rounds, json }) => bench::storage::run(mib, rounds as usize, json, &cli.set),
        Command::Bench(BenchCommand::Helper(helper)) => bench::helpers::run(helper),
        Command::Topic(command) => topics::topic(&root, &cli.set, command),
        Command::Publish { key, topic, body } => topics::publish(&root, &cli.set, &key, &topic, body),
        Command::Subscribe { key, topic, local } => topics::subscribe(&root, &cli.set, &key, &topic, local),
        Command::Topics { json } => topics::topics(&root, &cli.set, json),
        Command::Put { file, expiry, min_trust } => blocks::put(&root, &cli.set, &file, expiry, min_trust),
        Command::Get { id, output, from, topic } => blocks::get(&root, &cli.set, &id, output, &from, topic.as_deref()),
        Command::Blocks { json } => blocks::list(&root, &cli.set, json),
        Command::Storage(command) => blocks::storage(&root, &cli.set, command),
        Command::Listen { key, json, echo } => messaging::listen(&root, &cli.set, &key, json, echo),
        Command::Send { key, to, body } => messaging::send(&root, &cli.set, &key, &to, body),
        Command::Request { key, to, timeout_ms, body } => {
            messaging::request(&root, &cli.set, &key, &to, body, timeout_ms)
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("netmachine: {}", netmachine::one_sentence(&error));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every argument of every command, and every command, says what it is for.
    #[test]
    fn every_argument_has_help() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", command.get_name());
            if command.get_about().is_none() && !command.is_hide_set() {
                missing.push(path.clone());
            }
            for arg in command.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin && arg.get_help().is_none() && !arg.is_hide_set() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&super::Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "without help: {missing:#?}");
    }
}
