//! `deployment.json`: everything `deploy` decided, for `start` to act on.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use image_loader::{ContainerConfig, UserSpec};
use serde::{Deserialize, Serialize};

use crate::deploy::volume_override::Ext4Errors;
use crate::deploy::volumes::Volume;

/// File name of the deployment record inside the workdir.
pub const DEPLOYMENT_FILE: &str = "deployment.json";
/// Version of the record's layout; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 2;

/// What `deploy` wrote for `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format: u32,
    /// The verified image.
    pub image: Image,
    /// The image's configuration, as in its trailer.
    pub config: ContainerConfig,
    /// The image's `User`, parsed.
    pub user: UserSpec,
    /// Host directories shared into the VM.
    pub volumes: Vec<Volume>,
    /// `ram` volumes of the volume override: tmpfs mounts in the guest, not shared.
    pub ram_volumes: Vec<RamVolume>,
    /// `storage` volumes of the volume override: scratch disks formatted ext4, not shared.
    pub storage_volumes: Vec<StorageVolume>,
    /// Where the root's writable layer lives.
    pub root: RootLayer,
    /// What the agreement grants.
    pub resources: Resources,
    /// The VM's hostname.
    pub hostname: String,
}

/// A tmpfs of a fixed size at a path in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RamVolume {
    /// Absolute, normalised path inside the VM.
    pub path: String,
    /// Bytes.
    pub size: u64,
}

/// A scratch disk: an ext4-formatted file in the workdir that lives as long as the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskSpec {
    /// Bytes.
    pub size: u64,
    /// Bytes allocated on the host disk up front (the rest is sparse).
    pub preallocate: u64,
    /// ext4's `errors=` behaviour (`None`: the default of the use).
    pub errors: Option<Ext4Errors>,
}

/// A scratch disk mounted at a path in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageVolume {
    /// Absolute, normalised path inside the VM.
    pub path: String,
    /// The disk.
    pub disk: DiskSpec,
}

/// The root's writable layer (the overlay's upper layer over the read-only image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootLayer {
    /// A tmpfs of this many bytes in guest RAM (a `ram` override on `/`).
    Ram {
        /// Bytes.
        size: u64,
    },
    /// A scratch disk: the storage grant, or a `storage` override on `/`.
    Disk(DiskSpec),
}

/// The image file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// Absolute path (in the package cache for downloads).
    pub path: PathBuf,
    /// `algo:hex`, when one was computed.
    pub digest: Option<String>,
    /// Bytes of the file.
    pub size: u64,
}

/// Resources granted to the VM.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Virtual CPUs.
    pub cpu_cores: u32,
    /// Memory in GiB.
    pub mem_gib: f64,
    /// Storage in GiB.
    pub storage_gib: f64,
}

impl Resources {
    /// The storage grant in bytes.
    pub fn storage_bytes(&self) -> u64 {
        (self.storage_gib * (1u64 << 30) as f64).round() as u64
    }
}

/// Why the deployment record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// No record: `deploy` has not run in this workdir.
    #[error("{0} not found: run deploy first")]
    Missing(PathBuf),
    /// Read or write failure.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Unparseable record.
    #[error("{path} is not a valid deployment record: {source}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The error.
        source: serde_json::Error,
    },
    /// A record written by an incompatible version.
    #[error("{path} has format {found}, this runtime reads format {FORMAT_VERSION}: deploy again")]
    Format {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

impl Deployment {
    /// Reads the record from `workdir`.
    pub fn load(workdir: &Path) -> Result<Self, DeploymentError> {
        let path = workdir.join(DEPLOYMENT_FILE);
        let bytes = fs::read(&path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => DeploymentError::Missing(path.clone()),
            _ => DeploymentError::Io {
                path: path.clone(),
                source,
            },
        })?;
        let d: Deployment =
            serde_json::from_slice(&bytes).map_err(|source| DeploymentError::Invalid {
                path: path.clone(),
                source,
            })?;
        if d.format != FORMAT_VERSION {
            return Err(DeploymentError::Format {
                path,
                found: d.format,
            });
        }
        Ok(d)
    }

    /// Writes the record into `workdir` atomically: a reader sees the old record or the new one,
    /// never a mix, and a failure leaves no temporary file behind.
    pub fn save(&self, workdir: &Path) -> Result<(), DeploymentError> {
        let path = workdir.join(DEPLOYMENT_FILE);
        let tmp = workdir.join(format!(".{DEPLOYMENT_FILE}.tmp"));
        let io = |source| DeploymentError::Io {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(io)
    }
}
