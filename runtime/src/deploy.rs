//! `deploy`: resolve and verify the package, read its configuration, and prepare the workdir
//! (`deployment.json` and one directory per volume) — all or nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use image_loader::{read_gvmi, Loader, PackageRef};
use ya_runtime_api::deploy::{ContainerVolume, DeployResult, StartMode};

use crate::deployment::{
    Deployment, DiskSpec, Image, RamVolume, Resources, RootLayer, StorageVolume, FORMAT_VERSION,
};
use crate::scratch_disk::MIN_DISK_BYTES;
use crate::volume_override::Mount;
use crate::volumes::{self, Volume};

/// Everything `deploy` takes from the command line.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The activity's workdir.
    pub workdir: PathBuf,
    /// The `--task-package` text.
    pub package: String,
    /// The package cache root.
    pub cache_dir: PathBuf,
    /// Largest package downloaded.
    pub max_package_bytes: u64,
    /// Granted resources.
    pub resources: Resources,
    /// The VM's hostname.
    pub hostname: String,
    /// The exe-unit's `--volume-override`, parsed (empty: the image's volumes as they are).
    pub volume_override: BTreeMap<String, Mount>,
}

/// `--max-package-gib` in bytes: positive and finite.
pub fn max_package_bytes(gib: f64) -> anyhow::Result<u64> {
    if !(gib.is_finite() && gib > 0.0) {
        bail!("--max-package-gib must be a positive number of GiB, got {gib}");
    }
    // A float-to-int cast saturates: a huge limit is no limit, never a wrap.
    Ok((gib * f64::from(1u32 << 30)) as u64)
}

/// What the image's volumes, the volume override and the storage grant make of the VM's file
/// systems.
#[derive(Debug, PartialEq)]
struct StoragePlan<'a> {
    /// Paths shared from host dirs: the image's `VOLUME`s the override leaves alone or names
    /// `host`, and the override's other `host` paths.
    host: Vec<&'a str>,
    /// tmpfs volumes.
    ram: Vec<RamVolume>,
    /// Scratch-disk volumes.
    storage: Vec<StorageVolume>,
    /// The root's writable layer.
    root: RootLayer,
}

fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

/// Plans the file systems. Scratch disks share the `--storage-gib` grant (`granted` bytes):
/// the `storage` volumes and a `storage` root together may not exceed it, and without a
/// `storage` or `ram` root the root's writable layer is a disk of whatever the volumes leave.
fn plan_volumes<'a>(
    image: impl IntoIterator<Item = &'a str>,
    overrides: &'a BTreeMap<String, Mount>,
    granted: u64,
) -> anyhow::Result<StoragePlan<'a>> {
    let mut ram = Vec::new();
    let mut storage = Vec::new();
    let mut root = None;
    for (path, m) in overrides {
        let disk = match *m {
            Mount::Host => continue,
            Mount::Ram { size } if path == "/" => {
                root = Some(RootLayer::Ram { size });
                continue;
            }
            Mount::Ram { size } => {
                ram.push(RamVolume {
                    path: path.clone(),
                    size,
                });
                continue;
            }
            Mount::Storage {
                size,
                preallocate,
                errors,
            } => DiskSpec {
                size,
                preallocate,
                errors,
            },
        };
        if disk.size < MIN_DISK_BYTES {
            bail!(
                "--volume-override: the storage volume at {path} has {}, less than the {} a disk needs",
                human(disk.size),
                human(MIN_DISK_BYTES)
            );
        }
        if path == "/" {
            root = Some(RootLayer::Disk(disk));
        } else {
            storage.push(StorageVolume {
                path: path.clone(),
                disk,
            });
        }
    }
    let volumes = storage
        .iter()
        .try_fold(0u64, |sum, s| sum.checked_add(s.disk.size))
        .context("--volume-override: the storage volumes' sizes add up past 2^64 bytes")?;
    let root = match root {
        Some(r) => r,
        None if granted.saturating_sub(volumes) < MIN_DISK_BYTES => bail!(
            "--volume-override: the storage volumes take {} of the {} that --storage-gib grants, \
             which leaves less than {} for the root's writable layer",
            human(volumes),
            human(granted),
            human(MIN_DISK_BYTES)
        ),
        None => RootLayer::Disk(DiskSpec {
            size: granted - volumes,
            preallocate: 0,
            errors: None,
        }),
    };
    let on_disk = volumes.saturating_add(match root {
        RootLayer::Disk(d) => d.size,
        RootLayer::Ram { .. } => 0,
    });
    if on_disk > granted {
        bail!(
            "--volume-override: the storage volumes ask for {} in all, more than the {} that \
             --storage-gib grants",
            human(on_disk),
            human(granted)
        );
    }
    let guest_side: Vec<&str> = ram
        .iter()
        .map(|r| r.path.as_str())
        .chain(storage.iter().map(|s| s.path.as_str()))
        .collect();
    let host = image
        .into_iter()
        .filter(|p| {
            // An image VOLUME that the override turns into another kind is not a host volume.
            let n = volumes::normalize(p).ok();
            !guest_side.iter().any(|g| Some(*g) == n.as_deref())
        })
        .chain(
            overrides
                .iter()
                .filter(|(_, m)| **m == Mount::Host)
                .map(|(p, _)| p.as_str()),
        )
        .collect();
    Ok(StoragePlan {
        host,
        ram,
        storage,
        root,
    })
}

