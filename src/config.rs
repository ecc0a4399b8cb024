//! The command line, validated once into an immutable [`Config`]. Nothing here runs at
//! request time; the hot path only reads the values computed here.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::http::{ForwardedRules, Limits, TrustedAddrs};
use crate::log::access::{AccessFormat, GUNICORN_DEFAULT};
use crate::log::{ErrorLogFormat, LogLevel};

/// Which monoio driver the I/O threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverChoice {
    /// The measured default: io_uring where the kernel allows it, else epoll (a thread
    /// whose own ring is refused runs epoll). With its rings set up `COOP_TASKRUN`
    /// io_uring led epoll in most scenarios of the lab and was level in the rest, one
    /// connection 0.98x (ARCHITECTURE.md §8; README.md, "Performance").
    Auto,
    /// io_uring, or exit with an error when it is unavailable.
    #[value(name = "io-uring", alias = "io_uring", alias = "iouring")]
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// The wire protocol every `--bind` of the process speaks (`--protocol`, gunicorn's flag).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 (and 1.0), from clients or from nginx's `proxy_pass`.
    Http,
    /// uwsgi, from nginx's `uwsgi_pass`.
    Uwsgi,
    /// FastCGI (responder), from nginx's `fastcgi_pass`.
    Fastcgi,
    /// SCGI, from nginx's `scgi_pass`.
    Scgi,
}

impl Protocol {
    /// The scheme the log shows a TCP listener with (`listening on uwsgi://...`).
    pub fn scheme(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Uwsgi => "uwsgi",
            Protocol::Fastcgi => "fastcgi",
            Protocol::Scgi => "scgi",
        }
    }
}

/// How Python threads map to interpreters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InterpreterChoice {
    /// Sub-interpreters when the app imports cleanly in one (Python 3.12+), else main.
    Auto,
    /// Each Python thread owns a sub-interpreter with its own GIL (PEP 684; Python 3.12+).
    Sub,
    /// All Python threads share the main interpreter and its GIL.
    Main,
}

/// `--max-response-buffer`'s default, in MiB: the whole windows (1 MiB each) of 32 slow
/// clients, or a 64 KiB piece each of 500, held per worker; with what every connection
/// costs beside it, 300 clients that read nothing of 16 MiB streams stay near +100 MiB
/// (ARCHITECTURE.md §4, "Bounded everything"). Clients that read never come near it.
pub const DEFAULT_MAX_RESPONSE_BUFFER_MIB: u32 = 32;

#[derive(Parser, Debug)]
#[command(
    name = "spindle",
    about = "Spindle: a fast, strict WSGI server (PEP 3333) for Python web apps",
    long_about = None,
    disable_version_flag = true,
    // A later flag overrides an earlier one (wrapper scripts can append their own).
    args_override_self = true
)]
struct Args {
    /// The WSGI application, as MODULE:NAME or MODULE:FACTORY(ARGS). Without it, a bundled
    /// demo page is served.
    app: Option<String>,

    /// A config file of Python like gunicorn.conf.py (its settings under gunicorn's names
    /// or Spindle's, `workers = 4`), read before SPINDLE_CMD_ARGS and the command line,
    /// which override it [default: ./spindle.conf.py when there is one]
    #[arg(short = 'c', long, value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print every setting with its value and where it came from (a config file,
    /// SPINDLE_CMD_ARGS, the command line, the environment or the default), then exit.
    #[arg(long)]
    print_config: bool,

    /// Check the settings and exit: 0 when they are valid, 2 with the reason when not.
    #[arg(long)]
    check_config: bool,

    /// The application when the command line names none (a config file's `wsgi_app`).
    #[arg(long, value_name = "APP", hide = true)]
    wsgi_app: Option<String>,

    /// Where to listen, repeatable: HOST:PORT or [IPv6]:PORT (port 0 picks a free one),
    /// unix:PATH (a UNIX socket, made here), fd://N (a listening socket this process was
    /// given as descriptor N). Under systemd socket activation (LISTEN_FDS) the sockets
    /// systemd passed are used instead [default: 0.0.0.0:$PORT when PORT is set, as
    /// gunicorn does, else 127.0.0.1:8000]
    #[arg(short = 'b', long, value_name = "ADDRESS")]
    bind: Vec<String>,

    /// Permissions of the UNIX sockets --bind makes, in octal (660: the owner and its group,
    /// say nginx's) [default: as the umask leaves them]
    #[arg(long, value_name = "MODE", value_parser = parse_mode)]
    unix_socket_mode: Option<u32>,

    /// Write the supervisor's (or the single process's) PID to this file, removed at exit.
    #[arg(short = 'p', long = "pid", value_name = "FILE")]
    pid_file: Option<PathBuf>,

    /// Run as this user (name or number) once the sockets are bound; needs root.
    #[arg(short = 'u', long, value_name = "USER")]
    user: Option<String>,

    /// Run as this group (name or number) once the sockets are bound [default: the user's]
    #[arg(short = 'g', long, value_name = "GROUP")]
    group: Option<String>,

    /// The file mode creation mask, in octal (0o22, 022) or decimal as gunicorn takes it:
    /// what the files and UNIX sockets Spindle and the application make leave out.
    #[arg(long, value_name = "MASK", value_parser = parse_umask)]
    umask: Option<u32>,

    /// A name for the processes (their name in ps and top: `NAME` for the supervisor,
    /// `NAME:w<slot>` for each worker), gunicorn's proc_name.
    #[arg(short = 'n', long, value_name = "NAME")]
    name: Option<String>,

