//! Python-version cfgs (`Py_3_12`, ...) for the CPython the crate is built for, and, outside
//! extension-module builds, an rpath to its libpython.
//!
//! maturin builds the extension module with `PYO3_BUILD_EXTENSION_MODULE` set: then nothing
//! links libpython (the module runs inside the interpreter that imports it) and the rpath
//! call does nothing. `cargo test` and `cargo bench` build ordinary binaries that embed
//! CPython to drive the bridge without a server; `PYO3_PYTHON` (scripts/find-python.sh)
//! picks it, and the rpath lets them find its libpython without `LD_LIBRARY_PATH`.

fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    println!("cargo:rerun-if-env-changed=PYO3_BUILD_EXTENSION_MODULE");
}
