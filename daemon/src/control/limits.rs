//! Resource limits for untrusted clients: how many connections the daemon holds, how many streams
//! and how much shared memory one client (one peer process, by `SO_PEERCRED` pid) and one user
//! (by `SO_PEERCRED` uid: a process that forks gets around a per-process limit, not around this)
//! may map, how long a new connection may take to say `Hello` and then to create a stream, the
//! descriptor limit, and the back-off of the accept loop when the process runs out of descriptors. The control thread asks these checks;
//! a refusal carries the reason the plugin prints. Runs on the control thread. RT: no.

use std::time::{Duration, Instant};

use log::{info, warn};

/// Default for `--max-clients`.
pub const DEFAULT_MAX_CLIENTS: usize = 512;
/// Default for `--max-streams-per-client`.
pub const DEFAULT_MAX_STREAMS_PER_CLIENT: usize = 32;
/// Default for `--max-client-shm` in MiB.
pub const DEFAULT_MAX_CLIENT_SHM_MIB: u64 = 256;
/// Default for `--max-streams-per-uid` in `--system` mode: three quarters of the daemon's stream
/// slots, so one user cannot take them all. (In user mode every client is the same user: the
/// default is every slot.)
pub const DEFAULT_MAX_STREAMS_PER_UID_SYSTEM: usize = crate::mix::MAX_STREAMS * 3 / 4;
/// Default for `--max-uid-shm` in MiB (four clients' worth).
pub const DEFAULT_MAX_UID_SHM_MIB: u64 = 4 * DEFAULT_MAX_CLIENT_SHM_MIB;
/// Default for `--handshake-timeout` in seconds.
pub const DEFAULT_HANDSHAKE_TIMEOUT_S: f64 = 5.0;
/// How long the accept loop rests after the process ran out of descriptors (or memory).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(200);

/// The configured limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections held at once (handshaking or not); past it a new one gets `Refused` and is closed.
    pub max_clients: usize,
    /// Streams one peer process may have attached at once.
    pub max_streams_per_client: usize,
    /// Bytes of stream memory one peer process may have mapped by the daemon at once.
    pub max_client_shm: u64,
    /// Streams one user (peer uid) may have attached at once, over all its processes.
    pub max_streams_per_uid: usize,
    /// Bytes of stream memory one user may have mapped by the daemon at once.
    pub max_uid_shm: u64,
    /// Time a new connection has to send `Hello`, and then, unless it becomes a control
    /// connection, to create its first stream.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_clients: DEFAULT_MAX_CLIENTS,
            max_streams_per_client: DEFAULT_MAX_STREAMS_PER_CLIENT,
            max_client_shm: DEFAULT_MAX_CLIENT_SHM_MIB << 20,
            max_streams_per_uid: crate::mix::MAX_STREAMS,
            max_uid_shm: DEFAULT_MAX_UID_SHM_MIB << 20,
            handshake_timeout: Duration::from_secs_f64(DEFAULT_HANDSHAKE_TIMEOUT_S),
        }
    }
}

/// A refusal: the errno and the reason sent in `Refused` (and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Positive errno.
    pub errno: i32,
    /// Why, naming the limit and the flag that sets it.
    pub reason: String,
}

impl Limits {
    /// A new connection while `held` are open.
    ///
    /// # Errors
    /// A [`Refusal`] when `held` already reaches `--max-clients`.
    pub fn check_connection(&self, held: usize) -> Result<(), Refusal> {
        if held >= self.max_clients {
            return Err(Refusal {
                errno: libc::EUSERS,
                reason: format!(
                    "too many clients: the daemon holds {held} connections (limit --max-clients {})",
                    self.max_clients
                ),
            });
        }
        Ok(())
    }

    /// A new stream of `bytes` of shared memory for a peer process that already has `streams`
    /// streams of `shm` bytes in total.
    ///
    /// # Errors
    /// A [`Refusal`] when either per-client limit would be exceeded.
    pub fn check_stream(&self, pid: i32, streams: usize, shm: u64, bytes: u64) -> Result<(), Refusal> {
        if streams >= self.max_streams_per_client {
            return Err(Refusal {
                errno: libc::EMFILE,
                reason: format!(
                    "too many streams: process {pid} already has {streams} (limit --max-streams-per-client {})",
                    self.max_streams_per_client
                ),
            });
        }
        if shm.saturating_add(bytes) > self.max_client_shm {
            return Err(Refusal {
                errno: libc::ENOMEM,
                reason: format!(
                    "too much shared memory: process {pid} has {} KiB mapped, this stream needs {} KiB more \
                     (limit --max-client-shm {} MiB)",
                    shm >> 10,
                    bytes.div_ceil(1024),
                    self.max_client_shm >> 20
                ),
            });
        }
        Ok(())
    }