/// Checks the granted resources.
pub fn validate_resources(r: &Resources) -> anyhow::Result<()> {
    if r.cpu_cores == 0 {
        bail!("--cpu-cores must be at least 1");
    }
    if !(r.mem_gib.is_finite() && r.mem_gib > 0.0) {
        bail!(
            "--mem-gib must be a positive number of GiB, got {}",
            r.mem_gib
        );
    }
    if !(r.storage_gib.is_finite() && r.storage_gib > 0.0) {
        bail!(
            "--storage-gib must be a positive number of GiB, got {}",
            r.storage_gib
        );
    }
    Ok(())
}

/// Checks a hostname: RFC 1123 labels of letters, digits and '-', at most 253 bytes in all.
pub fn validate_hostname(name: &str) -> anyhow::Result<()> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        bail!("invalid hostname {name:?}: use letters, digits and '-' in dot-separated labels of at most 63 characters");
    }
    Ok(())
}

/// Runs the deploy and returns the result the exe-unit reads from stdout.
pub async fn deploy(req: &DeployRequest) -> anyhow::Result<DeployResult> {
    validate_resources(&req.resources)?;
    validate_hostname(&req.hostname)?;
    let package = PackageRef::parse(&req.package)?;
    let loader = Loader::new(&req.cache_dir)?.with_max_package_bytes(req.max_package_bytes);
    let local = loader.fetch(&package).await?;
    let path = local.path.clone();
    let image = tokio::task::spawn_blocking(move || read_gvmi(&path))
        .await
        .context("image reader task failed")?
        .with_context(|| format!("image {}", local.path.display()))?;
    let user = image.config.user_spec()?;
    let StoragePlan {
        host,
        ram,
        storage,
        root,
    } = plan_volumes(
        image.config.volume_paths(),
        &req.volume_override,
        req.resources.storage_bytes(),
    )?;
    let vols = volumes::plan(host).context("the image declares an unusable VOLUME")?;
    let count = vols.len() + ram.len() + storage.len();
    if count > volumes::MAX_VOLUMES {
        bail!(
            "the image and --volume-override make {count} volumes; at most {} are supported",
            volumes::MAX_VOLUMES
        );
    }
    let deployment = Deployment {
        format: FORMAT_VERSION,
        image: Image {
            path: local.path,
            digest: local.digest.map(|d| d.to_string()),
            size: image.file_len,
        },
        config: image.config,
        user,
        volumes: vols,
        ram_volumes: ram,
        storage_volumes: storage,
        root,
        resources: req.resources.clone(),
        hostname: req.hostname.clone(),
    };
    write_workdir(&req.workdir, &deployment)?;
    Ok(DeployResult {
        valid: Ok(String::new()),
        vols: deployment
            .volumes
            .iter()
            .map(|v| ContainerVolume {
                name: v.name.clone(),
                path: v.path.clone(),
            })
            .collect(),
        start_mode: StartMode::Blocking,
    })
}

/// Creates the workdir and volume directories and writes the record; on failure removes every
/// directory it created, so the workdir is as it was.
fn write_workdir(workdir: &Path, deployment: &Deployment) -> anyhow::Result<()> {
    let mut created: Vec<PathBuf> = Vec::new();
    let result = (|| {
        create_tracked(workdir, &mut created)?;
        for Volume { name, .. } in &deployment.volumes {
            create_tracked(&workdir.join(name), &mut created)?;
        }
        deployment.save(workdir)?;
        anyhow::Ok(())
    })();
    if result.is_err() {
        for dir in created.iter().rev() {
            let _ = fs::remove_dir(dir);
        }
    }
    result
}