    /// Set an environment variable for the application, repeatable: KEY=VALUE.
    #[arg(short = 'e', long, value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Worker processes, each a whole Spindle (I/O threads, Python threads, its own
    /// interpreters) under a supervisor that replaces one that dies, hangs or has served
    /// --max-requests, and reloads on SIGHUP.
    #[arg(
        short = 'w',
        long,
        value_name = "N",
        env = "WEB_CONCURRENCY",
        default_value_t = 1
    )]
    workers: usize,

    /// Run everything in this one process, without a supervisor: for containers whose
    /// orchestrator restarts the process, and for benchmarks. SIGHUP does not reload then.
    #[arg(long)]
    single_process: bool,

    /// Seconds the application may keep a request without giving control back (returning,
    /// or yielding the next piece of its response): then the Python stack of where it is is
    /// logged and its client gets a 504 (mid-response: a closed connection); a worker whose
    /// every Python thread is stuck so is replaced. 0: never.
    #[arg(short = 't', long, value_name = "SECONDS", default_value_t = 30.0)]
    timeout: f64,

    /// A worker that served this many requests is replaced (the new one first); 0: never.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_requests: u64,

    /// Up to this many more requests, drawn per worker, so workers do not all restart at once.
    #[arg(long, value_name = "N", default_value_t = 0)]
    max_requests_jitter: u64,

    /// A worker whose resident memory grows past this many MiB is replaced (the new one
    /// first); 0: never.
    #[arg(long, value_name = "MIB", default_value_t = 0)]
    max_worker_memory: u64,

    /// Import the application in the supervisor before the workers start, so a broken
    /// import fails once, early (each worker still imports it for its own interpreters).
    #[arg(long)]
    preload: bool,

    /// For development: reload (as on SIGHUP) when a Python file under the working
    /// directory (or --chdir) or a --pythonpath changes; a syntax error keeps the old code.
    #[arg(long)]
    reload: bool,

    /// Internal: this process is a worker of a supervisor (slot, generation, descriptors).
    #[arg(long, value_name = "SPEC", hide = true)]
    internal_worker: Option<String>,

    /// Number of I/O threads, each with its own runtime, listener and core [default: one per core]
    #[arg(long, value_name = "N")]
    io_threads: Option<usize>,

    /// Python threads in this process, spread over its interpreters: exactly N, as
    /// gunicorn's --threads. Threads buy waiting: while one waits on a database the others
    /// of its interpreter run. Without it, each interpreter starts with one thread and grows
    /// while requests wait and its GIL is free, up to --max-threads; idle ones leave after
    /// --thread-idle-timeout.
    #[arg(long, visible_alias = "py-threads", value_name = "N")]
    threads: Option<usize>,

    /// Without --threads: the most Python threads the pool grows to, all interpreters
    /// together [default: 128 per interpreter]
    #[arg(long, value_name = "N")]
    max_threads: Option<usize>,

    /// Seconds a Python thread beyond its interpreter's first waits for a request before it
    /// leaves (the pool grows again on demand).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    thread_idle_timeout: f64,

    /// Own-GIL sub-interpreters the Python threads are spread over. Interpreters buy
    /// parallel Python, one core each; each imports the application [default: one per core]
    #[arg(long, value_name = "N")]
    sub_interpreters: Option<usize>,

    /// Interpreters: `sub` runs the threads in own-GIL sub-interpreters (Python 3.12+), so
    /// Python runs on every core; `main` runs them all on the main interpreter, sharing its
    /// GIL; `auto` picks `sub` when the app allows it.
    #[arg(long, value_enum, env = "SPINDLE_INTERPRETERS", default_value = "auto")]
    interpreters: InterpreterChoice,

    /// Change to this directory before importing the application.
    #[arg(long, value_name = "DIR")]
    chdir: Option<PathBuf>,

    /// Prepend this directory to sys.path; repeatable, or several separated by commas.
    #[arg(long, value_name = "DIR")]
    pythonpath: Vec<PathBuf>,

    /// Gone with the embedding binary: Spindle runs in the Python that starts it. Kept
    /// hidden so an old command line gets the fix, not "unexpected argument".
    #[arg(long, value_name = "DIR", hide = true)]
    venv: Option<PathBuf>,

    /// Minimum level of the error log (gunicorn's names too: warning, critical).
    #[arg(long, value_enum, ignore_case = true, default_value = "info")]
    log_level: LogLevel,

    /// Where the error log (the server's own messages) goes: `-` is stderr; a file
    /// becomes the process's stderr, opened anew on SIGUSR1.
    #[arg(
        long,
        visible_alias = "log-file",
        value_name = "FILE",
        default_value = "-"
    )]
    error_logfile: String,

    /// The error log's lines: text (gunicorn's `[time] [pid] [LEVEL] message`) or json.
    #[arg(long, value_enum, ignore_case = true, default_value = "text")]
    error_logformat: ErrorLogFormat,

    /// With --error-logfile FILE: the application's stdout and stderr go there too.
    #[arg(long)]
    capture_output: bool,

    /// Write one line per request to this file, `-` for stdout; opened anew on SIGUSR1.
    /// Lines are buffered per thread and written at least every half second.
    #[arg(long, value_name = "FILE")]
    access_logfile: Option<String>,

    /// The access log's format: gunicorn's atoms (%(h)s client, %(t)s time, %(r)s
    /// request line, %(s)s status, %(b)s bytes, %(D)s microseconds, %({header}i)s,
    /// %({header}o)s, %({VAR}e)s ...), gunicorn's default when not given; or `json`: one
    /// JSON object per line [default: %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"]
    #[arg(long, value_name = "FORMAT")]
    access_logformat: Option<String>,

    /// The access log on stdout (--access-logfile -).
    #[arg(long)]
    access_log: bool,

    /// Seconds an idle keep-alive connection is kept open; 0 disables keep-alive.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    keep_alive: f64,

    /// Length of each listener's accept queue.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    backlog: u32,

    /// I/O driver.
    #[arg(long, value_enum, env = "SPINDLE_DRIVER", default_value = "auto")]
    driver: DriverChoice,

    /// Run the application on the I/O threads themselves, as bjoern does, for requests
    /// whose body is all read: no hand-off to a Python thread. For applications that never
    /// wait (no database, no outgoing request, no sleep): while one request waits, every
    /// connection of its I/O thread waits with it, and `--timeout` cannot cut it. Requests
    /// with a body still on the socket go to the Python threads as ever.
    #[arg(long, env = "SPINDLE_INLINE", value_parser = clap::builder::BoolishValueParser::new())]
    inline: bool,

    /// Longest request line in bytes (longer: 414).
    #[arg(long, value_name = "BYTES", default_value_t = 4094)]
    limit_request_line: usize,

    /// Most header fields in a request (more: 431).
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit_request_fields: usize,

    /// Longest header field line in bytes (longer: 431).
    #[arg(
        long,
        alias = "limit-request-field_size",
        value_name = "BYTES",
        default_value_t = 8190
    )]
    limit_request_field_size: usize,

    /// Largest request head (request line and all fields) in bytes (larger: 431).
    #[arg(long, value_name = "BYTES", default_value_t = 32768)]
    limit_request_head: usize,

    /// Largest request body in bytes (larger: 413); 0 means no limit.
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    limit_request_body: u64,

    /// Seconds a client has to send a whole request head (then 408 and close).
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0)]
    header_timeout: f64,

    /// Seconds a client may read nothing of a response before the connection is closed
    /// (and the application's iteration stopped), like nginx's send_timeout.
    #[arg(long, value_name = "SECONDS", default_value_t = 60.0)]
    write_timeout: f64,

    /// Seconds in-flight requests get to finish after SIGTERM (and a worker being replaced)
    /// before Spindle stops them anyway.
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    graceful_timeout: f64,

    /// SCRIPT_NAME: the URL prefix the application is mounted under.
    #[arg(long, value_name = "PATH", default_value = "")]
    root_path: String,

    /// Most requests waiting for a Python thread; when full, I/O threads stop reading.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    queue_size: usize,

    /// Seconds a request may wait for a Python thread (in the queue, or held back by a full
    /// one) before the server answers it itself: 503 with `Retry-After: 1`, and the
    /// application never sees it. Requests of clients that left while queued are dropped
    /// too. 0: wait for ever.
    #[arg(long, value_name = "SECONDS", default_value_t = 5.0)]
    max_queue_wait: f64,

    /// Most client connections a worker holds open (gunicorn's name): past it, a new
    /// connection is answered 503 with `Retry-After: 1` and closed, unread [default: the
    /// open-files limit (RLIMIT_NOFILE) less a reserve of a quarter, 64 to 1024]
    #[arg(long, value_name = "N")]
    worker_connections: Option<usize>,
    /// MiB of streamed response bytes a worker may hold for clients that have not read
    /// them yet, all connections together; past it no more is pulled from the
    /// applications' iterators until clients read (each response may still have one piece
    /// queued).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_MAX_RESPONSE_BUFFER_MIB,
          value_parser = clap::value_parser!(u32).range(1..=1 << 20))]
    max_response_buffer: u32,

    /// Expect the PROXY protocol (HAProxy's, v1 text or v2 binary) on every connection: its
    /// header gives the client's address (REMOTE_ADDR, REMOTE_PORT, the access log). A
    /// connection without a valid header, or from a peer outside --proxy-allow-from, is
    /// closed unanswered.
    #[arg(long)]
    proxy_protocol: bool,

    /// With --proxy-protocol: the peers whose PROXY headers are believed, a comma list of IPs
    /// and networks (10.0.0.0/8), `*` for any; others are closed at once. UNIX-socket peers
    /// are always allowed.
    #[arg(long, value_name = "IPS", default_value = "127.0.0.1,::1")]
    proxy_allow_from: String,

    /// The peers whose X-Forwarded-For/-Proto and Forwarded fields are believed (REMOTE_ADDR,
    /// wsgi.url_scheme), a comma list of IPs and networks, `*` for any; UNIX-socket peers are
    /// trusted, as gunicorn does. From any other peer the fields change nothing.
    #[arg(
        long,
        value_name = "IPS",
        env = "FORWARDED_ALLOW_IPS",
        default_value = "127.0.0.1,::1"
    )]
    forwarded_allow_ips: String,

    /// Trusted proxies in front, each appending one address to X-Forwarded-For (and one
    /// element to Forwarded): the client is the N-th address from the right.
    #[arg(long, value_name = "N", default_value_t = 1)]
    forwarded_hops: usize,

    /// From a trusted peer: a field that means https when it holds this value (any other
    /// value: http), repeatable, replacing gunicorn's defaults; an empty one disables them all
    /// (gunicorn's secure_scheme_headers).
    #[arg(
        long,
        value_name = "NAME=VALUE",
        default_values = ["X-FORWARDED-PROTOCOL=ssl", "X-FORWARDED-PROTO=https", "X-FORWARDED-SSL=on"]
    )]
    secure_scheme_header: Vec<String>,

    /// From a trusted peer: X-Forwarded-Host (else Forwarded: host=) becomes HTTP_HOST and
    /// SERVER_NAME/SERVER_PORT, as werkzeug's ProxyFix x_host.
    #[arg(long)]
    forwarded_host: bool,

    /// The protocol every --bind speaks: http, or what nginx speaks to application servers
    /// (uwsgi_pass, fastcgi_pass, scgi_pass).
    #[arg(long, value_enum, default_value = "http")]
    protocol: Protocol,

    /// Who may connect with --protocol uwsgi, fastcgi or scgi: addresses and ADDR/BITS
    /// networks, comma-separated, or * for all. A UNIX-socket peer always may.
    #[arg(long, value_name = "ADDRS", default_value = "127.0.0.1,::1")]
    uwsgi_allow_ips: String,

    /// Print Spindle's version and the Python it embeds, then exit.
    #[arg(long)]
    version: bool,

    /// Serve Prometheus metrics at http://HOST:PORT/metrics (requests by method and status,
    /// durations, in-flight, queue, connections, bytes, workers), gathered from every worker
    /// process by the supervisor. Without it nothing is counted.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_bind: Option<String>,
}

