//! Links the embedded CPython chosen by `PYO3_PYTHON` (scripts/build.sh sets it from
//! `SPINDLE_PYTHON` or the newest CPython it finds) and records an rpath so the binary
//! finds libpython without `LD_LIBRARY_PATH`.

#[allow(deprecated)]
fn main() {
    pyo3_build_config::use_pyo3_cfgs();
    pyo3_build_config::add_libpython_rpath_link_args();
    let config = pyo3_build_config::get();
    if let Some(exe) = &config.executable {
        println!("cargo:rustc-env=SPINDLE_BUILD_PYTHON={exe}");
    } else {
        println!("cargo:rustc-env=SPINDLE_BUILD_PYTHON=");
    }
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
}