/// Creates `dir` and any missing parents, remembering each one it created.
fn create_tracked(dir: &Path, created: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        fs::create_dir(&d).with_context(|| format!("cannot create {}", d.display()))?;
        created.push(d);
    }
    if !dir.is_dir() {
        bail!("{} exists and is not a directory", dir.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume_override::{parse, OnErrors};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn plan(image: &[&str], json: &str, granted: u64) -> anyhow::Result<StoragePlan<'static>> {
        let overrides: &'static BTreeMap<String, Mount> = Box::leak(Box::new(parse(json).unwrap()));
        let image: Vec<&'static str> = image
            .iter()
            .map(|s| &*Box::leak(s.to_string().into_boxed_str()))
            .collect();
        plan_volumes(image, overrides, granted)
    }

    #[test]
    fn without_an_override_the_root_layer_is_a_disk_of_the_grant() {
        let p = plan(&["/golem/output"], "{}", 2 * GIB).unwrap();
        assert_eq!(p.host, ["/golem/output"]);
        assert_eq!(
            p.root,
            RootLayer::Disk(DiskSpec {
                size: 2 * GIB,
                preallocate: 0,
                errors: None
            })
        );
    }

    #[test]
    fn every_kind_mixed() {
        let p = plan(
            &["/golem/input", "/golem/output", "/cache"],
            r#"{"/golem/input": {"host": {}}, "/extra": {"host": {}},
                "/cache": {"ram": {"size": "64MiB"}},
                "/data": {"storage": {"size": "1GiB", "preallocate": "16MiB", "errors": "panic"}}}"#,
            3 * GIB,
        )
        .unwrap();
        let shared: Vec<String> = volumes::plan(p.host)
            .unwrap()
            .into_iter()
            .map(|v| v.path)
            .collect();
        assert_eq!(shared, ["/extra", "/golem/input", "/golem/output"]);
        assert_eq!(
            p.ram,
            [RamVolume {
                path: "/cache".into(),
                size: 64 * MIB
            }]
        );
        assert_eq!(
            p.storage,
            [StorageVolume {
                path: "/data".into(),
                disk: DiskSpec {
                    size: GIB,
                    preallocate: 16 * MIB,
                    errors: Some(OnErrors::Panic)
                }
            }]
        );
        // The root's layer gets what the storage volume leaves of the grant.
        assert!(matches!(p.root, RootLayer::Disk(d) if d.size == 2 * GIB));
    }

    #[test]
    fn the_root_can_be_ram_or_a_disk_of_its_own_size() {
        let p = plan(&[], r#"{"/": {"ram": {"size": "512MiB"}}}"#, GIB).unwrap();
        assert_eq!(p.root, RootLayer::Ram { size: 512 * MIB });
        let p = plan(
            &[],
            r#"{"/": {"storage": {"size": "512MiB", "errors": "continue"}}}"#,
            GIB,
        )
        .unwrap();
        assert_eq!(
            p.root,
            RootLayer::Disk(DiskSpec {
                size: 512 * MIB,
                preallocate: 0,
                errors: Some(OnErrors::Continue)
            })
        );
    }

    #[test]
    fn disks_cannot_exceed_the_grant() {
        let err = |json: &str| plan(&[], json, GIB).unwrap_err().to_string();
        let e = err(r#"{"/data": {"storage": {"size": "1GiB"}}}"#);
        assert!(e.contains("leaves less than"), "{e}");
        let e = err(r#"{"/": {"storage": {"size": "2GiB"}}}"#);
        assert!(e.contains("more than the 1.0 GiB"), "{e}");
        let e =
            err(r#"{"/": {"storage": {"size": "512MiB"}}, "/d": {"storage": {"size": "600MiB"}}}"#);
        assert!(e.contains("more than"), "{e}");
        let e = err(r#"{"/d": {"storage": {"size": "4MiB"}}}"#);
        assert!(e.contains("less than the 16.0 MiB a disk needs"), "{e}");
        // A ram root leaves the whole grant to the volumes.
        plan(
            &[],
            r#"{"/": {"ram": {"size": "64MiB"}}, "/d": {"storage": {"size": "1GiB"}}}"#,
            GIB,
        )
        .unwrap();
    }
}
