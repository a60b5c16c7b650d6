//! Kernel modules: the initramfs carries the guest's drivers as plain `.ko` files and an `order`
//! file (dependencies first, as the build derived it from modules.dep); they are loaded with
//! `finit_module`.

use std::ffi::CString;
use std::fs::File;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};

use crate::error::{Context, InitError, Result};

/// Where the build puts the modules.
pub const MODULES_DIR: &str = "/modules";

/// Loads every module listed in `<dir>/order`, in order. Already-loaded modules are fine.
pub fn load_all(dir: &Path) -> Result<usize> {
    let order = std::fs::read_to_string(dir.join("order"))
        .ctx(|| format!("read {}/order", dir.display()))?;
    let mut loaded = 0;
    let params = CString::default();
    for name in order.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if name.contains('/') {
            return Err(InitError::invalid(format!(
                "module name {name:?} contains '/'"
            )));
        }
        let path = dir.join(name);
        let file = File::open(&path).ctx(|| format!("open module {}", path.display()))?;
        match finit_module(&file, &params, ModuleInitFlags::empty()) {
            Ok(()) | Err(Errno::EEXIST) => loaded += 1,
            Err(e) => return Err(InitError::sys(format!("load module {name}"), e)),
        }
    }
    Ok(loaded)
}
