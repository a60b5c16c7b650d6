//! `deploy`: resolve and verify the package, read its configuration, and prepare the workdir
//! (`deployment.json` and one directory per volume) — all or nothing.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use image_loader::{read_gvmi, Loader, PackageRef};
use ya_runtime_api::deploy::{ContainerVolume, DeployResult, StartMode};

use crate::deployment::{Deployment, Image, RamVolume, Resources, FORMAT_VERSION};
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
    /// Granted resources.
    pub resources: Resources,
    /// The VM's hostname.
    pub hostname: String,
    /// The exe-unit's `--volume-override`, parsed (empty: the image's volumes as they are).
    pub volume_override: BTreeMap<String, Mount>,
}

/// The host-volume paths (the image's `VOLUME`s with the override applied: a path it names takes
/// the override's kind, paths it adds are added) and the `ram` volumes. `storage` volumes and a
/// `ram` root are refused for now.
fn plan_volumes<'a>(
    image: impl IntoIterator<Item = &'a str>,
    overrides: &'a BTreeMap<String, Mount>,
) -> anyhow::Result<(Vec<&'a str>, Vec<RamVolume>)> {
    let mut ram = Vec::new();
    for (path, m) in overrides {
        match m {
            Mount::Host => {}
            Mount::Ram { .. } if path == "/" => {
                bail!("--volume-override: a ram volume on / is not supported yet; ram volumes elsewhere are")
            }
            Mount::Ram { size } => ram.push(RamVolume {
                path: path.clone(),
                size: *size,
            }),
            Mount::Storage { .. } => bail!(
                "--volume-override: storage volumes (at {path}) are not supported yet; host and ram volumes are"
            ),
        }
    }
    let host = image
        .into_iter()
        .filter(|p| {
            // An image VOLUME that the override turns into another kind is not a host volume.
            let n = volumes::normalize(p).ok();
            !ram.iter().any(|r| Some(&r.path) == n.as_ref())
        })
        .chain(
            overrides
                .iter()
                .filter(|(_, m)| **m == Mount::Host)
                .map(|(p, _)| p.as_str()),
        )
        .collect();
    Ok((host, ram))
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
    let loader = Loader::new(&req.cache_dir)?;
    let local = loader.fetch(&package).await?;
    let path = local.path.clone();
    let image = tokio::task::spawn_blocking(move || read_gvmi(&path))
        .await
        .context("image reader task failed")?
        .with_context(|| format!("image {}", local.path.display()))?;
    let user = image.config.user_spec()?;
    let (paths, ram_volumes) = plan_volumes(image.config.volume_paths(), &req.volume_override)?;
    let vols = volumes::plan(paths).context("the image declares an unusable VOLUME")?;
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
        ram_volumes,
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