/// What a supervisor tells a worker it spawns (the hidden `--internal-worker` flag):
/// `SLOT:GENERATION:CONTROL_FD:LISTENERS[:METRICS_FD]`, where LISTENERS lists each I/O
/// thread's descriptors, `,` between the addresses of a thread and `;` between threads, and
/// METRICS_FD is the worker's metrics block (with `--metrics-bind`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerSpec {
    pub slot: u32,
    pub generation: u64,
    pub control_fd: i32,
    pub listener_fds: Vec<Vec<i32>>,
    /// The shared block the worker counts in (`--metrics-bind`).
    pub metrics_fd: Option<i32>,
}

impl WorkerSpec {
    pub fn encode(&self) -> String {
        let listeners: Vec<String> = self
            .listener_fds
            .iter()
            .map(|fds| {
                fds.iter()
                    .map(|fd| fd.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let metrics = self
            .metrics_fd
            .map(|fd| format!(":{fd}"))
            .unwrap_or_default();
        format!(
            "{}:{}:{}:{}{metrics}",
            self.slot,
            self.generation,
            self.control_fd,
            listeners.join(";")
        )
    }

    fn decode(spec: &str) -> Option<WorkerSpec> {
        let mut parts = spec.splitn(5, ':');
        let slot = parts.next()?.parse().ok()?;
        let generation = parts.next()?.parse().ok()?;
        let control_fd = parts.next()?.parse().ok()?;
        let listener_fds = parts
            .next()?
            .split(';')
            .map(|thread| thread.split(',').map(|fd| fd.parse().ok()).collect())
            .collect::<Option<Vec<Vec<i32>>>>()?;
        let metrics_fd = match parts.next() {
            Some(fd) => Some(fd.parse().ok()?),
            None => None,
        };
        Some(WorkerSpec {
            slot,
            generation,
            control_fd,
            listener_fds,
            metrics_fd,
        })
    }
}

/// How many Python threads run the application, in all interpreters together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Exactly this many (`--threads`).
    Fixed(usize),
    /// One per interpreter to start with, more while requests wait, up to `max`.
    Grow { max: usize },
}

impl Threads {
    /// (min, max) threads for each of `interpreters` interpreters, the first ones taking
    /// any remainder of `Fixed`.
    pub fn per_interpreter(self, interpreters: usize, index: usize) -> (usize, usize) {
        let n = interpreters.max(1);
        match self {
            Threads::Fixed(total) => {
                let each = total / n + usize::from(index < total % n);
                (each.max(1), each.max(1))
            }
            Threads::Grow { max } => (1, max.div_ceil(n).max(1)),
        }
    }
}

/// Threads each interpreter may grow to by default: enough for an application that waits
/// 5 ms per request to keep a core busy (ARCHITECTURE.md §6, "Threads").
pub const DEFAULT_MAX_THREADS_PER_INTERPRETER: usize = 128;

/// What a command line asks for.
pub enum Command {
    Serve(Box<Config>),
    /// `--version`: print Spindle's and Python's versions.
    Version,
    /// Help was printed, or an error about the command line: exit with this code.
    Exit(i32),
}

/// One `--bind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bind {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// A listening socket this process inherited as this descriptor.
    Fd(i32),
}

impl Bind {
    fn parse(bind: &str) -> Result<Bind, String> {
        if let Some(path) = bind.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(format!("--bind {bind}: no path after unix:"));
            }
            return Ok(Bind::Unix(PathBuf::from(path)));
        }
        if let Some(fd) = bind.strip_prefix("fd://") {
            return match fd.parse::<i32>() {
                Ok(fd) if fd >= 0 => Ok(Bind::Fd(fd)),
                _ => Err(format!(
                    "--bind {bind}: expected fd://N, N a descriptor number"
                )),
            };
        }
        let addrs: Vec<SocketAddr> = bind
            .to_socket_addrs()
            .map_err(|e| {
                format!("--bind {bind}: {e} (expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N)")
            })?
            .collect();
        addrs
            .into_iter()
            .next()
            .map(Bind::Tcp)
            .ok_or_else(|| format!("--bind {bind}: the name resolves to no address"))
    }
}

