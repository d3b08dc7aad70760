//! Sound cards that appear while the daemon runs (started without `--device`, it serves every
//! hardware card): an inotify watch on `/dev/snd` (or on `/dev`, until `/dev/snd` exists, as
//! on a machine whose first card is plugged in later). A node created or removed there asks for
//! a rescan of ALSA's card list, a little later (udev sets the node's permissions after it
//! appears); cards not served yet are opened and offered. A card that vanishes needs nothing
//! here: its device's mix thread sees `ENODEV` and its device manager reopens it when it is back.
//! Runs on the main (control) thread. RT: no.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use log::{debug, warn};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

/// How long after a node appears the card list is read again (udev's rules run meanwhile).
pub const SETTLE: Duration = Duration::from_millis(500);

/// The watch on the sound device nodes.
#[derive(Debug)]
pub struct Hotplug {
    inotify: Inotify,
    dir: PathBuf,
    /// Watching `dir`'s parent until `dir` exists.
    parent: Option<WatchDescriptor>,
    /// When the card list is to be read again.
    rescan_at: Option<Instant>,
}

impl Hotplug {
    /// Watches `dir` (`/dev/snd`), or its parent until it exists.
    ///
    /// # Errors
    /// inotify cannot be set up (logged by the caller; cards are then found at start only).
    pub fn new(dir: &Path) -> nix::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let mut h = Self { inotify, dir: dir.to_path_buf(), parent: None, rescan_at: None };
        h.watch()?;
        Ok(h)
    }

    fn watch(&mut self) -> nix::Result<()> {
        let flags = AddWatchFlags::IN_CREATE | AddWatchFlags::IN_DELETE | AddWatchFlags::IN_ATTRIB;
        match self.inotify.add_watch(&self.dir, flags) {
            Ok(_) => {
                if let Some(wd) = self.parent.take() {
                    let _ = self.inotify.rm_watch(wd);
                }
                Ok(())
            }
            Err(nix::errno::Errno::ENOENT) => {
                let parent = self.dir.parent().unwrap_or(Path::new("/"));
                self.parent = Some(self.inotify.add_watch(parent, AddWatchFlags::IN_CREATE)?);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The descriptor to poll.
    #[must_use]
    pub fn fd(&self) -> RawFd {
        self.inotify.as_fd().as_raw_fd()
    }

    /// Reads what happened (the descriptor was readable): a node in the watched directory
    /// appeared, went or changed its permissions, or the directory itself appeared. A rescan is
    /// due [`SETTLE`] later.
    pub fn take_events(&mut self) {
        let dir_name = self.dir.file_name().map(OsStr::to_os_string);
        let mut dir_appeared = false;
        while let Ok(events) = self.inotify.read_events() {
            if events.is_empty() {
                break;
            }
            for e in events {
                if Some(e.wd) == self.parent {
                    dir_appeared |= e.name.is_some() && e.name == dir_name;
                } else {
                    debug!("{}: {:?} {:?}", self.dir.display(), e.mask, e.name);
                }
            }
            self.rescan_at = Some(Instant::now() + SETTLE);
        }
        if dir_appeared {
            if let Err(e) = self.watch() {
                warn!("cannot watch {} for sound cards: {e}", self.dir.display());
            }
        }
    }

    /// How long until a rescan is due (`None`: none is).
    #[must_use]
    pub fn rescan_in(&self, now: Instant) -> Option<Duration> {
        self.rescan_at.map(|t| t.saturating_duration_since(now))
    }

    /// True once when the rescan is due.
    pub fn rescan_due(&mut self, now: Instant) -> bool {
        if self.rescan_at.is_some_and(|t| now >= t) {
            self.rescan_at = None;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_created_in_the_watched_directory_asks_for_a_rescan() {
        let root = tempfile::tempdir().unwrap();
        let snd = root.path().join("snd");
        // The directory does not exist yet: its parent is watched until it does.
        let mut h = Hotplug::new(&snd).unwrap();
        assert!(h.parent.is_some());
        std::fs::create_dir(&snd).unwrap();
        h.take_events();
        assert!(h.parent.is_none(), "the directory itself is watched once it exists");
        assert!(h.rescan_in(Instant::now()).is_some());
        let later = Instant::now() + SETTLE;
        assert!(h.rescan_due(later));
        assert!(!h.rescan_due(later), "once");
        std::fs::write(snd.join("pcmC1D0p"), b"").unwrap();
        h.take_events();
        assert!(h.rescan_due(Instant::now() + SETTLE));
    }
}
