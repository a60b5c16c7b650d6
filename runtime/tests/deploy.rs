//! `ya-runtime-vm deploy` as the exe-unit runs it: the binary, real images, a real HTTP server.

use std::path::{Path, PathBuf};
use std::process::Output;

use test_fixtures::http::{Resource, Server};
use test_fixtures::images::{gvmi, SAMPLE_CONFIG};
use ya_runtime_api::deploy::{DeployResult, StartMode};
use ya_runtime_vm::deployment::Deployment;

const BIN: &str = env!("CARGO_BIN_EXE_ya-runtime-vm");

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    fn image(&self, name: &str, config: &str) -> (PathBuf, Vec<u8>) {
        let bytes = gvmi(self.dir.path(), name, config).unwrap();
        (self.path(name), bytes)
    }
    fn command(&self, workdir: &Path, package: &str, extra: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(BIN);
        c.arg("--workdir")
            .arg(workdir)
            .arg("--task-package")
            .arg(package)
            .args(extra)
            .env("YA_RUNTIME_VM_CACHE_DIR", self.path("cache"))
            .env_remove("YA_RUNTIME_VOLUME_OVERRIDE")
            .env_remove("YA_RUNTIME_HOSTNAME");
        c
    }
    async fn deploy(&self, workdir: &Path, package: &str, extra: &[&str]) -> Output {
        self.command(workdir, package, extra)
            .args(["deploy", "--"])
            .output()
            .await
            .unwrap()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failed command: non-zero status, nothing on stdout, exactly one line on stderr that contains
/// `needle`.
fn assert_clean_failure(o: &Output, needle: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "succeeded: {err}");
    assert!(
        o.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.contains(needle), "wanted {needle:?} in: {err}");
}

fn sha3_hex(data: &[u8]) -> String {
    let mut h = image_loader::HashAlgo::Sha3_256.hasher();
    h.update(data);
    h.finish().hex()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn deploys_a_local_image() {
    let env = Env::new();
    let (img, _) = env.image("app.gvmi", SAMPLE_CONFIG);
    let wd = env.path("work");
    let out = env
        .deploy(
            &wd,
            img.to_str().unwrap(),
            &[
                "--cpu-cores",
                "2",
                "--mem-gib",
                "0.5",
                "--hostname",
                "node-1",
            ],
        )
        .await;
    assert!(out.status.success(), "{}", stderr(&out));
    // stdout is exactly one JSON document that the exe-unit's own parser reads.
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 1);
    let _: serde_json::Value = serde_json::from_str(&text).unwrap();
    let result = DeployResult::from_bytes(&out.stdout).unwrap();
    assert_eq!(result.valid, Ok(String::new()));
    assert_eq!(result.start_mode, StartMode::Blocking);
    let paths: Vec<_> = result.vols.iter().map(|v| v.path.as_str()).collect();
    assert_eq!(paths, ["/golem/input", "/golem/output"]);
    for v in &result.vols {
        assert!(wd.join(&v.name).is_dir(), "{}", v.name);
    }
    assert!(
        text.starts_with(r#"{"valid":{"Ok":""},"vols":[{"name":"vol-"#),
        "{text}"
    );

    // The exe-unit's volume override (host kind): its paths join the image's, in both forms.
    for json in [
        r#"["/golem/input", "/data/"]"#,
        r#"{"/data": {"host": {}}, "/golem/output": {"host": {}}}"#,
    ] {
        let wd2 = env.path(&format!("work-{}", json.len()));
        let out = env
            .deploy(&wd2, img.to_str().unwrap(), &["--volume-override", json])
            .await;
        assert!(out.status.success(), "{}", stderr(&out));
        let result = DeployResult::from_bytes(&out.stdout).unwrap();
        let paths: Vec<_> = result.vols.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, ["/data", "/golem/input", "/golem/output"], "{json}");
    }

    let d = Deployment::load(&wd).unwrap();
    assert_eq!(d.image.path, img.canonicalize().unwrap());
    assert_eq!(d.resources.cpu_cores, 2);
    assert_eq!(d.resources.mem_gib, 0.5);
    assert_eq!(d.resources.storage_gib, 0.25);
    assert_eq!(d.hostname, "node-1");
    assert_eq!(d.config.working_dir, "/golem/work");
    assert_eq!(
        d.volumes
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>(),
        result
            .vols
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
    );
    let mut want = vec!["deployment.json".to_string()];
    want.extend(result.vols.iter().map(|v| v.name.clone()));
    want.sort();
    assert_eq!(entries(&wd), want);
}

