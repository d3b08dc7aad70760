//! The unix socket: where it lives, and sending/receiving one [`SocketMsg`] per `SOCK_SEQPACKET`
//! packet with file descriptors attached by `SCM_RIGHTS`. Runs in both processes. RT: no.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::msg::{SocketMsg, MAX_PACKET_BYTES};

/// Environment variable that overrides every other choice of socket path.
pub const SOCKET_ENV: &str = "SHMIX_SOCKET";

/// Most descriptors one packet may carry.
pub const MAX_FDS: usize = 3;

/// Environment variable that moves the system-wide socket (`shmixd --system`, and where clients
/// look when no user socket exists): for tests and unusual layouts.
pub const SYSTEM_SOCKET_ENV: &str = "SHMIX_SYSTEM_SOCKET";

/// Where `shmixd --system` listens unless told otherwise.
pub const SYSTEM_SOCKET_PATH: &str = "/run/shmix/socket";

/// An environment variable with `secure_getenv(3)` semantics: `None` in a process that gained
/// privileges at exec (setuid, setgid, file capabilities: the kernel's `AT_SECURE`), whose
/// environment belongs to the less privileged user who started it. Otherwise a setuid program
/// using ALSA could be pointed at a socket of that user's choosing. Every variable the plugin
/// reads goes through here.
#[must_use]
pub fn secure_env(name: &str) -> Option<std::ffi::OsString> {
    if exec_was_secure() {
        return None;
    }
    std::env::var_os(name)
}

/// The kernel's `AT_SECURE` for this process.
#[must_use]
pub fn exec_was_secure() -> bool {
    // SAFETY: getauxval reads the auxiliary vector the kernel gave this process; no pointers.
    unsafe { libc::getauxval(libc::AT_SECURE) != 0 }
}

/// The socket path when nothing is configured: `$XDG_RUNTIME_DIR/shmix/socket`, or
/// `/tmp/shmix-$UID/socket` when `XDG_RUNTIME_DIR` is unset.
#[must_use]
pub fn default_socket_path() -> PathBuf {
    match secure_env("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("shmix").join("socket"),
        // SAFETY: getuid cannot fail.
        _ => PathBuf::from(format!("/tmp/shmix-{}", unsafe { libc::getuid() })).join("socket"),
    }
}

/// The system-wide socket: `SHMIX_SYSTEM_SOCKET` if set, else `/run/shmix/socket`.
#[must_use]
pub fn system_socket_path() -> PathBuf {
    match secure_env(SYSTEM_SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(SYSTEM_SOCKET_PATH),
    }
}

/// Where a user-mode daemon listens when not given `--socket`: `SHMIX_SOCKET` if set, else the
/// user default. (Never the system socket: a user daemon must not take another daemon's place.)
#[must_use]
pub fn user_socket_path() -> PathBuf {
    match secure_env(SOCKET_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_socket_path(),
    }
}

/// Resolves the socket path a client (the plugin, shmixctl) connects to: `SHMIX_SOCKET` if set,
/// else `configured` (the `socket` key or `--socket`), else the user default when a socket exists
/// there, else the system socket when one exists there, else the user default (so the error
/// names the path a user daemon would use).
#[must_use]
pub fn resolve_socket_path(configured: Option<&str>) -> PathBuf {
    let env = secure_env(SOCKET_ENV).map(PathBuf::from);
    // A socket we may not even look at (a `--system` directory closed to us) counts as there:
    // connecting then says "Permission denied" about it, not "no such file" about another path.
    resolve_from(env, configured, default_socket_path(), system_socket_path(), |p| match p.symlink_metadata() {
        Ok(m) => std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()),
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    })
}

/// [`resolve_socket_path`] with its inputs spelled out: `is_socket` says whether a socket file
/// exists at a path.
#[must_use]
pub fn resolve_from(
    env: Option<PathBuf>,
    configured: Option<&str>,
    user: PathBuf,
    system: PathBuf,
    is_socket: impl Fn(&std::path::Path) -> bool,
) -> PathBuf {
    if let Some(env) = env.filter(|v| !v.as_os_str().is_empty()) {
        return env;
    }
    match configured {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ if is_socket(&user) => user,
        _ if is_socket(&system) => system,
        _ => user,
    }
}

/// Sends `msg` as one packet with `fds` attached.
///
/// # Errors
/// The `sendmsg` error.
pub fn send(sock: BorrowedFd<'_>, msg: &SocketMsg, fds: &[RawFd]) -> io::Result<()> {
    let bytes = msg.encode();
    let iov = [IoSlice::new(&bytes)];
    let cmsg = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &cmsg };
    sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// A received packet: its bytes (not yet decoded) and the descriptors that came with it.