    /// A new stream of `bytes` for a peer uid that already has `streams` streams of `shm`
    /// bytes in total, over all its processes.
    ///
    /// # Errors
    /// A [`Refusal`] when either per-uid limit would be exceeded.
    pub fn check_uid_stream(&self, uid: u32, streams: usize, shm: u64, bytes: u64) -> Result<(), Refusal> {
        if streams >= self.max_streams_per_uid {
            return Err(Refusal {
                errno: libc::EMFILE,
                reason: format!(
                    "too many streams: uid {uid} already has {streams} (limit --max-streams-per-uid {})",
                    self.max_streams_per_uid
                ),
            });
        }
        if shm.saturating_add(bytes) > self.max_uid_shm {
            return Err(Refusal {
                errno: libc::ENOMEM,
                reason: format!(
                    "too much shared memory: uid {uid} has {} KiB mapped, this stream needs {} KiB more \
                     (limit --max-uid-shm {} MiB)",
                    shm >> 10,
                    bytes.div_ceil(1024),
                    self.max_uid_shm >> 20
                ),
            });
        }
        Ok(())
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a daemon holding many clients needs one
/// descriptor per connection and two wake sockets per stream). Returns `(before, after)`.
pub fn raise_nofile() -> (u64, u64) {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid out pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return (0, 0);
    }
    let before = r.rlim_cur;
    if r.rlim_cur < r.rlim_max {
        let want = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
        // SAFETY: `want` is a valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &want) } == 0 {
            r.rlim_cur = r.rlim_max;
        }
    }
    (before, r.rlim_cur)
}

/// The accept loop's back-off: after EMFILE/ENFILE/ENOBUFS/ENOMEM the listening socket is not
/// polled for [`ACCEPT_BACKOFF`] (poll would report it readable at once and the loop would spin),
/// and the error is logged once per episode, not once per try.
#[derive(Debug, Default)]
pub struct AcceptGate {
    paused_until: Option<Instant>,
    failures: u64,
    episode_logged: bool,
}

impl AcceptGate {
    /// True for the accept errors that mean "out of resources" (back off), not "this one failed".
    #[must_use]
    pub fn is_exhaustion(errno: i32) -> bool {
        matches!(errno, libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    }

    /// Records an exhaustion error from accept at `now`.
    pub fn failed(&mut self, errno: i32, held: usize, now: Instant) {
        self.failures += 1;
        self.paused_until = Some(now + ACCEPT_BACKOFF);
        if !self.episode_logged {
            self.episode_logged = true;
            warn!(
                "accept: {} with {held} clients held; pausing new connections for {} ms at a time until \
                 descriptors free up (logged once)",
                std::io::Error::from_raw_os_error(errno),
                ACCEPT_BACKOFF.as_millis()
            );
        }
    }

    /// A connection was accepted: ends an exhaustion episode.
    pub fn accepted(&mut self) {
        if self.episode_logged {
            self.episode_logged = false;
            info!("accepting connections again after {} failed accepts", self.failures);
            self.failures = 0;
        }
    }

    /// Whether to poll the listening socket now (false while resting).
    pub fn open(&mut self, now: Instant) -> bool {
        match self.paused_until {
            Some(t) if now < t => false,
            _ => {
                self.paused_until = None;
                true
            }
        }
    }

    /// How long until the listening socket is polled again (`None`: it is).
    #[must_use]
    pub fn wait(&self, now: Instant) -> Option<Duration> {
        self.paused_until.map(|t| t.saturating_duration_since(now))
    }
}

/// Streams and shared memory of one peer process (`key` a pid) or one user (a uid), summed
/// over its connections: `clients` gives each connection's key and its stream's bytes, if any.
#[must_use]
pub fn usage<K: PartialEq>(key: K, clients: impl Iterator<Item = (K, Option<u64>)>) -> (usize, u64) {
    clients.filter(|(k, _)| *k == key).filter_map(|(_, b)| b).fold((0, 0), |(n, s), b| (n + 1, s + b))
}

/// Parses `--max-client-shm` (MiB).
///
/// # Errors
/// Not a positive integer.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 && n < (1 << 44) => Ok(n << 20),
        _ => Err(format!("'{s}': a positive number of MiB")),
    }
}