fn parse_metrics_bind(bind: &str) -> Result<SocketAddr, String> {
    bind.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("--metrics-bind {bind}: expected HOST:PORT, such as 127.0.0.1:9100"))
}

fn parse_umask(mask: &str) -> Result<u32, String> {
    let value = if let Some(octal) = mask.strip_prefix("0o").or_else(|| mask.strip_prefix("0O")) {
        u32::from_str_radix(octal, 8).ok()
    } else if let Some(hex) = mask.strip_prefix("0x").or_else(|| mask.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if mask.len() > 1 && mask.starts_with('0') {
        u32::from_str_radix(mask, 8).ok()
    } else {
        mask.parse().ok()
    };
    match value {
        Some(mask) if mask <= 0o777 => Ok(mask),
        _ => Err(format!("{mask}: expected a mask such as 0o22 or 022")),
    }
}

fn parse_env(pair: &str) -> Result<(String, String), String> {
    match pair.split_once('=') {
        Some((key, value)) if !key.is_empty() && !key.contains('\0') => {
            Ok((key.to_owned(), value.to_owned()))
        }
        _ => Err(format!("{pair}: expected KEY=VALUE")),
    }
}

fn parse_mode(mode: &str) -> Result<u32, String> {
    match u32::from_str_radix(mode.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{mode}: expected an octal mode such as 660")),
    }
}

/// `--access-logfile` and `--access-logformat`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// `-` for stdout, or a file.
    pub target: String,
    pub format: AccessFormat,
}

/// The validated configuration: built once at start-up, then only read.
#[derive(Debug, Clone)]
pub struct Config {
    pub app: Option<String>,
    pub binds: Vec<Bind>,
    pub unix_socket_mode: Option<u32>,
    pub pid_file: Option<PathBuf>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub io_threads: usize,
    /// How many Python threads, and whether the pool grows.
    pub threads: Threads,
    /// Sub-interpreters, when they are used (`--sub-interpreters`).
    pub sub_interpreters: usize,
    /// Worker processes (`--workers`), each a whole Spindle.
    pub workers: usize,
    /// No supervisor: this process serves.
    pub single_process: bool,
    /// `--timeout`: how long a request may run in the application; `None`: forever.
    pub timeout: Option<Duration>,
    /// `--max-requests` (0: never) and its jitter.
    pub max_requests: Option<u64>,
    pub max_requests_jitter: u64,
    /// `--max-worker-memory`, in bytes.
    pub max_worker_memory: Option<u64>,
    pub preload: bool,
    pub reload: bool,
    /// Set when this process is a supervisor's worker.
    pub worker: Option<WorkerSpec>,
    /// How long a thread beyond its interpreter's minimum may idle before it leaves.
    pub thread_idle_timeout: Duration,
    pub interpreters: InterpreterChoice,
    pub chdir: Option<PathBuf>,
    pub pythonpath: Vec<PathBuf>,
    pub log_level: LogLevel,
    /// `--error-logfile`: `None` is stderr as it is.
    pub error_log: Option<PathBuf>,
    pub error_log_format: ErrorLogFormat,
    pub capture_output: bool,
    /// `--access-logfile` (or `--access-log`): where and how; `None`: no access log.
    pub access_log: Option<AccessLogConfig>,
    pub umask: Option<u32>,
    /// `--name`: what the processes are called.
    pub name: Option<String>,
    /// `--env`: set in the environment before anything is imported.
    pub env: Vec<(String, String)>,
    /// What was asked that Spindle does without (gunicorn-only settings): one log line each.
    pub warnings: Vec<String>,
    /// `None`: keep-alive disabled.
    pub keep_alive: Option<Duration>,
    pub backlog: u32,
    pub driver: DriverChoice,
    /// `--inline`: I/O threads call the application themselves (ARCHITECTURE.md §4, "Inline").
    pub inline: bool,
    pub limits: Limits,
    pub max_body: Option<u64>,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub graceful_timeout: Duration,
    pub root_path: String,
    pub queue_size: usize,
    /// `--max-queue-wait`: how long a request may wait for a Python thread before it is
    /// answered 503; `None`: for ever.
    pub max_queue_wait: Option<Duration>,
    /// `--worker-connections`: the most client connections this process holds open;
    /// `None`: derived from the open-files limit when the I/O threads start.
    pub worker_connections: Option<usize>,
    /// `--max-response-buffer`, in bytes: the worker's budget of response bytes in flight.
    pub max_response_buffer: usize,
    /// `--protocol`: what every listener speaks.
    pub protocol: Protocol,
    /// `--uwsgi-allow-ips`: who may connect when `protocol` is not HTTP.
    pub gateway_allow: TrustedAddrs,
    /// `--metrics-bind`: where `/metrics` is served; `None`: nothing is counted.
    pub metrics_bind: Option<SocketAddr>,
    /// `--proxy-protocol`: every connection starts with a PROXY header.
    pub proxy_protocol: bool,
    /// `--proxy-allow-from`: whose PROXY headers are believed.
    pub proxy_allow: TrustedAddrs,
    /// `--forwarded-allow-ips`: whose forwarding fields are believed.
    pub forwarded_allow: TrustedAddrs,
    /// What is read from a trusted peer's forwarding fields.
    pub forwarded: ForwardedRules,
}

