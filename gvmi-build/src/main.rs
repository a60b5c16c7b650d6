//! `gvmi-build`: a container image in, a `.gvmi` out, without a Docker daemon.
//!
//! ```sh
//! podman save -o app.tar app:1          # or: docker save, skopeo copy … oci-archive:app.tar
//! gvmi-build app.tar -o app.gvmi --url https://example.org/app.gvmi
//! ya-exescript --package app.gvmi try   # see it boot before publishing
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use gvmi_build::convert::{self, Content};
use gvmi_build::image::Image;
use gvmi_build::source::Source;
use gvmi_build::squashfs::Compression;
use gvmi_build::trailer::ContainerConfig;

/// Turns an OCI image layout or archive, a `docker save` / `podman save` archive, or a root
/// directory into a `.gvmi`, as gvmkit-build would from a Docker image.
#[derive(Debug, Parser)]
#[command(name = "gvmi-build", version)]
struct Args {
    /// The image: an OCI layout directory, an OCI archive, a docker/podman save archive (or its
    /// unpacked directory), or a plain root file-system directory.
    input: PathBuf,
    /// The `.gvmi` to write (replaced only once complete).
    #[arg(short, long)]
    output: PathBuf,
    /// Which image of the input, by tag (`app:1`) or digest (`sha256:…`, 12 digits at least);
    /// needed only when the input holds several.
    #[arg(long)]
    image: Option<String>,
    /// The squashfs compression (gvmkit-build's choices; lzo is its default).
    #[arg(long, value_enum, default_value_t = Compression::Lzo)]
    compression: Compression,
    /// Where the file will be served: prints the `hash:sha3:<hex>:<url>` reference a requestor's
    /// demand names.
    #[arg(long)]
    url: Option<String>,
    /// For a root directory: its config, a JSON object with Docker's fields (`Env`, `Cmd`,
    /// `Entrypoint`, `WorkingDir`, `Volumes`, `User`), bare or as an image config's `config`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// An environment entry `KEY=VALUE` (replaces one of the same KEY), repeatable.
    #[arg(long = "env")]
    env: Vec<String>,
    /// A volume path, repeatable.
    #[arg(long = "volume")]
    volumes: Vec<String>,
    /// The working directory.
    #[arg(long)]
    workdir: Option<String>,
    /// The entrypoint: a JSON list (`["/app","--serve"]`) or one program.
    #[arg(long)]
    entrypoint: Option<String>,
    /// The default arguments: a JSON list or one word.
    #[arg(long)]
    cmd: Option<String>,
    /// The user processes run as: `uid[:gid]` or a name the image's passwd knows.
    #[arg(long)]
    user: Option<String>,
}

/// A JSON list of strings, or one string as a list of one.
fn argv(text: &str, flag: &str) -> anyhow::Result<serde_json::Value> {
    if text.trim_start().starts_with('[') {
        let list: Vec<String> = serde_json::from_str(text)
            .with_context(|| format!("{flag} is not a JSON list of strings"))?;
        Ok(list.into())
    } else {
        Ok(vec![text.to_string()].into())
    }
}

/// The `config` object with the command line's overrides applied.
fn apply_overrides(
    mut config: serde_json::Map<String, serde_json::Value>,
    args: &Args,
) -> anyhow::Result<serde_json::Value> {
    use serde_json::Value;
    if !args.env.is_empty() {
        let mut env: Vec<String> = match config.get("Env") {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        for entry in &args.env {
            let Some((key, _)) = entry.split_once('=') else {
                bail!("--env {entry:?} is not KEY=VALUE");
            };
            env.retain(|e| e.split_once('=').map_or(e != key, |(k, _)| k != key));
            env.push(entry.clone());
        }
        config.insert("Env".into(), env.into());
    }
    if !args.volumes.is_empty() {
        let mut vols = match config.remove("Volumes") {
            Some(Value::Object(m)) => m,
            _ => Default::default(),
        };
        for v in &args.volumes {
            if !v.starts_with('/') {
                bail!("--volume {v:?} is not an absolute path");
            }
            vols.insert(v.clone(), Value::Object(Default::default()));
        }
        config.insert("Volumes".into(), Value::Object(vols));
    }
    if let Some(w) = &args.workdir {
        config.insert("WorkingDir".into(), w.clone().into());
    }
    if let Some(e) = &args.entrypoint {
        config.insert("Entrypoint".into(), argv(e, "--entrypoint")?);
    }
    if let Some(c) = &args.cmd {
        config.insert("Cmd".into(), argv(c, "--cmd")?);
    }
    if let Some(u) = &args.user {
        config.insert("User".into(), u.clone().into());
    }
    Ok(Value::Object(config))
}

/// A `config` object out of a file holding either the object or a whole image config.
fn config_file(
    path: &std::path::Path,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow!("{} is not JSON: {e}", path.display()))?;
    let value = match value.get("config") {
        Some(inner) => inner.clone(),
        None => value,
    };
    match value {
        serde_json::Value::Object(m) => Ok(m),
        _ => bail!("{} is not a JSON object", path.display()),
    }
}

/// A directory that holds no image: a root file system.
fn is_root_dir(path: &std::path::Path) -> bool {
    path.is_dir()
        && !["manifest.json", "index.json", "oci-layout"]
            .iter()
            .any(|f| path.join(f).exists())
}

fn human(bytes: u64) -> String {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let source;
    let image;
    let (content, base, id) = if is_root_dir(&args.input) {
        if args.image.is_some() {
            bail!(
                "--image picks an image of an archive or layout; {} is a root directory",
                args.input.display()
            );
        }
        let base = match &args.config {
            Some(p) => config_file(p)?,
            None => Default::default(),
        };
        (Content::Dir(&args.input), base, None)
    } else {
        if args.config.is_some() {
            bail!("--config is for a root directory; the image has its own (override fields with --env, --cmd, …)");
        }
        source = Source::open(&args.input)?;
        image = Image::resolve(&source, args.image.as_deref())?;
        eprintln!(
            "gvmi-build: {} (sha256:{}), {} layer{}, {}",
            image.name,
            image.id,
            image.layers.len(),
            if image.layers.len() == 1 { "" } else { "s" },
            human(image.layers.iter().map(|l| l.size).sum())
        );
        let base = match image.config.get("config") {
            Some(serde_json::Value::Object(m)) => m.clone(),
            _ => Default::default(),
        };
        (
            Content::Image(&source, &image),
            base,
            Some(image.id.clone()),
        )
    };
    let config_json = apply_overrides(base, args)?;
    let config = ContainerConfig::from_image(Some(&config_json), id.as_deref())?;
    let total: u64 = match &content {
        Content::Image(_, image) => image.layers.iter().map(|l| l.size).sum(),
        Content::Dir(_) => 0,
    };
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
    ) {
        bar.set_style(style);
    }
    let built = convert::build(content, &config, &args.output, args.compression, &|n| {
        bar.inc(n)
    });
    bar.finish_and_clear();
    let built = built?;
    eprintln!(
        "gvmi-build: wrote {} ({}) in {:.1} s",
        args.output.display(),
        human(built.size),
        started.elapsed().as_secs_f64()
    );
    println!("sha3-224: {}", built.sha3_224);
    match &args.url {
        Some(url) => println!("hash:sha3:{}:{url}", built.sha3_224),
        None => println!(
            "hash:sha3:{}:<the URL it is served at> (give --url to print it whole)",
            built.sha3_224
        ),
    }
    Ok(())
}

/// The error and its causes on one line, each cause once (typed errors often quote their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
    }
    line
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gvmi-build: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
