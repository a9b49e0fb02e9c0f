//! A service's counters as the node's, not the process's: what earlier runs of the service on
//! this node home counted is carried in `$DATA/counters/<service>` and added to what this run
//! counts, so a restart does not reset them. The file also counts the service's starts.
//!
//! The shell writes the file every `SAVE_EVERY` while the counts change and once more on a
//! clean stop; a process killed outright loses at most the increments of that last interval.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// How often the counts are written while they change, and the shell looks at its own status
/// once ready. A look builds the whole status report (files read, `/proc` read, the report
/// built and read back): 2-5 ms of CPU on a VM, and at one every 2 s, the five services' looks
/// were most of what an idle node cost.
pub const SAVE_EVERY: Duration = Duration::from_secs(10);

/// The counts of earlier runs, and the latest of this one.
#[derive(Debug)]
pub struct Tally {
    file: PathBuf,
    /// Each counter's total over earlier runs.
    carried: BTreeMap<String, u64>,
    /// How many times the service has started here, this run included.
    starts: u64,
    /// When this run started, in ms since the Unix epoch.
    started_ms: u64,
    /// This run's counters as last reported, and whether they changed since the last save.
    latest: RefCell<(Vec<(&'static str, u64)>, bool)>,
}

thread_local! {
    /// The tally of this service process, opened by the shell before the service starts.
    static CURRENT: RefCell<Option<std::rc::Rc<Tally>>> = const { RefCell::new(None) };
}

const STARTS: &str = "starts";

impl Tally {
    /// Opens the tally in `file`, counts this start and writes it. An unreadable or malformed
    /// file starts the counts again from zero (with a warning): counters are not worth a
    /// service that refuses to start.
    pub fn open(file: PathBuf) -> Tally {
        let mut carried = match std::fs::read_to_string(&file) {
            Ok(text) => parse(&text).unwrap_or_else(|line| {
                tracing::warn!(file = %file.display(), line, "counters file is malformed; counting from zero");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => {
                tracing::warn!(file = %file.display(), %error, "counters file unreadable; counting from zero");
                BTreeMap::new()
            }
        };
        let starts = carried.remove(STARTS).unwrap_or(0) + 1;
        let started_ms = netmachine_schema::time::now_ms();
        let tally = Tally { file, carried, starts, started_ms, latest: RefCell::new((Vec::new(), true)) };
        tally.save();
        tally
    }

    /// Makes `tally` the one `StatusReport` adds to.
    pub fn install(tally: std::rc::Rc<Tally>) {
        CURRENT.with(|current| *current.borrow_mut() = Some(tally));
    }

    /// The tally of this process, if the shell opened one (not in unit tests).
    pub fn current() -> Option<std::rc::Rc<Tally>> {
        CURRENT.with(|current| current.borrow().clone())
    }

    pub fn starts(&self) -> u64 {
        self.starts
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The totals of this run's counters `live`, which are remembered for the next save.
    pub fn totals(&self, live: &[(&'static str, u64)]) -> Vec<(String, u64)> {
        let mut latest = self.latest.borrow_mut();
        if latest.0 != live {
            *latest = (live.to_vec(), true);
        }
        self.combine(live)
    }

    fn combine(&self, live: &[(&'static str, u64)]) -> Vec<(String, u64)> {
        let mut totals: BTreeMap<String, u64> = self.carried.clone();
        for (name, value) in live {
            *totals.entry((*name).to_string()).or_default() += value;
        }
        totals.into_iter().collect()
    }

    /// Writes the totals if they changed since the last write.
    pub fn save(&self) {
        let (live, changed) = {
            let mut latest = self.latest.borrow_mut();
            let changed = std::mem::replace(&mut latest.1, false);
            (latest.0.clone(), changed)
        };
        if !changed {
            return;
        }
        let mut text = format!("{STARTS} {}\n", self.starts);
        for (name, value) in self.combine(&live) {
            text.push_str(&format!("{name} {value}\n"));
        }
        if let Err(error) = write_atomically(&self.file, &text) {
            tracing::warn!(file = %self.file.display(), %error, "cannot write the counters file");
        }
    }
}

/// Each line `name value`; the number of the first line that is not, on failure.
fn parse(text: &str) -> Result<BTreeMap<String, u64>, usize> {
    let mut counts = BTreeMap::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let (name, value) = line.split_once(' ').ok_or(i + 1)?;
        counts.insert(name.to_string(), value.trim().parse().map_err(|_| i + 1)?);
    }
    Ok(counts)
}

fn write_atomically(file: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = file.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("nm-tally-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("counters").join("router")
    }

    #[test]
    fn a_restart_carries_the_counts_and_counts_the_start() {
        let file = scratch("carry");
        let first = Tally::open(file.clone());
        assert_eq!(first.starts(), 1);
        assert_eq!(first.totals(&[("messages_accepted", 5)]), vec![("messages_accepted".to_string(), 5)]);
        first.save();
        drop(first);
        let second = Tally::open(file.clone());
        assert_eq!(second.starts(), 2);
        let totals = second.totals(&[("messages_accepted", 2), ("remote_messages_sent", 1)]);
        assert_eq!(totals, vec![("messages_accepted".to_string(), 7), ("remote_messages_sent".to_string(), 1)]);
        // A counter this run has not reported yet still shows what earlier runs counted.
        assert_eq!(second.totals(&[]), vec![("messages_accepted".to_string(), 5)]);
    }

    #[test]
    fn a_malformed_file_counts_from_zero() {
        let file = scratch("malformed");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "starts 3\nmessages_accepted lots\n").unwrap();
        let tally = Tally::open(file.clone());
        assert_eq!(tally.starts(), 1);
        assert_eq!(tally.totals(&[("messages_accepted", 1)]), vec![("messages_accepted".to_string(), 1)]);
        assert_eq!(parse("a 1\n\nb x\n"), Err(3));
    }
}
