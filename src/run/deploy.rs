//! What the process that binds the listeners (the supervisor, or a single process) does
//! for the system that runs it: the `--pid` file, dropping to `--user`/`--group` once the
//! sockets are bound, and telling systemd where it stands (`sd_notify`).

use std::ffi::CString;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};

use super::listen::Listeners;
use crate::config::Config;
use crate::log_warn;

/// What the process that bound the listeners holds for its deployment until it exits.
pub struct Deployment {
    pub notifier: Notifier,
    _pid_file: Option<PidFile>,
}

/// Right after binding, before the application or any worker starts: the `--pid` file,
/// then `--user`/`--group` (the UNIX sockets made here change owner with it), and the
/// systemd notifier.
pub fn settle(config: &Config, listeners: &Listeners) -> anyhow::Result<Deployment> {
    let notifier = Notifier::from_env();
    let pid_file = config
        .pid_file
        .as_deref()
        .map(PidFile::create)
        .transpose()?;
    if let Some(identity) = Identity::resolve(config.user.as_deref(), config.group.as_deref())? {
        for path in listeners.unix_paths() {
            identity.chown(path)?;
        }
        // The log files were made by this process as root: the workers, running as the
        // user, open them again (and on SIGUSR1), as gunicorn's do.
        let access = config.access_log.as_ref().map(|a| a.target.as_str());
        let logs = config
            .error_log
            .iter()
            .map(PathBuf::as_path)
            .chain(access.filter(|t| *t != "-").map(Path::new));
        for path in logs {
            identity.chown(path)?;
        }
        identity.assume()?;
    }
    Ok(Deployment {
        notifier,
        _pid_file: pid_file,
    })
}

/// `--pid FILE`: holds this process's PID while it runs, removed when it is dropped.
pub struct PidFile(PathBuf);

impl PidFile {
    /// Writes the file; refuses when it names another process that is still running (a
    /// server already started with the same file).
    pub fn create(path: &Path) -> anyhow::Result<PidFile> {
        let me = std::process::id();
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Ok(pid) = text.trim().parse::<u32>() {
                if pid != me && process_exists(pid) {
                    bail!(
                        "--pid {}: process {pid} is running with this PID file (another Spindle?)",
                        path.display()
                    );
                }
            }
        }
        std::fs::write(path, format!("{me}\n"))
            .with_context(|| format!("cannot write --pid {}", path.display()))?;
        Ok(PidFile(path.to_path_buf()))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a newer server may have taken the file over meanwhile.
        let ours = std::fs::read_to_string(&self.0)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// `--user` and `--group`, resolved.
pub struct Identity {
    uid: libc::uid_t,
    gid: libc::gid_t,
    user: String,
}

impl Identity {
    /// Resolves the names (or numbers); the group defaults to the user's own. `None` when
    /// neither is given.
    pub fn resolve(user: Option<&str>, group: Option<&str>) -> anyhow::Result<Option<Identity>> {
        if user.is_none() && group.is_none() {
            return Ok(None);
        }
        let (uid, user_gid, name) = match user {
            Some(user) => lookup_user(user)?,
            None => {
                // SAFETY: getuid/getgid only read this process's credentials.
                let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                (uid, gid, uid.to_string())
            }
        };
        let gid = match group {
            Some(group) => lookup_group(group)?,
            None => user_gid,
        };
        Ok(Some(Identity {
            uid,
            gid,
            user: name,
        }))
    }

    /// Gives the UNIX socket files to the new owner. (Removing them at exit takes write
    /// permission on their directory, which stays the administrator's to give; a file left
    /// behind is replaced at the next start, see `listen::bind_unix`.)
    pub fn chown(&self, path: &Path) -> anyhow::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("cannot give {} to --user", path.display()))
    }

    /// Becomes that user and group for good (supplementary groups: just the group).
    pub fn assume(&self) -> anyhow::Result<()> {
        // SAFETY: setgroups reads one gid from a valid one-element array; setgid and setuid
        // take plain integers. The C library applies each to every thread of the process.
        let failed = unsafe {
            libc::setgroups(1, &self.gid) != 0
                || libc::setgid(self.gid) != 0
                || libc::setuid(self.uid) != 0
        };
        if failed {
            return Err(io::Error::last_os_error()).with_context(|| {
                format!(
                    "cannot run as user {} (uid {}, gid {}): switching users needs root",
                    self.user, self.uid, self.gid
                )
            });
        }
        Ok(())
    }
}

