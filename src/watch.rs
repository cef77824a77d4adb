//! Change notification for directories of files that Monoskope reloads:
//! cluster manifests, signing keys and TLS certificates.
//!
//! Kubernetes updates a mounted Secret or ConfigMap by swapping a `..data`
//! symlink, which a watch on the file itself misses, so the directories are
//! watched. Events are coalesced, and a periodic tick catches anything the
//! operating system did not report (network file systems, overflowed queues).

use std::path::PathBuf;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long to wait after an event for the writer to finish.
const SETTLE: Duration = Duration::from_millis(150);

/// Fires when something in the watched directories changed.
pub struct DirectoryWatch {
    // Dropping the watcher stops the notifications.
    _watcher: RecommendedWatcher,
    events: mpsc::Receiver<()>,
    resync: tokio::time::Interval,
}

impl DirectoryWatch {
    /// Watches `directories` (not recursively) and also fires every
    /// `resync` interval.
    pub fn new(directories: &[PathBuf], resync: Duration) -> Result<Self, notify::Error> {
        let (sender, events) = mpsc::channel(1);
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // Reads are reported too (inotify's open and close events); a
            // reload reads the files, so reacting to reads would loop.
            let is_change = event.is_ok_and(|e| !matches!(e.kind, EventKind::Access(_)));
            if is_change {
                // A full channel already contains a pending notification.
                let _ = sender.try_send(());
            }
        })?;
        for directory in directories {
            watcher.watch(directory, RecursiveMode::NonRecursive)?;
        }

        let mut resync = tokio::time::interval(resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.reset();
        Ok(Self { _watcher: watcher, events, resync })
    }

    /// Waits for the next change, or the next resync tick.
    pub async fn changed(&mut self) {
        tokio::select! {
            _ = self.events.recv() => {
                tokio::time::sleep(SETTLE).await;
                while self.events.try_recv().is_ok() {}
            }
            _ = self.resync.tick() => {}
        }
    }
}
