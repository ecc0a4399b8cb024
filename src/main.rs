//! The `spindle` command: parse the command line, start the embedded CPython, run, and turn
//! any setup error into one readable line and a non-zero exit.

use std::process::ExitCode;

use spindle::config::{Command, Config};

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let config = match Config::parse(args.clone()) {
        Command::Serve(config) => config,
        // `--version`, help and errors: `run` says what they print, without Python.
        _ => return exit(spindle::run::run_without_python(args)),
    };
    if let Err(err) = spindle::py::initialize_embedded(config.venv.as_deref()) {
        eprintln!("error: {err:#}");
        return ExitCode::FAILURE;
    }
    // SAFETY: Python was initialised on this thread, which holds its GIL from here on.
    let gil = unsafe { spindle::py::object::Gil::assume() };
    let served = spindle::run::serve(gil, *config, None);
    // SAFETY: the main thread state is attached again (serve returns with the GIL held) and
    // every other thread state has been deleted.
    unsafe { pyo3_ffi::Py_FinalizeEx() };
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn exit(code: i32) -> ExitCode {
    ExitCode::from(code as u8)
}