#[derive(Debug)]
pub struct Packet {
    /// The packet's bytes; empty means the peer closed the connection.
    pub bytes: Vec<u8>,
    /// Descriptors received, owned now (closed on drop).
    pub fds: Vec<OwnedFd>,
    /// The packet was longer than [`MAX_PACKET_BYTES`] or its control data was cut.
    pub truncated: bool,
}

/// Receives one packet (blocking or not, as the socket is set). Descriptors arrive close-on-exec.
/// More than [`MAX_FDS`] descriptors mark the packet truncated; all received ones are closed
/// when it drops.
///
/// The control buffer has room for [`MAX_FDS`] descriptors only: of a packet carrying more, the
/// kernel installs that many in this process, drops the rest itself, and sets `MSG_CTRUNC`.
/// The installed ones are still described by the (cut) control data, so it is walked header by
/// header even then: a parser that gives up on `MSG_CTRUNC` (nix's `cmsgs()` returns `ENOBUFS`)
/// leaves them open for good, and a client repeating that exhausts the daemon's descriptors.
///
/// # Errors
/// The `recvmsg` error (`WouldBlock` on a non-blocking socket with nothing to read).
pub fn recv(sock: BorrowedFd<'_>) -> io::Result<Packet> {
    let mut buf = vec![0u8; MAX_PACKET_BYTES + 1];
    // `cmsghdr` needs `size_t` alignment: the buffer is made of u64 words.
    let mut cbuf = [0u64; CMSG_WORDS];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: all-zero is a valid `msghdr` (no name, no buffers); the fields are set below.
    let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
    mh.msg_iov = &raw mut iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf.as_mut_ptr().cast();
    mh.msg_controllen = control_bytes() as _;
    // SAFETY: `mh` points at `iov` (describing `buf`) and at `cbuf`, whose lengths it gives
    // (`control_bytes() <= size_of_val(&cbuf)`, asserted at compile time); all outlive the call.
    let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &raw mut mh, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = n as usize;
    let mut fds = Vec::new();
    // SAFETY: `mh` is the header recvmsg filled: `msg_control`/`msg_controllen` describe the
    // part of `cbuf` the kernel wrote (it never grows `msg_controllen`). CMSG_FIRSTHDR and
    // CMSG_NXTHDR only return headers that lie whole inside it.
    let mut c = unsafe { libc::CMSG_FIRSTHDR(&raw const mh) };
    while !c.is_null() {
        // SAFETY: `c` is a header inside the filled control data (see above), u64-aligned.
        let hdr = unsafe { &*c };
        let data_bytes = (hdr.cmsg_len as usize).saturating_sub(cmsg_align(size_of::<libc::cmsghdr>()));
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: the data of a header inside the buffer.
            let data = unsafe { libc::CMSG_DATA(c) };
            let end = cbuf.as_ptr().cast::<u8>().wrapping_add(mh.msg_controllen as usize);
            // The kernel writes `cmsg_len` for the descriptors it installed; never read past
            // what it filled even so.
            let room = (end as usize).saturating_sub(data as usize);
            for i in 0..data_bytes.min(room) / size_of::<RawFd>() {
                // SAFETY: inside the filled control data (bounded by `room`); unaligned read
                // because CMSG_DATA promises no alignment for `int`.
                let fd = unsafe { data.add(i * size_of::<RawFd>()).cast::<RawFd>().read_unaligned() };
                if fd >= 0 {
                    // SAFETY: the kernel just installed this descriptor for us and nothing else
                    // knows its number: we own it now.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        // SAFETY: `c` is a header of `mh`'s filled control data.
        c = unsafe { libc::CMSG_NXTHDR(&raw const mh, c) };
    }
    let cut = mh.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0;
    let truncated = cut || n > MAX_PACKET_BYTES || fds.len() > MAX_FDS;
    buf.truncate(n.min(MAX_PACKET_BYTES + 1));
    Ok(Packet { bytes: buf, fds, truncated })
}

/// `u64` words of the receive control buffer: enough for [`control_bytes`].
const CMSG_WORDS: usize = 8;

/// Control bytes offered to the kernel: `CMSG_LEN` of one `SCM_RIGHTS` header with [`MAX_FDS`]
/// descriptors (not `CMSG_SPACE`, whose padding would fit a fourth), so a packet with more is cut
/// by the kernel, which closes the excess itself, instead of installing up to `SCM_MAX_FD` (253)
/// descriptors in this process first.
const fn control_bytes() -> usize {
    cmsg_align(size_of::<libc::cmsghdr>()) + MAX_FDS * size_of::<RawFd>()
}

/// glibc's `CMSG_ALIGN`: control data is laid out in `size_t` units.
const fn cmsg_align(bytes: usize) -> usize {
    bytes.next_multiple_of(size_of::<usize>())
}

const _: () = assert!(control_bytes() <= CMSG_WORDS * size_of::<u64>());

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Direction, PROTOCOL_VERSION};
    use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsFd;

    #[test]
    fn message_and_fds_cross_a_seqpacket_pair() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let msg = SocketMsg::Hello {
            version: PROTOCOL_VERSION,
            direction: Direction::Playback,
            pid: 1,
            name: "t".into(),
            device: "card_b".into(),
        };
        send(a.as_fd(), &msg, &[a.as_raw_fd()]).unwrap();
        let p = recv(b.as_fd()).unwrap();
        assert!(!p.truncated);
        assert_eq!(SocketMsg::decode(&p.bytes).unwrap(), msg);
        assert_eq!(p.fds.len(), 1);
    }

    /// A pipe whose write end is non-blocking-readable: `(read, write)`.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK).unwrap();
        (r, w)
    }

    /// True when no write end of the pipe is open anywhere in this process (read gives EOF).
    /// Parallel-safe where counting /proc/self/fd is not: other tests' descriptors do not count.
    fn writers_gone(r: &OwnedFd) -> bool {
        let mut b = [0u8; 1];
        matches!(nix::unistd::read(r, &mut b), Ok(0))
    }

    #[test]
    fn too_many_fds_are_all_closed_and_the_packet_marked_truncated() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let (r, w) = pipe();
        // Ten copies of the write end in flight: whichever the kernel installs here must be
        // closed again, or the pipe never reports EOF.
        let msg = SocketMsg::DestroyStream;
        send(a.as_fd(), &msg, &[w.as_raw_fd(); 10]).unwrap();
        drop(w);
        let p = recv(b.as_fd()).expect("a packet with too many fds is received, not an error");
        assert!(p.truncated, "10 fds must mark the packet truncated");
        assert!(p.fds.len() <= MAX_FDS, "{} fds installed", p.fds.len());
        assert_eq!(SocketMsg::decode(&p.bytes).unwrap(), msg);
        drop(p);
        assert!(writers_gone(&r), "a received descriptor outlived the packet");

        // Exactly MAX_FDS is a whole packet; its descriptors are handed over, then closed.
        let (r, w) = pipe();
        send(a.as_fd(), &msg, &[w.as_raw_fd(); MAX_FDS]).unwrap();
        drop(w);
        let p = recv(b.as_fd()).unwrap();
        assert!(!p.truncated);
        assert_eq!(p.fds.len(), MAX_FDS);
        assert!(!writers_gone(&r));
        drop(p);
        assert!(writers_gone(&r));
    }

    #[test]
    fn resolution_order_env_config_user_system() {
        let (u, s) = (PathBuf::from("/u/socket"), PathBuf::from("/s/socket"));
        let env = Some(PathBuf::from("/e/socket"));
        let both = |_: &std::path::Path| true;
        let none = |_: &std::path::Path| false;
        let only_system = |p: &std::path::Path| p == std::path::Path::new("/s/socket");
        assert_eq!(resolve_from(env.clone(), Some("/c"), u.clone(), s.clone(), both), PathBuf::from("/e/socket"));
        assert_eq!(resolve_from(Some(PathBuf::new()), Some("/c"), u.clone(), s.clone(), both), PathBuf::from("/c"));
        assert_eq!(resolve_from(None, Some("/c"), u.clone(), s.clone(), only_system), PathBuf::from("/c"));
        assert_eq!(resolve_from(None, Some(""), u.clone(), s.clone(), both), u);
        assert_eq!(resolve_from(None, None, u.clone(), s.clone(), both), u);
        assert_eq!(resolve_from(None, None, u.clone(), s.clone(), only_system), s);
        assert_eq!(resolve_from(None, None, u.clone(), s, none), u);
    }

    #[test]
    fn a_plain_process_reads_its_environment() {
        // This test binary gained no privileges at exec: secure_env is the environment. (A
        // setuid run is in the integration tests: `security::a_setuid_program_ignores_the_socket_variables`.)
        assert!(!exec_was_secure());
        assert_eq!(secure_env("PATH"), std::env::var_os("PATH"));
    }

    #[test]
    fn env_overrides_config() {
        // Not touching the process environment (tests run in parallel): only the config path.
        if secure_env(SOCKET_ENV).is_none() {
            assert_eq!(resolve_socket_path(Some("/x/y")), PathBuf::from("/x/y"));
        }
    }
}