impl Config {
    /// Parses a command line (`args[0]` is the program name), which `spindle/__init__.py`
    /// may have split into layers of settings (a config file, SPINDLE_CMD_ARGS, the
    /// command line: see [`LAYER_MARK`]). What clap or the validation had to say about a
    /// bad one is printed here, in one line, so the caller only exits.
    pub fn parse<I, T>(args: I) -> Command
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let (program, layers) = split_layers(args.into_iter().map(Into::into).collect());
        let parsed = match parse_layers(&program, &layers) {
            Ok(parsed) => parsed,
            Err(Refused::Shown(code)) => return Command::Exit(code),
            Err(Refused::Error(msg)) => {
                eprintln!("error: {msg}");
                return Command::Exit(2);
            }
        };
        if parsed.args.version {
            return Command::Version;
        }
        if parsed.args.print_config {
            print!("{}", describe(&parsed, &layers));
            return Command::Exit(0);
        }
        let check = parsed.args.check_config;
        match Config::validate(parsed.args, parsed.warnings) {
            Ok(config) if check => {
                for warning in &config.warnings {
                    eprintln!("warning: {warning}");
                }
                eprintln!("the configuration is valid");
                Command::Exit(0)
            }
            Ok(config) => Command::Serve(Box::new(config)),
            Err(msg) => {
                eprintln!("error: {msg}");
                Command::Exit(2)
            }
        }
    }

    /// The command line a worker runs with: every layer's settings in order (later ones
    /// override earlier ones), so the worker reads no config file again.
    pub fn flatten<I, T>(args: I) -> Vec<std::ffi::OsString>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let (program, layers) = split_layers(args.into_iter().map(Into::into).collect());
        std::iter::once(program)
            .chain(layers.into_iter().flat_map(|layer| layer.args))
            .collect()
    }

    /// Parses an explicit argument list (tests, benches).
    pub fn from_arg_list<I, T>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let (program, layers) = split_layers(args.into_iter().map(Into::into).collect());
        match parse_layers(&program, &layers) {
            Ok(parsed) => Config::validate(parsed.args, parsed.warnings),
            Err(Refused::Shown(code)) => Err(format!("exit {code}")),
            Err(Refused::Error(msg)) => Err(msg),
        }
    }

    fn validate(args: Args, mut warnings: Vec<String>) -> Result<Config, String> {
        if let Some(venv) = &args.venv {
            return Err(format!(
                "--venv is gone: Spindle runs in the Python that starts it, so run the spindle installed in that environment ({}/bin/spindle), or `python -m spindle` with its python",
                venv.display()
            ));
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let binds = if args.bind.is_empty() {
            vec![default_bind()]
        } else {
            args.bind.clone()
        };
        let binds = binds
            .iter()
            .map(|bind| Bind::parse(bind))
            .collect::<Result<Vec<_>, _>>()?;
        let app = args.app.clone().or(args.wsgi_app.clone());
        let pythonpath = args
            .pythonpath
            .iter()
            .flat_map(|dirs| {
                dirs.to_string_lossy()
                    .split(',')
                    .filter(|dir| !dir.is_empty())
                    .map(PathBuf::from)
                    .collect::<Vec<_>>()
            })
            .collect();
        let access_target = args
            .access_logfile
            .clone()
            .or_else(|| args.access_log.then(|| "-".to_owned()));
        let access_log = match access_target {
            Some(target) => Some(AccessLogConfig {
                target,
                format: AccessFormat::parse(
                    args.access_logformat.as_deref().unwrap_or(GUNICORN_DEFAULT),
                )
                .map_err(|e| format!("--access-logformat: {e}"))?,
            }),
            None => {
                if args.access_logformat.is_some() {
                    warnings.push(
                        "--access-logformat has no effect without --access-logfile (- for stdout)"
                            .into(),
                    );
                }
                None
            }
        };
        let error_log = (args.error_logfile != "-").then(|| PathBuf::from(&args.error_logfile));
        if args.capture_output && error_log.is_none() {
            warnings.push(
                "--capture-output has no effect without --error-logfile FILE (the output goes to stdout and stderr already)"
                    .into(),
            );
        }
        if args.name.as_deref().is_some_and(str::is_empty) {
            return Err("--name must not be empty".into());
        }
        let positive = |name: &str, value: Option<usize>| -> Result<usize, String> {
            match value {
                Some(0) => Err(format!("--{name} must be at least 1")),
                Some(n) => Ok(n),
                None => Ok(cores),
            }
        };
        let seconds = |name: &str, value: f64| -> Result<Duration, String> {
            if value.is_finite() && value >= 0.0 {
                Ok(Duration::from_secs_f64(value))
            } else {
                Err(format!("--{name} must be a number of seconds >= 0"))
            }
        };
        if let Some(app) = &app {
            if !app.contains(':') && app.contains('(') {
                return Err(format!(
                    "{app}: expected MODULE:APP, for example myproject.wsgi:application"
                ));
            }
        }
        if !args.root_path.is_empty()
            && (!args.root_path.starts_with('/') || args.root_path.ends_with('/'))
        {
            return Err("--root-path must start with '/' and not end with '/' (e.g. /api)".into());
        }
        if args.limit_request_fields == 0
            || args.limit_request_line < 16
            || args.limit_request_head < 64
        {
            return Err("request limits are too small to read any request".into());
        }
        let keep_alive = seconds("keep-alive", args.keep_alive)?;
        let mut sub_interpreters = positive("sub-interpreters", args.sub_interpreters)?;
        let threads = match (args.threads, args.max_threads) {
            (Some(0), _) => return Err("--threads must be at least 1".into()),
            (Some(n), _) => {
                // Each interpreter runs at least one thread.
                sub_interpreters = sub_interpreters.min(n);
                Threads::Fixed(n)
            }
            (None, Some(0)) => return Err("--max-threads must be at least 1".into()),
            (None, Some(max)) => {
                sub_interpreters = sub_interpreters.min(max);
                Threads::Grow { max }
            }
            (None, None) => Threads::Grow {
                max: DEFAULT_MAX_THREADS_PER_INTERPRETER * sub_interpreters,
            },
        };
        let worker = match &args.internal_worker {
            Some(spec) => Some(
                WorkerSpec::decode(spec)
                    .ok_or_else(|| format!("--internal-worker {spec}: not a worker spec"))?,
            ),
            None => None,
        };
        if args.workers == 0 {
            return Err("--workers must be at least 1 (WEB_CONCURRENCY too)".into());
        }
        if args.single_process && args.workers > 1 {
            return Err(format!(
                "--single-process runs one process, and --workers asks for {}: drop one of them",
                args.workers
            ));
        }
        if args.single_process
            && (args.max_requests > 0 || args.max_worker_memory > 0 || args.reload)
        {
            return Err("--max-requests, --max-worker-memory and --reload replace worker processes: they need the supervisor (drop --single-process)".into());
        }
        let timeout = seconds("timeout", args.timeout)?;
        let proxy_allow = TrustedAddrs::parse(&args.proxy_allow_from)
            .map_err(|e| format!("--proxy-allow-from {e}"))?;
        let forwarded_allow = TrustedAddrs::parse(&args.forwarded_allow_ips)
            .map_err(|e| format!("--forwarded-allow-ips (or FORWARDED_ALLOW_IPS) {e}"))?;
        if args.forwarded_hops == 0 {
            return Err("--forwarded-hops must be at least 1 (to ignore the forwarding fields, --forwarded-allow-ips '')".into());
        }
        let mut scheme_headers = Vec::new();
        for pair in args.secure_scheme_header.iter().filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((name, value))
                    if !name.trim().is_empty()
                        && name.trim().bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
                {
                    scheme_headers.push((name.trim().to_owned(), value.trim().to_owned()));
                }
                _ => {
                    return Err(format!(
                        "--secure-scheme-header {pair}: expected NAME=VALUE, such as X-Forwarded-Proto=https"
                    ))
                }
            }
        }
        let metrics_bind = args
            .metrics_bind
            .as_deref()
            .map(parse_metrics_bind)
            .transpose()?;
        Ok(Config {
            app,
            binds,
            unix_socket_mode: args.unix_socket_mode,
            pid_file: args.pid_file,
            user: args.user,
            group: args.group,
            io_threads: positive("io-threads", args.io_threads)?,
            threads,
            sub_interpreters,
            workers: args.workers,
            single_process: args.single_process,
            timeout: (!timeout.is_zero()).then_some(timeout),
            max_requests: (args.max_requests > 0).then_some(args.max_requests),
            max_requests_jitter: args.max_requests_jitter,
            max_worker_memory: (args.max_worker_memory > 0)
                .then(|| args.max_worker_memory.saturating_mul(1 << 20)),
            preload: args.preload,
            reload: args.reload,
            worker,
            thread_idle_timeout: seconds("thread-idle-timeout", args.thread_idle_timeout)?
                .max(Duration::from_millis(10)),
            interpreters: args.interpreters,
            chdir: args.chdir,
            pythonpath,
            log_level: args.log_level,
            error_log,
            error_log_format: args.error_logformat,
            capture_output: args.capture_output,
            access_log,
            umask: args.umask,
            name: args.name,
            env: args.env,
            warnings,
            keep_alive: (!keep_alive.is_zero()).then_some(keep_alive),
            backlog: args.backlog,
            driver: args.driver,
            inline: args.inline,
            limits: Limits {
                max_request_line: args.limit_request_line,
                max_headers: args.limit_request_fields,
                max_field_size: args.limit_request_field_size,
                max_head_size: args.limit_request_head,
            },
            max_body: (args.limit_request_body > 0).then_some(args.limit_request_body),
            header_timeout: seconds("header-timeout", args.header_timeout)?
                .max(Duration::from_millis(10)),
            write_timeout: seconds("write-timeout", args.write_timeout)?
                .max(Duration::from_millis(10)),
            graceful_timeout: seconds("graceful-timeout", args.graceful_timeout)?,
            root_path: args.root_path,
            queue_size: args.queue_size.max(1),
            max_queue_wait: {
                let wait = seconds("max-queue-wait", args.max_queue_wait)?;
                (!wait.is_zero()).then_some(wait.max(Duration::from_millis(10)))
            },
            worker_connections: match args.worker_connections {
                Some(0) => return Err("--worker-connections must be at least 1".into()),
                other => other,
            },
            max_response_buffer: (args.max_response_buffer as usize) << 20,
            protocol: args.protocol,
            gateway_allow: TrustedAddrs::parse(&args.uwsgi_allow_ips)
                .map_err(|e| format!("--uwsgi-allow-ips {e}"))?,
            metrics_bind,
            proxy_protocol: args.proxy_protocol,
            proxy_allow,
            forwarded_allow,
            forwarded: ForwardedRules {
                hops: args.forwarded_hops,
                scheme_headers,
                host: args.forwarded_host,
            },
        })
    }
}

