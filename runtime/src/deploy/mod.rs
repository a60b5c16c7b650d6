//! `deploy`: resolve and verify the package, read its configuration, and prepare the workdir
//! (`deployment.json` and one directory per volume) — all or nothing. The first step of the
//! data flow: package → [`crate::deployment::Deployment`].

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub mod storage_plan;
pub mod volume_override;
pub mod volumes;

use anyhow::{bail, Context};
use image_loader::{read_gvmi, Loader, PackageRef};
use ya_runtime_api::deploy::{ContainerVolume, DeployResult, StartMode};

use crate::deploy::storage_plan::{plan_volumes, StoragePlan};
use crate::deploy::volume_override::Mount;
use crate::deployment::{Deployment, Image, Resources, FORMAT_VERSION};
use volumes::Volume;

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
