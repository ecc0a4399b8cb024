//! Embedding CPython in the `spindle` binary: initialise the interpreter for a venv. Only
//! the binary's start-up uses this; the extension module runs in an initialised Python.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};
use pyo3_ffi as ffi;

/// Initialises CPython in this process, for the venv `venv` when given; the calling thread
/// then holds the main interpreter's GIL.
pub fn initialize_embedded(venv: Option<&Path>) -> anyhow::Result<()> {
    initialize(&program_name(venv)?)
}

/// The `sys.executable` Spindle presents: the venv's python when one is used (so
/// CPython's own start-up finds `pyvenv.cfg` and puts the venv's site-packages on
/// sys.path, as it does for `venv/bin/python`), else the python Spindle was built with.
fn program_name(venv: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    let Some(venv) = venv else {
        let built = env!("SPINDLE_BUILD_PYTHON");
        return Ok((!built.is_empty() && Path::new(built).exists()).then(|| PathBuf::from(built)));
    };
    let venv =
        std::fs::canonicalize(venv).map_err(|e| anyhow!("--venv {}: {e}", venv.display()))?;
    if !venv.join("pyvenv.cfg").is_file() {
        bail!(
            "--venv {}: not a virtual environment (no pyvenv.cfg)",
            venv.display()
        );
    }
    let version = super::python_version();
    let mut parts = version.split('.');
    let major_minor = format!(
        "python{}.{}",
        parts.next().unwrap_or("3"),
        parts.next().unwrap_or("")
    );
    if !venv.join("lib").join(&major_minor).is_dir() {
        bail!(
            "--venv {}: this virtual environment is not for Python {} (no lib/{}); make one with that Python, or build Spindle with SPINDLE_PYTHON set to the venv's Python",
            venv.display(),
            version,
            major_minor
        );
    }
    let python = venv.join("bin").join("python");
    if !python.exists() {
        bail!("--venv {}: no bin/python in it", venv.display());
    }
    Ok(Some(python))
}

fn initialize(program: &Option<PathBuf>) -> anyhow::Result<()> {
    // SAFETY: PyConfig is a plain C struct initialised by PyConfig_InitPythonConfig before
    // any use; strings we set are copied by CPython; the config is cleared after use. This
    // runs once, on the main thread, before any other Python call.
    unsafe {
        let mut config: ffi::PyConfig = std::mem::zeroed();
        ffi::PyConfig_InitPythonConfig(&mut config);
        // Spindle owns SIGINT/SIGTERM; Python must not install handlers of its own.
        config.install_signal_handlers = 0;
        config.parse_argv = 0;
        let argv0 = CString::new("spindle").expect("static string");
        let mut argv = [argv0.as_ptr()];
        let mut status = ffi::PyConfig_SetBytesArgv(&mut config, 1, argv.as_mut_ptr());
        if ffi::PyStatus_Exception(status) == 0 {
            if let Some(program) = program {
                let program = CString::new(program.as_os_str().as_encoded_bytes())?;
                status = ffi::PyConfig_SetBytesString(
                    &mut config,
                    &mut config.program_name,
                    program.as_ptr(),
                );
            }
        }
        if ffi::PyStatus_Exception(status) == 0 {
            status = ffi::Py_InitializeFromConfig(&config);
        }
        ffi::PyConfig_Clear(&mut config);
        if ffi::PyStatus_Exception(status) != 0 {
            let msg = if status.err_msg.is_null() {
                "unknown error".to_string()
            } else {
                CStr::from_ptr(status.err_msg)
                    .to_string_lossy()
                    .into_owned()
            };
            bail!(
                "cannot initialise Python {}: {msg}",
                super::python_version()
            );
        }
    }
    Ok(())
}