/// `spindle/__init__.py` puts `LAYER_MARK + SOURCE` before each layer of settings it
/// passes (a config file, SPINDLE_CMD_ARGS, the command line), lowest precedence first.
/// No command line can hold it: a C argument never contains a NUL.
pub const LAYER_MARK: &str = "\0spindle-layer:";

/// One source of settings, as command-line arguments.
#[derive(Debug, Clone)]
struct Layer {
    /// Where they came from: `command line`, `SPINDLE_CMD_ARGS`, a config file's path.
    source: String,
    args: Vec<std::ffi::OsString>,
}

fn split_layers(mut args: Vec<std::ffi::OsString>) -> (std::ffi::OsString, Vec<Layer>) {
    let program = if args.is_empty() {
        "spindle".into()
    } else {
        args.remove(0)
    };
    let mut layers: Vec<Layer> = Vec::new();
    for arg in args {
        match arg.to_str().and_then(|a| a.strip_prefix(LAYER_MARK)) {
            Some(source) => layers.push(Layer {
                source: source.to_owned(),
                args: Vec::new(),
            }),
            None => match layers.last_mut() {
                Some(layer) => layer.args.push(arg),
                None => layers.push(Layer {
                    source: "command line".into(),
                    args: vec![arg],
                }),
            },
        }
    }
    (program, layers)
}

/// Why a command line was not taken.
enum Refused {
    /// Help or a clap message was printed: exit with this code.
    Shown(i32),
    /// One line to print after `error: `.
    Error(String),
}

struct Parsed {
    args: Args,
    /// The merged matches, and each layer's own (for `--print-config`).
    merged: ArgMatches,
    layers: Vec<ArgMatches>,
    warnings: Vec<String>,
}

/// gunicorn settings Spindle does without: (long name, short, takes a value, what Spindle
/// does instead). Accepted with one warning line, or refused (`Err`) where going on
/// would serve something else than what was asked.
type Note = Result<&'static str, &'static str>;
const GUNICORN_ONLY: &[(&str, Option<char>, bool, Note)] = &[
    ("worker-class", Some('k'), true, Ok("Spindle has one kind of worker: Rust I/O threads hand requests to Python threads (--threads), as gthread does")),
    ("worker-tmp-dir", None, true, Ok("workers report to the supervisor over a socket, not a heartbeat file")),
    ("no-sendfile", None, false, Ok("Spindle writes file responses itself")),
    ("reuse-port", None, false, Ok("workers share one accept queue (ARCHITECTURE.md §10)")),
    ("statsd-host", None, true, Ok("Spindle serves Prometheus metrics instead (--metrics-bind)")),
    ("statsd-prefix", None, true, Ok("Spindle serves Prometheus metrics instead (--metrics-bind)")),
    ("dogstatsd-tags", None, true, Ok("Spindle serves Prometheus metrics instead (--metrics-bind)")),
    ("log-config", None, true, Ok("Spindle writes its logs itself: --error-logfile, --access-logfile, --error-logformat json")),
    ("log-config-json", None, true, Ok("Spindle writes its logs itself: --error-logfile, --access-logfile, --error-logformat json")),
    ("logger-class", None, true, Ok("Spindle writes its logs itself: --error-logfile, --access-logfile, --error-logformat json")),
    ("log-syslog", None, false, Ok("no syslog: --error-logfile and --access-logfile, or stderr to journald")),
    ("log-syslog-to", None, true, Ok("no syslog: --error-logfile and --access-logfile, or stderr to journald")),
    ("log-syslog-prefix", None, true, Ok("no syslog: --error-logfile and --access-logfile, or stderr to journald")),
    ("log-syslog-facility", None, true, Ok("no syslog: --error-logfile and --access-logfile, or stderr to journald")),
    ("disable-redirect-access-to-syslog", None, false, Ok("no syslog")),
    ("enable-stdio-inheritance", None, false, Ok("the application's stdout and stderr are the server's (see --capture-output)")),
    ("initgroups", None, false, Ok("--user takes the user's primary group only")),
    ("spew", None, false, Ok("no tracing of every executed line")),
    ("reload-engine", None, true, Ok("--reload polls for changes")),
    ("reload-extra-file", None, true, Ok("--reload watches the Python files under the working directory and --pythonpath")),
    ("strip-header-spaces", None, false, Ok("Spindle's HTTP parser is strict: a space before a header's colon is refused with 400")),
    ("permit-unconventional-http-method", None, false, Ok("Spindle's HTTP parser is strict")),
    ("permit-unconventional-http-version", None, false, Ok("Spindle's HTTP parser is strict")),
    ("casefold-http-method", None, false, Ok("Spindle's HTTP parser is strict")),
    ("permit-obsolete-folding", None, false, Ok("Spindle's HTTP parser is strict: folded headers are refused")),
    ("header-map", None, true, Ok("header names with an underscore are refused with 400, so they cannot pose as others")),
    ("tmp-upload-dir", None, true, Ok("request bodies are streamed to the application, not spooled to files")),
    ("daemon", Some('D'), false, Err("Spindle stays in the foreground: run it under systemd, supervisord or a container")),
    ("paste", None, true, Err("with PasteDeploy, run the ini file's server: [server:main] use = egg:spindle")),
    ("certfile", None, true, Err("Spindle does not terminate TLS: put nginx or a load balancer in front")),
    ("keyfile", None, true, Err("Spindle does not terminate TLS: put nginx or a load balancer in front")),
    ("ca-certs", None, true, Err("Spindle does not terminate TLS: put nginx or a load balancer in front")),
    ("ssl-version", None, true, Err("Spindle does not terminate TLS: put nginx or a load balancer in front")),
    ("cert-reqs", None, true, Err("Spindle does not terminate TLS: put nginx or a load balancer in front")),
    ("ciphers", None, true, Err("Spindle does not terminate TLS: put nginx or a load balancer in front")),
    ("do-handshake-on-connect", None, false, Err("Spindle does not terminate TLS: put nginx or a load balancer in front")),
    ("suppress-ragged-eofs", None, false, Err("Spindle does not terminate TLS: put nginx or a load balancer in front")),
];

