//! Waiting until an engine on another node is routable. Nodes announce their engines to each
//! other after they connect, so a fresh engine is unknown elsewhere for a moment. A probe
//! request the destination answers proves the route both ways; a refusal (the destination not
//! yet announced) fails the request at once, and the probe is tried again.

use anyhow::{bail, Result};
use netmachine_engine::{Engine, EngineMessage, Identity};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The protocol name of the probes, so that receivers can tell them from real messages.
pub const PROBE: &str = "netmachine/route-probe";

/// Returns once `from` can reach `to` (and `to` can answer), or fails after 15 s. Meanwhile
/// `to` answers probes and drops them; nothing else should be sent to it.
pub async fn wait_until_routable(from: &Engine, to: &Arc<Engine>) -> Result<()> {
    let answering = to.clone();
    let answer_probes = tokio::task::spawn_local(async move {
        while let Some(message) = answering.recv().await {
            answer_probe(&answering, &message).await;
        }
    });
    let routable = probe_until_routable(from, to.identity()).await;
    answer_probes.abort();
    routable
}

/// Returns once a probe from `from` to `to` is answered, or fails after 15 s; whoever runs
/// engine `to` answers with `answer_probe`.
pub async fn probe_until_routable(from: &Engine, to: Identity) -> Result<()> {
    let start = Instant::now();
    loop {
        let mut probe = from.message(to, Vec::new());
        probe.protocol = PROBE.into();
        if from.request_message(probe, Duration::from_millis(300)).await.is_ok() {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(15) {
            bail!("engine {to} did not become routable within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Answers `message` if it is a probe.
pub async fn answer_probe(engine: &Engine, message: &EngineMessage) {
    if message.protocol == PROBE && message.reply_to.is_none() {
        let _ = engine.reply(message, Vec::new()).await;
    }
}
