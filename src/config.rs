//! The command line, validated once into an immutable [`Config`]. Nothing here runs at
//! request time; the hot path only reads the values computed here.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::http::Limits;
use crate::log::LogLevel;

/// Which monoio driver the I/O threads run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverChoice {
    /// The measured default: epoll. With monoio 0.2.4 (one submission per operation, no
    /// multishot or registered buffers) io_uring lost most of the lab's scenarios on these
    /// machines; see README.md, "Performance".
    Auto,
    /// io_uring, or exit with an error when it is unavailable.
    #[value(name = "io-uring", alias = "io_uring", alias = "iouring")]
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
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

    /// Where to listen, repeatable: HOST:PORT or [IPv6]:PORT (port 0 picks a free one),
    /// unix:PATH (a UNIX socket, made here), fd://N (a listening socket this process was
    /// given as descriptor N). Under systemd socket activation (LISTEN_FDS) the sockets
    /// systemd passed are used instead.
    #[arg(
        short = 'b',
        long,
        value_name = "ADDRESS",
        default_value = "127.0.0.1:8000"
    )]
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

    /// Prepend this directory to sys.path; repeatable.
    #[arg(long, value_name = "DIR")]
    pythonpath: Vec<PathBuf>,

    /// Gone with the embedding binary: Spindle runs in the Python that starts it. Kept
    /// hidden so an old command line gets the fix, not "unexpected argument".
    #[arg(long, value_name = "DIR", hide = true)]
    venv: Option<PathBuf>,

    /// Minimum level of the server log.
    #[arg(long, value_enum, default_value = "info")]
    log_level: LogLevel,

    /// Log one line per request: client, request line, status, body bytes, duration.
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

    /// Longest request line in bytes (longer: 414).
    #[arg(long, value_name = "BYTES", default_value_t = 4094)]
    limit_request_line: usize,

    /// Most header fields in a request (more: 431).
    #[arg(long, value_name = "N", default_value_t = 100)]
    limit_request_fields: usize,

    /// Longest header field line in bytes (longer: 431).
    #[arg(long, value_name = "BYTES", default_value_t = 8190)]
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

fn parse_mode(mode: &str) -> Result<u32, String> {
    match u32::from_str_radix(mode.trim_start_matches("0o"), 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(format!("{mode}: expected an octal mode such as 660")),
    }
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
    pub access_log: bool,
    /// `None`: keep-alive disabled.
    pub keep_alive: Option<Duration>,
    pub backlog: u32,
    pub driver: DriverChoice,
    pub limits: Limits,
    pub max_body: Option<u64>,
    pub header_timeout: Duration,
    pub write_timeout: Duration,
    pub graceful_timeout: Duration,
    pub root_path: String,
    pub queue_size: usize,
    /// `--metrics-bind`: where `/metrics` is served; `None`: nothing is counted.
    pub metrics_bind: Option<SocketAddr>,
}

impl Config {
    /// Parses a command line (`args[0]` is the program name). What clap or the validation
    /// had to say about a bad one is printed here, so the caller only exits.
    pub fn parse<I, T>(args: I) -> Command
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = match Args::try_parse_from(args) {
            Ok(args) => args,
            Err(err) => {
                let _ = err.print();
                return Command::Exit(err.exit_code());
            }
        };
        if args.version {
            return Command::Version;
        }
        match Config::validate(args) {
            Ok(config) => Command::Serve(Box::new(config)),
            Err(msg) => {
                eprintln!("error: {msg}");
                Command::Exit(2)
            }
        }
    }

    /// Parses an explicit argument list (tests, benches).
    pub fn from_arg_list<I, T>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args = Args::try_parse_from(args).map_err(|e| e.to_string())?;
        Config::validate(args)
    }

    fn validate(args: Args) -> Result<Config, String> {
        if let Some(venv) = &args.venv {
            return Err(format!(
                "--venv is gone: Spindle runs in the Python that starts it, so run the spindle installed in that environment ({}/bin/spindle), or `python -m spindle` with its python",
                venv.display()
            ));
        }
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let binds = args
            .bind
            .iter()
            .map(|bind| Bind::parse(bind))
            .collect::<Result<Vec<_>, _>>()?;
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
        if let Some(app) = &args.app {
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
        let metrics_bind = args
            .metrics_bind
            .as_deref()
            .map(parse_metrics_bind)
            .transpose()?;
        Ok(Config {
            app: args.app,
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
            pythonpath: args.pythonpath,
            log_level: args.log_level,
            access_log: args.access_log,
            keep_alive: (!keep_alive.is_zero()).then_some(keep_alive),
            backlog: args.backlog,
            driver: args.driver,
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
            metrics_bind,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