/// Every setting's long name, as `spindle/_config.py` maps a config file's names onto them.
pub fn setting_names() -> Vec<String> {
    command()
        .get_arguments()
        .filter(|arg| arg.get_id() != "internal_worker")
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .collect()
}

/// The whole command line: [`Args`] and the gunicorn settings Spindle does without.
fn command() -> clap::Command {
    let mut cmd = Args::command();
    for &(long, short, value, _) in GUNICORN_ONLY {
        let mut arg = clap::Arg::new(long).long(long).hide(true);
        if let Some(short) = short {
            arg = arg.short(short);
        }
        arg = if value {
            arg.action(clap::ArgAction::Append).value_name("VALUE")
        } else {
            arg.action(clap::ArgAction::SetTrue)
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

fn parse_layers(program: &std::ffi::OsStr, layers: &[Layer]) -> Result<Parsed, Refused> {
    let cmd = command();
    let mut each = Vec::with_capacity(layers.len());
    for layer in layers {
        let argv = std::iter::once(program.to_owned()).chain(layer.args.iter().cloned());
        match cmd.clone().try_get_matches_from(argv) {
            Ok(matches) => each.push(matches),
            Err(err) => return Err(refusal(err, layer, layers.len() > 1, &cmd)),
        }
    }
    let all = std::iter::once(program.to_owned())
        .chain(layers.iter().flat_map(|layer| layer.args.iter().cloned()));
    let merged = cmd.clone().try_get_matches_from(all).map_err(|err| {
        let everything = Layer {
            source: "the settings together".into(),
            args: Vec::new(),
        };
        refusal(err, &everything, true, &cmd)
    })?;
    let args = Args::from_arg_matches(&merged).map_err(|e| Refused::Error(e.to_string()))?;
    let mut warnings = Vec::new();
    for &(long, short, _, note) in GUNICORN_ONLY {
        if merged.value_source(long) != Some(ValueSource::CommandLine) {
            continue;
        }
        let flag = match short {
            Some(short) => format!("-{short}/--{long}"),
            None => format!("--{long}"),
        };
        match note {
            Ok(instead) => warnings.push(format!(
                "{flag} is a gunicorn setting Spindle does without: {instead}; ignored"
            )),
            Err(why) => return Err(Refused::Error(format!("{flag}: {why}"))),
        }
    }
    Ok(Parsed {
        args,
        merged,
        layers: each,
        warnings,
    })
}

/// A clap error as one line that names the setting, where it came from, and the fix.
fn refusal(err: clap::Error, layer: &Layer, say_where: bool, cmd: &clap::Command) -> Refused {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = err.print();
            return Refused::Shown(0);
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = err.print();
            return Refused::Shown(2);
        }
        _ => {}
    }
    let place = if say_where {
        format!(" (in {})", layer.source)
    } else {
        String::new()
    };
    if err.kind() == ErrorKind::UnknownArgument {
        if let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) {
            let name = arg.split('=').next().unwrap_or(arg);
            if let Some(long) = name.strip_prefix("--") {
                let hint = match closest(long, cmd) {
                    Some(near) => format!("did you mean --{near}?"),
                    None => "`spindle --help` lists every setting".into(),
                };
                return Refused::Error(format!("unknown setting {name}{place}: {hint}"));
            }
            if name.starts_with('-') {
                return Refused::Error(format!(
                    "unknown setting {name}{place}: `spindle --help` lists every setting"
                ));
            }
            return Refused::Error(format!(
                "unexpected argument {name:?}{place}: the application is named once, as MODULE:NAME, and every setting starts with --"
            ));
        }
    }
    // clap's own words, without its usage lines and blank lines.
    let text = err.render().to_string();
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .collect();
    let first = lines.join("; ");
    let first = first.strip_prefix("error: ").unwrap_or(&first);
    Refused::Error(format!("{first}{place}"))
}

