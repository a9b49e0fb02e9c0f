//! The receiving engine of `bench remote`, on a thread and runtime of its own as an engine in
//! another process would be, so that the sending engines' work (signing, above all) does not
//! share its thread. Between tasks it answers route probes; on request it takes a number of
//! messages, or answers a number of requests with their own bodies. A task is queued before
//! its caller sends anything and is picked up before any message, so nothing else should
//! arrive between tasks: what does is counted, and fails the next task.

use crate::node_client::run_local;
use crate::routable::{answer_probe, PROBE};
use anyhow::{anyhow, bail, Context, Result};
use std::future::Future;
use netmachine_engine::{Engine, EngineMessage, EngineOptions, Identity, Keypair};
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the receiver waits for each next message before the figure fails.
const PATIENCE: Duration = Duration::from_secs(30);

enum Task {
    /// Take `count` messages (probes aside).
    Take { count: usize, done: oneshot::Sender<Result<()>> },
    /// Answer `count` requests with their own bodies.
    Echo { count: usize, done: oneshot::Sender<Result<()>> },
}

/// The receiving engine's thread; dropping it detaches the engine and ends the thread.
pub struct ReceivingEngine {
    identity: Identity,
    tasks: Option<mpsc::UnboundedSender<Task>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ReceivingEngine {
    /// Attaches an engine with a new key to the router at `router_socket`, on a new thread.
    pub fn attach(router_socket: PathBuf) -> Result<Self> {
        let (ready, attached) = std::sync::mpsc::channel::<Result<Identity>>();
        let (tasks, inbox) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new().name("bench-receiver".into()).spawn(move || {
            let failed = ready.clone();
            let outcome = run_local(async move {
                let engine = Engine::attach(EngineOptions::new(router_socket, Keypair::generate())).await?;
                let _ = ready.send(Ok(engine.identity()));
                serve(&engine, inbox).await;
                engine.detach().await;
                Ok(())
            });
            if let Err(error) = outcome {
                let _ = failed.send(Err(error));
            }
        })?;
        let identity = attached.recv().map_err(|_| anyhow!("the receiving engine's thread ended"))??;
        Ok(ReceivingEngine { identity, tasks: Some(tasks), thread: Some(thread) })
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Queues the taking of `count` messages (probes aside) at once; the future resolves once
    /// they have arrived, each within 30 s of the last.
    pub fn take(&self, count: usize) -> impl Future<Output = Result<()>> {
        self.queue(move |done| Task::Take { count, done })
    }

    /// Queues the answering of `count` requests with their own bodies at once; the future
    /// resolves once they are answered.
    pub fn echo(&self, count: usize) -> impl Future<Output = Result<()>> {
        self.queue(move |done| Task::Echo { count, done })
    }

    fn queue(&self, task: impl FnOnce(oneshot::Sender<Result<()>>) -> Task) -> impl Future<Output = Result<()>> {
        let (done, outcome) = oneshot::channel();
        let queued = match &self.tasks {
            Some(tasks) => tasks.send(task(done)).map_err(|_| anyhow!("the receiving engine's thread ended")),
            None => Err(anyhow!("the receiving engine is stopping")),
        };
        async move {
            queued?;
            outcome.await.map_err(|_| anyhow!("the receiving engine's thread ended"))?
        }
    }
}

impl Drop for ReceivingEngine {
    fn drop(&mut self) {
        self.tasks = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The engine, and how many messages other than probes arrived while no task ran.
struct Receiver<'a> {
    engine: &'a Engine,
    stray: usize,
}

async fn serve(engine: &Engine, mut tasks: mpsc::UnboundedReceiver<Task>) {
    let mut receiver = Receiver { engine, stray: 0 };
    loop {
        tokio::select! {
            // A queued task goes before any message that came after it.
            biased;
            task = tasks.recv() => match task {
                None => return,
                Some(Task::Take { count, done }) => { let _ = done.send(receiver.take(count).await); }
                Some(Task::Echo { count, done }) => { let _ = done.send(receiver.echo(count).await); }
            },
            Some(message) = engine.recv() => match message.protocol == PROBE {
                true => answer_probe(engine, &message).await,
                false => receiver.stray += 1,
            },
        }
    }
}

impl Receiver<'_> {
    /// Fails a task if messages strayed in before it: its figure would be wrong.
    fn no_strays(&mut self) -> Result<()> {
        match std::mem::take(&mut self.stray) {
            0 => Ok(()),
            stray => bail!("{stray} messages arrived at the receiving engine while no figure was being measured"),
        }
    }

    /// The next message that is not a probe, waiting at most `PATIENCE`.
    async fn next(&mut self, what: &str, n: usize, count: usize) -> Result<EngineMessage> {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.engine.recv()).await.with_context(|| format!("{what} {n} of {count} did not arrive"))?;
            let message = message.context("the receiving engine was detached")?;
            if message.protocol != PROBE {
                return Ok(message);
            }
        }
    }

    async fn take(&mut self, count: usize) -> Result<()> {
        self.no_strays()?;
        for n in 0..count {
            self.next("message", n, count).await?;
        }
        Ok(())
    }

    async fn echo(&mut self, count: usize) -> Result<()> {
        self.no_strays()?;
        for n in 0..count {
            let request = self.next("request", n, count).await?;
            self.engine.reply(&request, request.body.clone()).await?;
        }
        Ok(())
    }
}
