//! `netmachine topic create|delete`, `publish`, `subscribe` and `topics`: topics from the
//! shell. A topic's key is kept in the node's data directory (`topics/<id>.key`), so that the
//! topic can be created again with the same identity.

use crate::messaging::attach;
use crate::node_client::{connect, run_local};
use anyhow::{bail, Context, Result};
use netmachine_engine::{EngineError, Identity, Keypair, Received, Scope, TopicAdvert, TopicPolicy};
use netmachine_schema::router_capnp::router;
use netmachine_service::{NodeHome, ServiceKind};
use std::io::BufRead;
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum TopicCommand {
    /// Create a topic on this node that the engine of --key publishes on; prints its identity
    Create {
        /// The publishing engine's key file
        #[arg(long)]
        key: PathBuf,
        /// The topic's key file (made and kept under the node's data directory if not given)
        #[arg(long)]
        topic_key: Option<PathBuf>,
        /// Keep the topic to this node
        #[arg(long)]
        local: bool,
        /// Cut subscribers that have no room (they see a gap) instead of making the publisher wait
        #[arg(long)]
        cut_slow: bool,
        /// A tag the advert carries (repeatable)
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Delete a topic the engine of --key created
    Delete {
        /// The key file of the topic's publisher
        #[arg(long)]
        key: PathBuf,
        /// The topic's identity (hex)
        #[arg(long)]
        topic: String,
    },
}

fn topic_id(topic: &str) -> Result<Identity> {
    topic.parse().with_context(|| format!("--topic {topic}"))
}

fn scope(local: bool) -> Scope {
    if local { Scope::Local } else { Scope::Any }
}

pub fn topic(root: &Path, set: &[String], command: TopicCommand) -> Result<()> {
    match command {
        TopicCommand::Create { key, topic_key, local, cut_slow, tags } => {
            let home = NodeHome::load(root, set)?;
            let topic_key = match topic_key {
                Some(file) => Keypair::read_file(&file)?,
                None => {
                    let fresh = Keypair::generate();
                    let file = home.data_dir().join("topics").join(format!("{}.key", fresh.identity()));
                    std::fs::create_dir_all(file.parent().expect("a file in a directory"))?;
                    fresh.write_new_file(&file)?;
                    eprintln!("topic key written to {}", file.display());
                    fresh
                }
            };
            run_local(async {
                let engine = attach(root, set, &key, false).await?;
                let advert = TopicAdvert::sign(&topic_key, engine.identity(), tags, netmachine_schema::time::now_ms());
                let policy = if cut_slow { TopicPolicy::CutSlow } else { TopicPolicy::Block };
                engine.create_topic(advert, scope(local), policy).await?;
                println!("{}", topic_key.identity());
                engine.detach().await;
                Ok(())
            })
        }
        TopicCommand::Delete { key, topic } => {
            let topic = topic_id(&topic)?;
            run_local(async {
                let engine = attach(root, set, &key, false).await?;
                engine.delete_topic(topic).await?;
                eprintln!("deleted topic {topic}");
                engine.detach().await;
                Ok(())
            })
        }
    }
}

/// Publishes BODY, or with `-` each line of standard input as one event.
pub fn publish(root: &Path, set: &[String], key: &Path, topic: &str, body: String) -> Result<()> {
    let topic = topic_id(topic)?;
    run_local(async {
        let engine = attach(root, set, key, false).await?;
        let mut published = 0u64;
        if body == "-" {
            for line in std::io::stdin().lock().lines() {
                engine.publish(topic, line.context("reading events from stdin")?.into_bytes()).await?;
                published += 1;
            }
        } else {
            let seq = engine.publish(topic, body.into_bytes()).await?;
            eprintln!("published: event {seq} on topic {topic}");
            published = 1;
        }
        if published != 1 {
            eprintln!("published {published} events on topic {topic}");
        }
        engine.detach().await;
        Ok(())
    })
}

/// Prints each event's body, one per line, and each gap on standard error.
pub fn subscribe(root: &Path, set: &[String], key: &Path, topic: &str, local: bool) -> Result<()> {
    let topic = topic_id(topic)?;
    run_local(async {
        let engine = attach(root, set, key, true).await?;
        match engine.subscribe(topic, scope(local)).await {
            Err(EngineError::TopicRefused { detail, .. }) => bail!("subscribe refused: {detail}"),
            other => {
                other?;
            }
        }
        eprintln!("subscribed to {topic} as {}", engine.identity());
        loop {
            let received = tokio::select! {
                received = engine.recv_event() => received,
                _ = netmachine_service::process::stop_requested() => break,
            };
            match received {
                None => break,
                Some(Received::Event(event)) => println!("{}", String::from_utf8_lossy(&event.body)),
                Some(Received::Gap(gap)) => eprintln!("gap: events {}..={} of {} on {} will not arrive", gap.from, gap.to, gap.publisher, gap.topic),
                Some(Received::Message(message)) => eprintln!("message from {} (not an event): {} bytes", message.src, message.body.len()),
            }
        }
        engine.detach().await;
        Ok(())
    })
}

/// Lists the topics on this node: publisher, creator, policy, subscribers and the slow ones.
pub fn topics(root: &Path, set: &[String], json: bool) -> Result<()> {
    let home = NodeHome::load(root, set)?;
    run_local(async {
        let router: router::Client = connect(&home, ServiceKind::Router).await?;
        let answer = router.topics_request().send().promise.await?;
        let mut listed = Vec::new();
        for info in answer.get()?.get_topics()?.iter() {
            let advert = TopicAdvert::read(info.get_advert()?)?;
            let identities = |list: capnp::data_list::Reader<'_>| -> Result<Vec<String>> {
                list.iter().map(|id| Ok(Identity::from_slice("subscriber", id?)?.to_string())).collect()
            };
            listed.push(serde_json::json!({
                "topic": advert.topic.to_string(),
                "publisher": advert.publisher.to_string(),
                "creator": Identity::from_slice("creator", info.get_creator()?)?.to_string(),
                "tags": advert.tags,
                "scope": format!("{:?}", info.get_scope()?).to_lowercase(),
                "policy": match info.get_policy()? { TopicPolicy::Block => "block", TopicPolicy::CutSlow => "cut-slow" },
                "last_seq": info.get_last_seq(),
                "subscribers": identities(info.get_subscribers()?)?,
                "slow": identities(info.get_slow()?)?,
                "events_cut": info.get_events_cut(),
            }));
        }
        if json {
            println!("{}", serde_json::Value::Array(listed));
            return Ok(());
        }
        if listed.is_empty() {
            println!("no topics on this node");
        }
        for topic in listed {
            println!(
                "topic {}  publisher {}  policy {}  scope {}  last event {}  cut {}",
                topic["topic"].as_str().unwrap_or_default(),
                topic["publisher"].as_str().unwrap_or_default(),
                topic["policy"].as_str().unwrap_or_default(),
                topic["scope"].as_str().unwrap_or_default(),
                topic["last_seq"],
                topic["events_cut"],
            );
            let slow: Vec<&str> = topic["slow"].as_array().into_iter().flatten().filter_map(|s| s.as_str()).collect();
            for subscriber in topic["subscribers"].as_array().into_iter().flatten().filter_map(|s| s.as_str()) {
                let note = if slow.contains(&subscriber) { "  (slow: no room)" } else { "" };
                println!("  subscriber {subscriber}{note}");
            }
        }
        Ok(())
    })
}
