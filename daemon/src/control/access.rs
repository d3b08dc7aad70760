//! Who may connect, and where the listening socket comes from.
//!
//! - Access: a connection's credentials are the ones the kernel recorded when the peer called
//!   `connect()`: `SO_PEERCRED` (pid, uid, gid) and `SO_PEERGROUPS` (supplementary groups). They
//!   are read at accept, before any byte of the handshake, and never looked up again by pid:
//!   `/proc/PID/status` would race with the peer exiting and its pid being reused (or with a
//!   setuid exec after connect), the socket's own record cannot. A peer is admitted when its uid
//!   is the daemon's or root's, or, in `--system` mode, when its primary or a supplementary group
//!   is the allowed group.
//! - Socket activation (`sd_listen_fds` protocol): with `LISTEN_PID` = our pid and `LISTEN_FDS` =
//!   1, fd 3 is the listening socket systemd (or `systemd-socket-activate`) bound for us; it must
//!   be a listening unix `SOCK_SEQPACKET` socket.
//! - `--system` mode's filesystem side: the socket directory (when the daemon creates it) is
//!   0750 and belongs to the allowed group, the socket 0660 in that group.
//!
//! Runs on the main (control) thread. RT: no.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use nix::sys::socket::{self, sockopt, SockType, SockaddrStorage};

/// The allowed group of `--system` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// As given (a name, or a number).
    pub name: String,
    /// Its gid.
    pub gid: u32,
}

impl Group {
    /// Looks up `name` in the group database (a number is taken as a gid as it is).
    ///
    /// # Errors
    /// No such group, or the lookup failed.
    pub fn lookup(name: &str) -> anyhow::Result<Self> {
        if let Ok(gid) = name.parse::<u32>() {
            return Ok(Self { name: name.to_owned(), gid });
        }
        match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => Ok(Self { name: name.to_owned(), gid: g.gid.as_raw() }),
            Ok(None) => bail!("no group named '{name}' (--group)"),
            Err(e) => Err(anyhow!("looking up group '{name}': {e}")),
        }
    }
}

/// A connected peer, as the kernel recorded it at `connect()`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its pid (for logs only: never used to look anything up).
    pub pid: i32,
    /// Effective uid.
    pub uid: u32,
    /// Effective gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Peer {
    /// Reads the credentials of the connected socket `fd`.
    ///
    /// # Errors
    /// The failing `getsockopt`.
    pub fn of(fd: BorrowedFd<'_>) -> io::Result<Self> {
        let cred = socket::getsockopt(&fd, sockopt::PeerCredentials).map_err(io::Error::from)?;
        Ok(Self { pid: cred.pid(), uid: cred.uid(), gid: cred.gid(), groups: peer_groups(fd)? })
    }
}

/// `SO_PEERGROUPS` (Linux 4.13): the peer's supplementary groups at `connect()`.
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size_of::<libc::gid_t>())
            .map_err(|_| io::Error::from_raw_os_error(libc::ERANGE))?;
        // SAFETY: `groups` is a writable buffer of exactly `len` bytes, `len` a valid in/out
        // pointer; the kernel writes at most `len` bytes and stores the needed size in `len`.
        let r = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let n = len as usize / size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(n.min(groups.len()));
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // ERANGE: the buffer was too small, `len` says how large it must be (NGROUPS_MAX 65536).
        if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() && n <= 65_536 {
            groups.resize(n, 0);
            continue;
        }
        return Err(e);
    }
}

/// Who is admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The daemon's uid: always admitted (so is root, who could read our memory anyway).
    pub uid: u32,
    /// `--system` mode: members of this group are admitted too.
    pub group: Option<Group>,
}

impl Policy {
    /// User mode: the daemon's own uid (and root) only.
    #[must_use]
    pub fn user() -> Self {
        // SAFETY: geteuid cannot fail.
        Self { uid: unsafe { libc::geteuid() }, group: None }
    }

    /// System mode: also every member of `group`.
    #[must_use]
    pub fn system(group: Group) -> Self {
        Self { group: Some(group), ..Self::user() }
    }

    /// Admits `peer`, or says why not (for the log and the client's error).
    ///
    /// # Errors
    /// The reason of a refusal.
    pub fn admit(&self, peer: &Peer) -> Result<(), String> {
        if peer.uid == self.uid || peer.uid == 0 {
            return Ok(());
        }
        match &self.group {
            None => Err(format!("uid {} is not the daemon's uid {} (user mode: one user only)", peer.uid, self.uid)),
            Some(g) if peer.gid == g.gid || peer.groups.contains(&g.gid) => Ok(()),
            Some(g) => Err(format!(
                "uid {} (gid {}, groups {:?}) is not in group '{}' (gid {}), which --system mode admits",
                peer.uid, peer.gid, peer.groups, g.name, g.gid
            )),
        }
    }
}