/// The long name in `cmd` nearest to `name` (edit distance, `_` read as `-`), if any is
/// near enough to be what was meant.
fn closest(name: &str, cmd: &clap::Command) -> Option<String> {
    let wanted = name.replace('_', "-").to_ascii_lowercase();
    cmd.get_arguments()
        .filter(|arg| arg.get_id() != "internal_worker")
        .filter_map(|arg| arg.get_long())
        .map(|long| (edit_distance(&wanted, long), long))
        .filter(|&(d, long)| d <= 2.max(long.len() / 3))
        .min()
        .map(|(_, long)| long.to_owned())
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `--bind`'s default: gunicorn's, which is `0.0.0.0:$PORT` when PORT is set.
fn default_bind() -> String {
    match std::env::var("PORT") {
        Ok(port) if !port.is_empty() => format!("0.0.0.0:{port}"),
        _ => "127.0.0.1:8000".into(),
    }
}

/// `--print-config`: every setting, its value and where the value came from, in the
/// syntax of a config file.
fn describe(parsed: &Parsed, layers: &[Layer]) -> String {
    let cmd = command();
    let mut out = String::new();
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(
            id,
            "print_config" | "check_config" | "version" | "help" | "internal_worker" | "venv"
        ) {
            continue;
        }
        // Hidden settings (gunicorn's that Spindle does without, a file's wsgi_app) only
        // when given.
        if arg.is_hide_set() && parsed.merged.value_source(id) != Some(ValueSource::CommandLine) {
            continue;
        }
        let name = arg.get_long().unwrap_or(id).replace('-', "_");
        let from = layers
            .iter()
            .zip(&parsed.layers)
            .rev()
            .find(|(_, m)| m.value_source(id) == Some(ValueSource::CommandLine))
            .map(|(layer, _)| layer.source.clone());
        let merged = &parsed.merged;
        let source = match (from, merged.value_source(id)) {
            (Some(source), _) => source,
            (None, Some(ValueSource::EnvVariable)) => format!(
                "environment {}",
                arg.get_env()
                    .map(|e| e.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ),
            (None, Some(_)) => "default".into(),
            (None, None) if id == "bind" => {
                out.push_str(&format!(
                    "bind = [{:?}]  # default{}\n",
                    default_bind(),
                    if std::env::var_os("PORT").is_some() {
                        " (PORT)"
                    } else {
                        ""
                    }
                ));
                continue;
            }
            (None, None) => "default".into(),
        };
        let values: Vec<String> = merged
            .get_raw(id)
            .map(|vals| vals.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let python = |v: &str| {
            if v.parse::<f64>().is_ok() {
                v.to_owned()
            } else {
                format!("{v:?}")
            }
        };
        let value = match arg.get_action() {
            // Parsed, not raw: an environment variable may say `1` or `yes`.
            clap::ArgAction::SetTrue => if merged.get_one::<bool>(id).copied() == Some(true) {
                "True"
            } else {
                "False"
            }
            .to_owned(),
            clap::ArgAction::Append => format!(
                "[{}]",
                values
                    .iter()
                    .map(|v| python(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => match values.first() {
                Some(v) => python(v),
                None => "None".into(),
            },
        };
        out.push_str(&format!("{name} = {value}  # {source}\n"));
    }
    out
}

#[cfg(test)]
mod layer_tests {
    use super::*;

    fn layered(parts: &[(&str, &[&str])]) -> Vec<std::ffi::OsString> {
        let mut args = vec!["spindle".into()];
        for (source, layer) in parts {
            args.push(format!("{LAYER_MARK}{source}").into());
            args.extend(layer.iter().map(|a| a.into()));
        }
        args
    }

    #[test]
    fn later_layers_win_and_the_file_names_the_app() {
        let args = layered(&[
            (
                "/etc/gunicorn.conf.py",
                &["--workers", "4", "--wsgi-app", "app:one", "--timeout", "60"],
            ),
            ("SPINDLE_CMD_ARGS", &["--workers", "3"]),
            ("command line", &["--timeout", "10"]),
        ]);
        let config = Config::from_arg_list(args.clone()).unwrap();
        assert_eq!(config.workers, 3);
        assert_eq!(config.timeout, Some(Duration::from_secs(10)));
        assert_eq!(config.app.as_deref(), Some("app:one"));
        let (program, layers) = split_layers(args);
        let parsed = parse_layers(&program, &layers).ok().unwrap();
        let text = describe(&parsed, &layers);
        assert!(text.contains("workers = 3  # SPINDLE_CMD_ARGS\n"), "{text}");
        assert!(text.contains("timeout = 10  # command line\n"), "{text}");
        assert!(
            text.contains("wsgi_app = \"app:one\"  # /etc/gunicorn.conf.py\n"),
            "{text}"
        );
        assert!(text.contains("keep_alive = 5  # default\n"), "{text}");
        assert!(text.contains("pid = None  # default\n"), "{text}");
    }

    #[test]
    fn unknown_settings_and_bad_values_are_one_line() {
        let err = Config::from_arg_list(["spindle", "--worker", "2"]).unwrap_err();
        assert_eq!(err, "unknown setting --worker: did you mean --workers?");
        let err = Config::from_arg_list(layered(&[
            ("x.conf.py", &["--workers", "many"]),
            ("command line", &[]),
        ]))
        .unwrap_err();
        assert!(
            err.starts_with("invalid value 'many' for '--workers <N>'"),
            "{err}"
        );
        assert!(
            err.ends_with("(in x.conf.py)") && !err.contains('\n'),
            "{err}"
        );
        let err = Config::from_arg_list(["spindle", "--log-level", "loud"]).unwrap_err();
        assert!(
            err.contains("possible values") && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn gunicorn_names_and_gunicorn_only_settings() {
        let config = Config::from_arg_list([
            "spindle",
            "-k",
            "gthread",
            "--worker-connections",
            "1000",
            "--log-level",
            "WARNING",
            "--limit-request-field_size",
            "1000",
            "--umask",
            "0o27",
            "-e",
            "A=b=c",
            "--pythonpath",
            "/x,/y",
            "--access-logfile",
            "-",
        ])
        .unwrap();
        // --worker-connections is Spindle's own setting now (admission control).
        assert_eq!(config.warnings.len(), 1, "{:?}", config.warnings);
        assert_eq!(config.worker_connections, Some(1000));
        assert!(config.warnings[0].starts_with("-k/--worker-class is a gunicorn setting"));
        assert_eq!(config.log_level, LogLevel::Warn);
        assert_eq!(config.limits.max_field_size, 1000);
        assert_eq!(config.umask, Some(0o27));
        assert_eq!(config.env, vec![("A".to_owned(), "b=c".to_owned())]);
        assert_eq!(
            config.pythonpath,
            vec![PathBuf::from("/x"), PathBuf::from("/y")]
        );
        assert_eq!(
            config.access_log.unwrap().format,
            AccessFormat::parse(GUNICORN_DEFAULT).unwrap()
        );
        let err = Config::from_arg_list(["spindle", "--certfile", "x.pem"]).unwrap_err();
        assert!(
            err.starts_with("--certfile: Spindle does not terminate TLS"),
            "{err}"
        );
        assert_eq!(parse_umask("022"), Ok(0o22));
        assert_eq!(parse_umask("18"), Ok(0o22));
        assert!(parse_umask("0o1000").is_err());
    }

    #[test]
    fn proxy_settings() {
        let config = Config::from_arg_list(["spindle"]).unwrap();
        assert!(!config.proxy_protocol);
        assert!(config.proxy_allow.contains("::1".parse().unwrap()));
        assert!(!config.forwarded_allow.contains("10.0.0.1".parse().unwrap()));
        assert_eq!(config.forwarded, ForwardedRules::default());
        let config = Config::from_arg_list([
            "spindle",
            "--proxy-protocol",
            "--proxy-allow-from",
            "*",
            "--forwarded-allow-ips",
            "10.0.0.0/8",
            "--forwarded-hops",
            "2",
            "--secure-scheme-header",
            "X-Scheme=https",
            "--forwarded-host",
        ])
        .unwrap();
        assert!(config.proxy_protocol && config.forwarded.host);
        assert!(config.proxy_allow.contains("203.0.113.1".parse().unwrap()));
        assert!(config.forwarded_allow.contains("10.9.8.7".parse().unwrap()));
        assert_eq!(config.forwarded.hops, 2);
        assert_eq!(
            config.forwarded.scheme_headers,
            vec![("X-Scheme".to_owned(), "https".to_owned())]
        );
        let none = Config::from_arg_list(["spindle", "--secure-scheme-header", ""]).unwrap();
        assert!(none.forwarded.scheme_headers.is_empty());
        for bad in [
            &["--forwarded-allow-ips", "localhost"][..],
            &["--proxy-allow-from", "10.0.0.0/40"],
            &["--forwarded-hops", "0"],
            &["--secure-scheme-header", "X-Proto"],
        ] {
            let err = Config::from_arg_list(std::iter::once("spindle").chain(bad.iter().copied()))
                .unwrap_err();
            assert!(err.starts_with(bad[0]), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_worker_spec_survives_its_encoding() {
        for metrics_fd in [None, Some(9)] {
            let spec = WorkerSpec {
                slot: 2,
                generation: 3,
                control_fd: 5,
                listener_fds: vec![vec![6, 7], vec![8]],
                metrics_fd,
            };
            assert_eq!(WorkerSpec::decode(&spec.encode()), Some(spec));
        }
        assert_eq!(WorkerSpec::decode("1:0:5:6:x"), None);
    }

    #[test]
    fn metrics_bind_takes_host_and_port_only() {
        let config = Config::from_arg_list(["spindle", "--metrics-bind", "127.0.0.1:9100"]);
        assert_eq!(
            config.unwrap().metrics_bind,
            Some("127.0.0.1:9100".parse().unwrap())
        );
        for bad in ["9100", "localhost", "127.0.0.1:port", ""] {
            let err = Config::from_arg_list(["spindle", "--metrics-bind", bad]).unwrap_err();
            assert!(err.starts_with("--metrics-bind"), "{bad}: {err}");
        }
    }
}