#[tokio::test]
async fn redeploy_keeps_volume_contents_and_names() {
    let env = Env::new();
    let (img, _) = env.image("app.gvmi", SAMPLE_CONFIG);
    let wd = env.path("work");
    let first =
        DeployResult::from_bytes(env.deploy(&wd, img.to_str().unwrap(), &[]).await.stdout).unwrap();
    let input = wd.join(&first.vols[0].name).join("data.txt");
    std::fs::write(&input, "keep me").unwrap();
    let second =
        DeployResult::from_bytes(env.deploy(&wd, img.to_str().unwrap(), &[]).await.stdout).unwrap();
    assert_eq!(
        first.vols.iter().map(|v| &v.name).collect::<Vec<_>>(),
        second.vols.iter().map(|v| &v.name).collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read_to_string(&input).unwrap(), "keep me");
}

#[tokio::test]
async fn bad_inputs_fail_in_one_line_and_leave_the_workdir_untouched() {
    let env = Env::new();
    let (good, bytes) = env.image("good.gvmi", SAMPLE_CONFIG);
    let mut corrupt = bytes.clone();
    let n = corrupt.len();
    corrupt[n - 20] ^= 0x55; // inside the JSON: CRC mismatch
    std::fs::write(env.path("corrupt.gvmi"), &corrupt).unwrap();
    let (bad_user, _) = env.image("user.gvmi", r#"{"User":"a:b:c"}"#);
    let (bad_vol, _) = env.image("vol.gvmi", r#"{"Volumes":{"relative/path":{}}}"#);
    let (proc_vol, _) = env.image("proc.gvmi", r#"{"Volumes":{"/proc":{}}}"#);
    let many: Vec<String> = (0..64).map(|i| format!(r#""/v{i}":{{}}"#)).collect();
    let (many_vols, _) = env.image(
        "many.gvmi",
        &format!(r#"{{"Volumes":{{{}}}}}"#, many.join(",")),
    );
    let huge = format!(
        r#"{{"/a":{{"storage":{{"size":{max}}}}},"/b":{{"storage":{{"size":{max}}}}}}}"#,
        max = u64::MAX
    );
    let corrupt_path = env.path("corrupt.gvmi");
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (corrupt_path.display().to_string(), vec![], "crc32"),
        (
            env.path("missing.gvmi").display().to_string(),
            vec![],
            "does not exist",
        ),
        ("ftp://host/x.gvmi".into(), vec![], "accepted forms"),
        (
            format!("hash:sha3:abcd:{}", good.display()),
            vec![],
            "hex digits",
        ),
        (
            format!("hash:sha3:{}:{}", sha3_hex(b"other"), good.display()),
            vec![],
            "hash mismatch",
        ),
        (bad_user.display().to_string(), vec![], "invalid User"),
        (bad_vol.display().to_string(), vec![], "not absolute"),
        (
            proc_vol.display().to_string(),
            vec![],
            "volume path \"/proc\" is reserved",
        ),
        (
            many_vols.display().to_string(),
            vec![],
            "the image and --volume-override make 64 volumes; at most 16 are supported",
        ),
        (
            good.display().to_string(),
            vec![
                "--volume-override",
                r#"{"/dev/shm":{"ram":{"size":"1MiB"}}}"#,
            ],
            "volume path \"/dev/shm\" is reserved",
        ),
        (
            good.display().to_string(),
            vec!["--volume-override", &huge],
            "sizes add up past 2^64 bytes",
        ),
        (
            good.display().to_string(),
            vec!["--cpu-cores", "0"],
            "--cpu-cores",
        ),
        (
            good.display().to_string(),
            vec!["--mem-gib", "-1"],
            "--mem-gib",
        ),
        (
            good.display().to_string(),
            vec!["--storage-gib", "NaN"],
            "--storage-gib",
        ),
        (
            good.display().to_string(),
            vec!["--hostname", "bad_name"],
            "invalid hostname",
        ),
        (
            good.display().to_string(),
            vec!["--tcg-cache-mib", "4"],
            "--tcg-cache-mib",
        ),
        (
            good.display().to_string(),
            vec!["--max-package-gib", "0"],
            "--max-package-gib must be a positive number of GiB, got 0",
        ),
        (
            good.display().to_string(),
            vec!["--volume-override", r#"{"/s":{"storage":{"size":"1GiB"}}}"#],
            "the storage volumes take 1.0 GiB of the 256.0 MiB that --storage-gib grants",
        ),
        (
            good.display().to_string(),
            vec![
                "--storage-gib",
                "4",
                "--volume-override",
                r#"{"/":{"storage":{"size":"3GiB"}},"/s":{"storage":{"size":"2GiB"}}}"#,
            ],
            "the storage volumes ask for 5.0 GiB in all, more than the 4.0 GiB",
        ),
        (
            good.display().to_string(),
            vec![
                "--volume-override",
                r#"{"/s":{"storage":{"size":"100KiB"}}}"#,
            ],
            "the storage volume at /s has 100.0 KiB, less than the 16.0 MiB a disk needs",
        ),
        (
            good.display().to_string(),
            vec![
                "--volume-override",
                r#"{"/s":{"storage":{"size":"16MiB","errors":"ignore"}}}"#,
            ],
            "errors \"ignore\" is not continue, remount-ro or panic",
        ),
        (
            good.display().to_string(),
            vec!["--volume-override", r#"["relative/path"]"#],
            "--volume-override: volume path \"relative/path\" is not absolute",
        ),
        (
            good.display().to_string(),
            vec!["--volume-override", r#"{"/":{"host":{}}}"#],
            "/ cannot be a host volume",
        ),
        (
            good.display().to_string(),
            vec!["--volume-override", r#"{"/x":{"nfs":{}}}"#],
            "--volume-override is not a volume list or map",
        ),
        (
            good.display().to_string(),
            vec!["--volume-override", r#"{"/x":{"ram":{"size":0}}}"#],
            "the ram volume at /x has size 0",
        ),
    ];
    for (package, extra, needle) in cases {
        let wd = env.path("never-created");
        let out = env.deploy(&wd, &package, &extra).await;
        assert_clean_failure(&out, needle);
        assert!(!wd.exists(), "{package}: workdir left behind");
    }
    // An existing workdir with an earlier deployment keeps it as it was.
    let wd = env.path("existing");
    let ok = env.deploy(&wd, good.to_str().unwrap(), &[]).await;
    assert!(ok.status.success());
    let before = std::fs::read(wd.join("deployment.json")).unwrap();
    let listing = entries(&wd);
    let (other, _) = env.image("other.gvmi", r#"{"Volumes":{"/data":{}}}"#);
    let mut broken = std::fs::read(&other).unwrap();
    broken[0] = b'X'; // no squashfs magic
    std::fs::write(&other, broken).unwrap();
    let out = env.deploy(&wd, other.to_str().unwrap(), &[]).await;
    assert_clean_failure(&out, "squashfs magic");
    assert_eq!(std::fs::read(wd.join("deployment.json")).unwrap(), before);
    assert_eq!(entries(&wd), listing);
}

#[tokio::test]
async fn usage_errors_are_one_clear_line() {
    let env = Env::new();
    let (img, _) = env.image("app.gvmi", SAMPLE_CONFIG);
    let wd = env.path("work");
    let out = env
        .command(&wd, img.to_str().unwrap(), &[])
        .arg("deploy")
        .arg("--")
        .arg("extra")
        .output()
        .await
        .unwrap();
    assert_clean_failure(&out, "no arguments");
    let out = env
        .command(&wd, img.to_str().unwrap(), &["--bogus"])
        .arg("deploy")
        .output()
        .await
        .unwrap();
    assert_clean_failure(&out, "--bogus");
    let out = tokio::process::Command::new(BIN)
        .args(["--workdir", wd.to_str().unwrap(), "deploy"])
        .output()
        .await
        .unwrap();
    assert_clean_failure(&out, "--task-package");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_over_http_and_concurrently_downloads_once() {
    let env = Env::new();
    let (_, bytes) = env.image("app.gvmi", SAMPLE_CONFIG);
    let server = Server::start("127.0.0.1:0").await.unwrap();
    server.put("/app.gvmi", Resource::bytes(bytes.clone()));
    let package = format!("hash:sha3:{}:{}", sha3_hex(&bytes), server.url("/app.gvmi"));
    let runs: Vec<_> = (0..3)
        .map(|i| {
            let wd = env.path(&format!("work{i}"));
            let mut cmd = env.command(&wd, &package, &[]);
            cmd.args(["deploy", "--"]);
            tokio::spawn(async move { (wd, cmd.output().await.unwrap()) })
        })
        .collect();
    for r in runs {
        let (wd, out) = r.await.unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let d = Deployment::load(&wd).unwrap();
        assert!(d.image.path.starts_with(env.path("cache")));
        assert_eq!(
            d.image.digest.as_deref(),
            Some(format!("sha3-256:{}", sha3_hex(&bytes)).as_str())
        );
        assert_eq!(std::fs::read(&d.image.path).unwrap(), bytes);
    }
    assert_eq!(server.stats("/app.gvmi").requests, 1);
}

#[tokio::test]
async fn http_errors_fail_cleanly() {
    let env = Env::new();
    let (_, bytes) = env.image("app.gvmi", SAMPLE_CONFIG);
    let server = Server::start("127.0.0.1:0").await.unwrap();
    server.put("/app.gvmi", Resource::bytes(bytes.clone()));
    let wd = env.path("work");
    let out = env.deploy(&wd, &server.url("/nope.gvmi"), &[]).await;
    assert_clean_failure(&out, "HTTP 404");
    assert!(!wd.exists());
    let wrong = format!("hash:sha3:{}:{}", sha3_hex(b"x"), server.url("/app.gvmi"));
    let out = env.deploy(&wd, &wrong, &[]).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = stderr(&out);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("hash mismatch") && last.contains(&sha3_hex(&bytes)),
        "{err}"
    );
    assert!(!wd.exists());
}