/// The listening socket handed over by systemd, if any (`LISTEN_PID`/`LISTEN_FDS`), with the
/// path it is bound to. Removes the variables from the environment (nothing we start inherits
/// them). Call before any thread is spawned.
///
/// # Errors
/// The variables are for us but wrong (not exactly one fd), or fd 3 is not a listening unix
/// `SOCK_SEQPACKET` socket.
pub fn socket_from_systemd() -> anyhow::Result<Option<(OwnedFd, PathBuf)>> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else { return Ok(None) };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (we inherited it from a parent): not ours.
        return Ok(None);
    }
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    let n: u32 = fds.trim().parse().map_err(|_| anyhow!("LISTEN_FDS='{fds}' is not a number"))?;
    if n != 1 {
        bail!("socket activation passed {n} sockets; shmixd takes exactly one (ListenSequentialPacket=)");
    }
    const SD_LISTEN_FDS_START: i32 = 3;
    // SAFETY: the sd_listen_fds protocol (LISTEN_PID is our pid, LISTEN_FDS = 1) says fd 3 was
    // open across exec for us; nothing in this process has taken it (no file is opened before
    // this call). We check below that it is what we expect before using it.
    let fd = unsafe { OwnedFd::from_raw_fd(SD_LISTEN_FDS_START) };
    let check = |what: &str| {
        anyhow!("socket activation: fd 3 is {what}; shmixd needs a listening unix SOCK_SEQPACKET socket (ListenSequentialPacket=, systemd-socket-activate --seqpacket)")
    };
    let st = nix::sys::stat::fstat(&fd).map_err(|_| check("not open"))?;
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(check("not a socket"));
    }
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd()).map_err(|_| check("not a socket"))?;
    let Some(unix) = addr.as_unix_addr() else { return Err(check("not a unix socket")) };
    let path = unix.path().map(Path::to_path_buf).ok_or_else(|| check("an unnamed or abstract unix socket"))?;
    if socket::getsockopt(&fd, sockopt::SockType).map_err(|_| check("unreadable"))? != SockType::SeqPacket {
        return Err(check("not SOCK_SEQPACKET"));
    }
    if !socket::getsockopt(&fd, sockopt::AcceptConn).map_err(|_| check("unreadable"))? {
        return Err(check("not listening"));
    }
    use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
    let fl = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(fl | OFlag::O_NONBLOCK))?;
    fcntl(fd.as_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    Ok(Some((fd, path)))
}

/// `--system` mode, before binding: creates the socket's directory when missing, 0750 in the
/// allowed group (an existing directory is left as it is: systemd's `RuntimeDirectory=` or the
/// administrator made it; a shared one like `/tmp` must not be changed).
///
/// # Errors
/// Creating or changing the directory failed.
pub fn prepare_system_dir(socket: &Path, group: &Group) -> anyhow::Result<()> {
    let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty()) else { return Ok(()) };
    if dir.exists() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .with_context(|| format!("creating socket directory {}", dir.display()))?;
    std::os::unix::fs::chown(dir, None, Some(group.gid))
        .with_context(|| format!("giving {} to group '{}'", dir.display(), group.name))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))
        .with_context(|| format!("chmod 0750 {}", dir.display()))?;
    Ok(())
}

/// `--system` mode, after binding: the socket becomes 0660 in the allowed group.
///
/// # Errors
/// `chown` or `chmod` failed (the daemon is not a member of the group and not root).
pub fn restrict_system_socket(socket: &Path, group: &Group) -> anyhow::Result<()> {
    std::os::unix::fs::chown(socket, None, Some(group.gid)).with_context(|| {
        format!("giving {} to group '{}' (run shmixd as root or as a member of it)", socket.display(), group.name)
    })?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("chmod 0660 {}", socket.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag};

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> Peer {
        Peer { pid: 1, uid, gid, groups: groups.to_vec() }
    }

    #[test]
    fn user_mode_admits_own_uid_and_root_only() {
        let p = Policy { uid: 1000, group: None };
        assert!(p.admit(&peer(1000, 1000, &[])).is_ok());
        assert!(p.admit(&peer(0, 0, &[])).is_ok());
        let e = p.admit(&peer(1001, 29, &[29])).unwrap_err();
        assert!(e.contains("uid 1001") && e.contains("1000"), "{e}");
    }

    #[test]
    fn system_mode_admits_primary_or_supplementary_group() {
        let p = Policy { uid: 999, group: Some(Group { name: "audio".into(), gid: 29 }) };
        assert!(p.admit(&peer(999, 999, &[])).is_ok());
        assert!(p.admit(&peer(1000, 29, &[])).is_ok());
        assert!(p.admit(&peer(1000, 1000, &[4, 29, 100])).is_ok());
        let e = p.admit(&peer(1000, 1000, &[4, 100])).unwrap_err();
        assert!(e.contains("'audio'") && e.contains("gid 29"), "{e}");
    }

    #[test]
    fn credentials_of_a_socketpair_are_our_own() {
        let (a, _b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let p = Peer::of(a.as_fd()).unwrap();
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!((p.pid, p.uid, p.gid), (std::process::id() as i32, uid, gid));
        let mut ours = nix::unistd::getgroups().unwrap().iter().map(|g| g.as_raw()).collect::<Vec<_>>();
        let mut theirs = p.groups.clone();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }

    #[test]
    fn numeric_and_named_groups() {
        assert_eq!(Group::lookup("4242").unwrap().gid, 4242);
        assert_eq!(Group::lookup("root").unwrap().gid, 0);
        assert!(Group::lookup("no-such-group-shmix").is_err());
    }
}
