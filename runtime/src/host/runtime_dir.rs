//! The runtime directory: the guest kernel and initramfs that `start` boots. Found at
//! `--runtime-dir` (or `$YA_RUNTIME_VM_RUNTIME_DIR`), else at `<directory of this binary>/runtime`,
//! where upstream's packages install it and where `scripts/build-runtime.sh` puts it for
//! `cargo build`'s binaries.

use std::path::{Path, PathBuf};

/// Environment variable naming the runtime directory.
pub const RUNTIME_DIR_ENV: &str = "YA_RUNTIME_VM_RUNTIME_DIR";
/// Initramfs file names, in order of preference.
const INITRAMFS_NAMES: [&str; 4] = [
    "initramfs.cpio",
    "initramfs.cpio.gz",
    "initramfs.cpio.lz4",
    "initramfs.cpio.zst",
];

/// A checked runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeDir {
    /// The directory.
    pub dir: PathBuf,
    /// The guest kernel.
    pub kernel: PathBuf,
    /// The initramfs with the init.
    pub initramfs: PathBuf,
}

/// Why no usable runtime directory was found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeDirError {
    /// The directory has no kernel.
    #[error("runtime directory {0}: no guest kernel (vmlinux); build it with scripts/build-runtime.sh or set --runtime-dir")]
    NoKernel(PathBuf),
    /// The directory has no initramfs.
    #[error("runtime directory {0}: no initramfs; build it with scripts/build-runtime.sh or set --runtime-dir")]
    NoInitramfs(PathBuf),
    /// The binary's own location is unknown.
    #[error("cannot locate the runtime directory: the path of this executable is unknown ({0}); set --runtime-dir")]
    NoExe(String),
}

impl RuntimeDir {
    /// Checks `dir`.
    pub fn at(dir: &Path) -> Result<Self, RuntimeDirError> {
        let kernel = dir.join("vmlinux");
        if !kernel.is_file() {
            return Err(RuntimeDirError::NoKernel(dir.to_path_buf()));
        }
        let initramfs = INITRAMFS_NAMES
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_file())
            .ok_or_else(|| RuntimeDirError::NoInitramfs(dir.to_path_buf()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            kernel,
            initramfs,
        })
    }

    /// The directory given on the command line (already merged with the environment by clap),
    /// else `runtime/` beside the running executable.
    pub fn locate(given: Option<&Path>) -> Result<Self, RuntimeDirError> {
        match given {
            Some(d) => Self::at(d),
            None => {
                let exe =
                    std::env::current_exe().map_err(|e| RuntimeDirError::NoExe(e.to_string()))?;
                let bin_dir = exe
                    .parent()
                    .ok_or_else(|| RuntimeDirError::NoExe(exe.display().to_string()))?;
                Self::at(&bin_dir.join("runtime"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_contents() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(
            RuntimeDir::at(d.path()).unwrap_err(),
            RuntimeDirError::NoKernel(d.path().to_path_buf())
        );
        std::fs::write(d.path().join("vmlinux"), b"k").unwrap();
        assert_eq!(
            RuntimeDir::at(d.path()).unwrap_err(),
            RuntimeDirError::NoInitramfs(d.path().to_path_buf())
        );
        std::fs::write(d.path().join("initramfs.cpio"), b"i").unwrap();
        std::fs::write(d.path().join("initramfs.cpio.gz"), b"i").unwrap();
        let r = RuntimeDir::locate(Some(d.path())).unwrap();
        assert_eq!(r.initramfs, d.path().join("initramfs.cpio"));
        assert_eq!(r.kernel, d.path().join("vmlinux"));
    }

    #[test]
    fn defaults_to_the_binarys_directory() {
        let exe_dir = std::env::current_exe()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        match RuntimeDir::locate(None) {
            Ok(r) => assert_eq!(r.dir, exe_dir.join("runtime")),
            Err(e) => assert!(
                e.to_string()
                    .contains(&exe_dir.join("runtime").display().to_string()),
                "{e}"
            ),
        }
    }
}