/// A user name or number: its uid and primary gid.
fn lookup_user(user: &str) -> anyhow::Result<(libc::uid_t, libc::gid_t, String)> {
    let name = CString::new(user).map_err(|_| anyhow!("--user {user:?}: not a user name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value to be overwritten (pointers null).
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call: `name` is NUL-terminated, `pwd` and
    // `found` are exclusively borrowed, `buf` is `buf.len()` writable bytes. The strings
    // `pwd` points to live in `buf`, which we do not read.
    let rc = unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() {
        return Ok((pwd.pw_uid, pwd.pw_gid, user.to_string()));
    }
    match user.parse::<libc::uid_t>() {
        // A number with no passwd entry: its own group number too, as `chown 1234` does.
        Ok(uid) => Ok((uid, uid, user.to_string())),
        Err(_) => bail!("--user {user}: no such user"),
    }
}

/// A group name or number: its gid.
fn lookup_group(group: &str) -> anyhow::Result<libc::gid_t> {
    let name = CString::new(group).map_err(|_| anyhow!("--group {group:?}: not a group name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero group is a valid value to be overwritten (pointers null).
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as for getpwnam_r in `lookup_user`.
    let rc = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() {
        return Ok(grp.gr_gid);
    }
    group
        .parse::<libc::gid_t>()
        .map_err(|_| anyhow!("--group {group}: no such group"))
}

/// systemd's notification socket (`Type=notify` services): READY once serving, RELOADING
/// during a SIGHUP reload, STOPPING on the way out. Nothing when `NOTIFY_SOCKET` is unset.
pub struct Notifier {
    socket: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
}

impl Notifier {
    /// Takes `NOTIFY_SOCKET` (and removes it, so workers and the application's children do
    /// not notify in our name). Call before any thread starts.
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { socket: None };
        };
        std::env::remove_var("NOTIFY_SOCKET");
        let socket = notify_address(&path).and_then(|addr| Ok((UnixDatagram::unbound()?, addr)));
        match socket {
            Ok(socket) => Notifier {
                socket: Some(socket),
            },
            Err(err) => {
                log_warn!(
                    "NOTIFY_SOCKET={}: {err}; systemd will not hear from Spindle",
                    path.to_string_lossy()
                );
                Notifier { socket: None }
            }
        }
    }

    pub fn ready(&self) {
        self.send(&format!("READY=1\nMAINPID={}", std::process::id()));
    }

    pub fn reloading(&self) {
        // systemd (Type=notify-reload) wants the monotonic time of the reload with it.
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, exclusively borrowed timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1_000;
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket {
            if let Err(err) = socket.send_to_addr(message.as_bytes(), addr) {
                log_warn!("cannot notify systemd: {err}");
            }
        }
    }
}

/// `NOTIFY_SOCKET`: a path, or `@name` for the abstract namespace.
fn notify_address(path: &std::ffi::OsStr) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(path),
    }
}

/// `--umask` and `--name`, applied to this process (a supervisor's workers inherit the
/// mask and take their own name).
pub fn process_settings(config: &Config) {
    if let Some(mask) = config.umask {
        // SAFETY: `umask` only sets this process's file mode creation mask.
        unsafe { libc::umask(mask as libc::mode_t) };
    }
    if let Some(name) = &config.name {
        let name = match &config.worker {
            Some(spec) => format!("{name}:w{}", spec.slot),
            None => name.clone(),
        };
        // The kernel keeps 15 bytes of a thread's name; the main thread's is the process's
        // in ps and top.
        let mut bytes: Vec<u8> = name.into_bytes().into_iter().filter(|&b| b != 0).collect();
        bytes.truncate(15);
        if let Ok(name) = CString::new(bytes) {
            // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes,
            // alive for the call.
            unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr(), 0, 0, 0) };
        }
    }
}