/// Parses `--handshake-timeout` (seconds, fractions allowed).
///
/// # Errors
/// Not a positive number of seconds up to an hour.
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 3600.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("'{s}': a number of seconds above 0 and at most 3600")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_against_the_limit() {
        let l = Limits { max_clients: 2, ..Limits::default() };
        assert!(l.check_connection(0).is_ok());
        assert!(l.check_connection(1).is_ok());
        let r = l.check_connection(2).unwrap_err();
        assert_eq!(r.errno, libc::EUSERS);
        assert!(r.reason.contains("--max-clients 2"), "{}", r.reason);
    }

    #[test]
    fn per_process_streams_and_memory() {
        let l = Limits { max_streams_per_client: 2, max_client_shm: 1 << 20, ..Limits::default() };
        let clients = [(7, Some(300_000)), (7, None), (8, Some(900_000)), (7, Some(300_000))];
        let (n, bytes) = usage(7, clients.iter().copied());
        assert_eq!((n, bytes), (2, 600_000));
        let r = l.check_stream(7, n, bytes, 4096).unwrap_err();
        assert!(r.reason.contains("--max-streams-per-client 2"), "{}", r.reason);
        let (n, bytes) = usage(8, clients.iter().copied());
        assert!(l.check_stream(8, n, bytes, 100_000).is_ok());
        let r = l.check_stream(8, n, bytes, 200_000).unwrap_err();
        assert_eq!(r.errno, libc::ENOMEM);
        assert!(r.reason.contains("--max-client-shm 1 MiB"), "{}", r.reason);
    }

    /// Finding 5 of issue 15: per-process limits alone let a process that forks map without
    /// bound; the per-uid limit counts every process of the user.
    #[test]
    fn per_uid_streams_and_memory_count_every_process_of_the_user() {
        let l = Limits { max_streams_per_uid: 3, max_uid_shm: 1 << 20, ..Limits::default() };
        // Three processes of uid 1000, one stream each (each well within its per-process limits).
        let clients = [(1000u32, Some(200_000)), (1000, Some(200_000)), (1001, Some(900_000)), (1000, Some(200_000))];
        let (n, bytes) = usage(1000u32, clients.iter().copied());
        assert_eq!((n, bytes), (3, 600_000));
        assert!(l.check_stream(4242, 0, 0, 4096).is_ok(), "a fresh process passes its own limits");
        let r = l.check_uid_stream(1000, n, bytes, 4096).unwrap_err();
        assert_eq!(r.errno, libc::EMFILE);
        assert!(r.reason.contains("uid 1000") && r.reason.contains("--max-streams-per-uid 3"), "{}", r.reason);
        let (n, bytes) = usage(1001u32, clients.iter().copied());
        assert!(l.check_uid_stream(1001, n, bytes, 100_000).is_ok());
        let r = l.check_uid_stream(1001, n, bytes, 200_000).unwrap_err();
        assert_eq!(r.errno, libc::ENOMEM);
        assert!(r.reason.contains("--max-uid-shm 1 MiB"), "{}", r.reason);
    }

    #[test]
    fn the_gate_rests_after_exhaustion_and_reopens() {
        let mut g = AcceptGate::default();
        let t0 = Instant::now();
        assert!(g.open(t0));
        assert!(AcceptGate::is_exhaustion(libc::EMFILE));
        assert!(!AcceptGate::is_exhaustion(libc::ECONNABORTED));
        g.failed(libc::EMFILE, 10, t0);
        assert!(!g.open(t0 + Duration::from_millis(10)));
        assert!(g.wait(t0).is_some());
        assert!(g.open(t0 + ACCEPT_BACKOFF));
        g.accepted();
        assert_eq!(g.failures, 0);
    }

    #[test]
    fn flags_parse() {
        assert_eq!(parse_mib("3"), Ok(3 << 20));
        assert!(parse_mib("0").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("nan").is_err());
    }

    #[test]
    fn nofile_is_raised_to_the_hard_limit() {
        let (before, after) = raise_nofile();
        assert!(after >= before);
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: valid out pointer.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) };
        assert_eq!(r.rlim_cur, r.rlim_max);
    }
}
