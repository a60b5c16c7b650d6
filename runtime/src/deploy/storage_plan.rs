//! The storage plan: what the image's `VOLUME`s, the exe-unit's volume override and the
//! `--storage-gib` grant make of the VM's file systems (host volumes, `ram` volumes, `storage`
//! volumes, the root's writable layer). Pure: checked arithmetic, one-line refusals.

use std::collections::BTreeMap;

use anyhow::{bail, Context};

use super::volume_override::Mount;
use super::volumes;
use crate::deployment::{DiskSpec, RamVolume, RootLayer, StorageVolume};
use crate::host::scratch_disk::MIN_DISK_BYTES;

/// What the image's volumes, the volume override and the storage grant make of the VM's file
/// systems.
#[derive(Debug, PartialEq)]
pub struct StoragePlan<'a> {
    /// Paths shared from host dirs: the image's `VOLUME`s the override leaves alone or names
    /// `host`, and the override's other `host` paths.
    pub host: Vec<&'a str>,
    /// tmpfs volumes.
    pub ram: Vec<RamVolume>,
    /// Scratch-disk volumes.
    pub storage: Vec<StorageVolume>,
    /// The root's writable layer.
    pub root: RootLayer,
}

fn human(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string()
}

/// Plans the file systems. Scratch disks share the `--storage-gib` grant (`granted` bytes):
/// the `storage` volumes and a `storage` root together may not exceed it, and without a
/// `storage` or `ram` root the root's writable layer is a disk of whatever the volumes leave.
pub fn plan_volumes<'a>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::volume_override::{parse, Ext4Errors};

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
                    errors: Some(Ext4Errors::Panic)
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
                errors: Some(Ext4Errors::Continue)
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
