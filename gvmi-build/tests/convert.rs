//! The binary end to end on images made here (an OCI layout, its OCI archive, a `docker save`
//! archive, a root directory): the squashfs holds exactly the merged tree (read back with
//! unsquashfs), the trailer is gvmkit-build's and the runtime's reader takes it, and bad input
//! is one clear line, a non-zero status and no file left.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use test_fixtures::oci::{self, Entry};

const BIN: &str = env!("CARGO_BIN_EXE_gvmi-build");

fn convert(input: &Path, out: &Path, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The layers of the test image: a base, an update with whiteouts and an opaque directory, an
/// app layer with links, special files and odd names.
pub fn layers() -> Vec<Vec<u8>> {
    vec![
        oci::layer(&[
            Entry::Dir("etc", 0o755),
            Entry::File(
                "etc/passwd",
                b"root:x:0:0::/root:/bin/sh\n".to_vec(),
                0o644,
                0,
            ),
            Entry::File("etc/old.conf", b"old\n".to_vec(), 0o644, 0),
            Entry::Dir("var/cache/apt", 0o755),
            Entry::File("var/cache/apt/pkgcache.bin", vec![1; 4096], 0o644, 0),
            Entry::File("usr/bin/tool", b"v1".to_vec(), 0o755, 0),
        ]),
        oci::layer(&[
            Entry::File("etc/.wh.old.conf", Vec::new(), 0o644, 0),
            Entry::File("var/cache/apt/.wh..wh..opq", Vec::new(), 0o644, 0),
            Entry::File("var/cache/apt/fresh", b"new".to_vec(), 0o644, 0),
            Entry::File("usr/bin/tool", b"v2".to_vec(), 0o755, 0),
        ]),
        oci::layer(&[
            Entry::File("usr/bin/su", b"setuid".to_vec(), 0o4755, 0),
            Entry::HardLink("usr/bin/su-again", "usr/bin/su"),
            Entry::Symlink("usr/bin/t", "/usr/bin/tool"),
            Entry::Char("dev/null2", 1, 3),
            Entry::File(
                "home/app/\u{00e9}t\u{00e9} \u{1f600}.txt",
                b"utf8".to_vec(),
                0o600,
                1000,
            ),
            Entry::Xattr("usr/bin/ping", "user.note", b"kept"),
            Entry::Zeros("data/sparse.bin", 64 << 20),
            Entry::Dir("golem/work", 0o755),
        ]),
    ]
}

pub fn config() -> serde_json::Value {
    serde_json::json!({
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/golem/work",
        "Volumes": {"/golem/output": {}, "/golem/input": {}},
        "User": "1000:1000",
        "Labels": {"org.example": "yes"}
    })
}

/// `unsquashfs -lln` of the image, one "mode owner size-or-device path" line per entry
/// (directories without their size, which is squashfs's own, and no times).
fn listing(gvmi: &Path) -> Vec<String> {
    let out = Command::new("unsquashfs")
        .arg("-lln")
        .arg(gvmi)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let at = l.find("squashfs-root")?;
            let f: Vec<&str> = l[..at].split_whitespace().collect();
            let size = match f[0].chars().next() {
                Some('d') => String::new(),
                Some('c') => format!("{}{} ", f[2], f[3]),
                _ => format!("{} ", f[2]),
            };
            Some(format!(
                "{} {} {size}{}",
                f[0],
                f[1],
                &l[at + "squashfs-root".len()..]
            ))
        })
        .collect()
}

/// What the merged layers (plus Docker's init layer) must give.
const EXPECTED: &[&str] = &[
    "drwxr-xr-x 0/0 ",
    "-rwxr-xr-x 0/0 0 /.dockerenv",
    "drwxr-xr-x 0/0 /data",
    "-rw-r--r-- 0/0 67108864 /data/sparse.bin",
    "drwxr-xr-x 0/0 /dev",
    "-rwxr-xr-x 0/0 0 /dev/console",
    "crw-rw-rw- 0/0 1,3 /dev/null2",
    "drwxr-xr-x 0/0 /dev/pts",
    "drwxr-xr-x 0/0 /dev/shm",
    "drwxr-xr-x 0/0 /etc",
    "-rwxr-xr-x 0/0 0 /etc/hostname",
    "-rwxr-xr-x 0/0 0 /etc/hosts",
    "lrwxrwxrwx 0/0 12 /etc/mtab -> /proc/mounts",
    "-rw-r--r-- 0/0 26 /etc/passwd",
    "-rwxr-xr-x 0/0 0 /etc/resolv.conf",
    "drwxr-xr-x 0/0 /golem",
    "drwxr-xr-x 0/0 /golem/work",
    "drwxr-xr-x 0/0 /home",
    "drwxr-xr-x 0/0 /home/app",
    "-rw------- 1000/1000 4 /home/app/\u{e9}t\u{e9} \u{1f600}.txt",
    "drwxr-xr-x 0/0 /proc",
    "drwxr-xr-x 0/0 /sys",
    "drwxr-xr-x 0/0 /usr",
    "drwxr-xr-x 0/0 /usr/bin",
    "-rw-r--r-- 0/0 1 /usr/bin/ping",
    "-rwsr-xr-x 0/0 6 /usr/bin/su",
    "-rwsr-xr-x 0/0 6 /usr/bin/su-again",
    "lrwxrwxrwx 0/0 13 /usr/bin/t -> /usr/bin/tool",
    "-rwxr-xr-x 0/0 2 /usr/bin/tool",
    "drwxr-xr-x 0/0 /var",
    "drwxr-xr-x 0/0 /var/cache",
    "drwxr-xr-x 0/0 /var/cache/apt",
    "-rw-r--r-- 0/0 3 /var/cache/apt/fresh",
];

/// Extracts the image and checks what a listing does not show: contents, the hard link, the
/// extended attribute.
fn check_contents(gvmi: &Path, dir: &Path) {
    let out = Command::new("unsquashfs")
        .args(["-no-progress", "-d"])
        .arg(dir)
        .arg(gvmi)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let read = |p: &str| std::fs::read(dir.join(p)).unwrap();
    assert_eq!(read("usr/bin/tool"), b"v2");
    assert_eq!(read("var/cache/apt/fresh"), b"new");
    assert_eq!(read("home/app/\u{e9}t\u{e9} \u{1f600}.txt"), b"utf8");
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        std::fs::metadata(dir.join("usr/bin/su")).unwrap(),
        std::fs::metadata(dir.join("usr/bin/su-again")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2), "one inode, two names");
    let xattr = Command::new("python3")
        .args([
            "-c",
            "import os,sys; print(os.getxattr(sys.argv[1], 'user.note').decode())",
        ])
        .arg(dir.join("usr/bin/ping"))
        .output()
        .unwrap();
    assert_eq!(
        text(&xattr.stdout).trim(),
        "kept",
        "{}",
        text(&xattr.stderr)
    );
    // 64 MiB of zeros take no room in the image (mksquashfs stores them sparse).
    assert!(std::fs::metadata(gvmi).unwrap().len() < 1 << 20);
}

#[test]
fn an_oci_layout_its_archive_and_a_docker_archive_give_the_same_image() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = layers();
    let id = oci::oci_layout(&tmp.path().join("layout"), "app:1", &config(), &layers);
    oci::archive_dir(&tmp.path().join("layout"), &tmp.path().join("oci.tar"));
    oci::docker_archive(
        &tmp.path().join("docker.tar"),
        &[(&["app:1"], config(), layers.clone())],
    );
    let mut listings = Vec::new();
    for input in ["layout", "oci.tar", "docker.tar"] {
        let out_path = tmp.path().join(format!("{input}.gvmi"));
        let out = convert(
            &tmp.path().join(input),
            &out_path,
            &["--url", "http://h/x.gvmi"],
        );
        assert!(out.status.success(), "{input}: {}", text(&out.stderr));
        let stdout = text(&out.stdout);
        let hash = stdout
            .lines()
            .next()
            .unwrap()
            .strip_prefix("sha3-224: ")
            .unwrap();
        assert_eq!(hash.len(), 56);
        assert_eq!(
            stdout.lines().nth(1).unwrap(),
            format!("hash:sha3:{hash}:http://h/x.gvmi")
        );
        let image = image_loader::gvmi::read_gvmi(&out_path).unwrap();
        assert_eq!(image.config.env, ["PATH=/usr/bin:/bin", "GREETING=hello"]);
        assert_eq!(image.config.user, "1000:1000");
        assert_eq!(image.config.working_dir, "/golem/work");
        let json = std::fs::read(&out_path).unwrap();
        let tail = text(&json[json.len() - 400..]);
        assert!(tail.contains(&format!("\"Image\":\"{id}\"")), "{tail}");
        listings.push(listing(&out_path));
    }
    // The same bytes from every form: the output is reproducible.
    let bytes = |f: &str| std::fs::read(tmp.path().join(f)).unwrap();
    assert!(bytes("layout.gvmi") == bytes("docker.tar.gvmi"));
    assert!(bytes("layout.gvmi") == bytes("oci.tar.gvmi"));
    assert_eq!(listings[0], EXPECTED);
    assert_eq!(listings[1], EXPECTED);
    assert_eq!(listings[2], EXPECTED);
    check_contents(&tmp.path().join("docker.tar.gvmi"), &tmp.path().join("x"));
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A run that must fail: one line on stderr, status 1, no output and no partial file left.
fn refused(input: &Path, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("out.gvmi");
    let out = convert(input, &out_path, extra);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // The image's name may come first; the error is one line.
    let info = |l: &str| l.contains(" (sha256:") && l.ends_with("iB");
    let lines: Vec<&str> = err.lines().filter(|l| !info(l)).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(out.stdout.is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
    assert!(left.is_empty(), "{left:?}");
    eprintln!("refused: {}", lines[0]);
    lines[0].to_string()
}

#[test]
fn bad_input_is_one_clear_line_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let layers = layers();
    let docker = t.join("docker.tar");
    oci::docker_archive(&docker, &[(&["app:1"], config(), layers.clone())]);

    // A truncated archive.
    let bytes = std::fs::read(&docker).unwrap();
    std::fs::write(t.join("cut.tar"), &bytes[..bytes.len() / 2]).unwrap();
    let e = refused(&t.join("cut.tar"), &[]);
    assert!(e.starts_with("gvmi-build: "), "{e}");

    // A missing blob, a blob that is not what its digest says.
    let layout = t.join("layout");
    oci::oci_layout(&layout, "app:1", &config(), &layers);
    let blobs: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let is_config = |p: &PathBuf| std::fs::read(p).unwrap().starts_with(b"{\"architecture\"");
    let config_blob = blobs.iter().find(|p| is_config(p)).unwrap().clone();
    let saved = std::fs::read(&config_blob).unwrap();
    std::fs::write(&config_blob, text(&saved).replace("hello", "HELLO")).unwrap();
    let e = refused(&layout, &[]);
    assert!(
        e.starts_with("gvmi-build: the config blobs/sha256/")
            && e.contains("does not match its digest: expected sha256:"),
        "{e}"
    );
    std::fs::remove_file(&config_blob).unwrap();
    let e = refused(&layout, &[]);
    assert!(e.contains("is not in"), "{e}");
    std::fs::write(&config_blob, &saved).unwrap();
    // A layer cut short.
    let biggest = blobs
        .iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    let layer = std::fs::read(&biggest).unwrap();
    std::fs::write(&biggest, &layer[..layer.len() / 2]).unwrap();
    let e = refused(&layout, &[]);
    assert!(e.starts_with("gvmi-build: layer 3: "), "{e}");
    std::fs::write(&biggest, &layer).unwrap();

    // A layer that writes outside the image, a config that is not JSON.
    let evil = t.join("evil.tar");
    let bad_layer = oci::layer(&[Entry::Raw(b"../../etc/cron.d/x")]);
    oci::docker_archive(&evil, &[(&["evil:1"], config(), vec![bad_layer])]);
    assert_eq!(
        refused(&evil, &[]),
        "gvmi-build: layer 1: \"../../etc/cron.d/x\" leaves the image (a `..` component)"
    );
    let notjson = t.join("notjson");
    std::fs::create_dir(&notjson).unwrap();
    std::fs::write(
        notjson.join("manifest.json"),
        "[{\"Config\": \"c.json\", \"Layers\": []}]",
    )
    .unwrap();
    std::fs::write(notjson.join("c.json"), "not json").unwrap();
    let e = refused(&notjson, &[]);
    assert!(
        e.starts_with("gvmi-build: c.json is not a valid image config:"),
        "{e}"
    );

    // Several images and no choice; a choice that matches none.
    let two = t.join("two.tar");
    oci::docker_archive(
        &two,
        &[
            (&["a:1"], config(), vec![layers[0].clone()]),
            (&["b:2"], config(), vec![layers[1].clone()]),
        ],
    );
    assert_eq!(
        refused(&two, &[]),
        "gvmi-build: the input holds several images, pick one with --image: a:1, b:2"
    );
    assert_eq!(
        refused(&two, &["--image", "c"]),
        "gvmi-build: no image matches \"c\"; the input has: a:1, b:2"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = convert(&two, &dir.path().join("b.gvmi"), &["--image", "b:2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A compressed archive, an input that is not there.
    std::fs::write(t.join("x.tar.gz"), oci::gzip(&bytes)).unwrap();
    assert!(refused(&t.join("x.tar.gz"), &[])
        .ends_with("decompress it first (an image archive is a plain tar)"));
    assert!(refused(&t.join("nothing"), &[]).starts_with("gvmi-build: cannot read"));
}

#[test]
fn a_root_directory_takes_its_config_from_a_file_and_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::write(root.join("bin/app"), "#!/bin/sh\necho app\n").unwrap();
    let config = tmp.path().join("config.json");
    std::fs::write(
        &config,
        r#"{"config": {"Env": ["A=1", "B=2"], "Cmd": ["/bin/app"], "Volumes": {"/in": {}}}}"#,
    )
    .unwrap();
    let out_path = tmp.path().join("root.gvmi");
    let out = convert(
        &root,
        &out_path,
        &[
            "--config",
            config.to_str().unwrap(),
            "--env",
            "B=3",
            "--volume",
            "/out",
            "--workdir",
            "/work",
            "--entrypoint",
            r#"["/bin/sh","-c"]"#,
            "--user",
            "5:6",
            "--compression",
            "zstd",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let image = image_loader::gvmi::read_gvmi(&out_path).unwrap();
    assert_eq!(image.config.env, ["A=1", "B=3"]);
    assert_eq!(image.config.entrypoint, ["/bin/sh", "-c"]);
    assert_eq!(image.config.cmd, ["/bin/app"]);
    assert_eq!(image.config.working_dir, "/work");
    assert_eq!(image.config.user, "5:6");
    assert_eq!(
        image.config.volumes.keys().collect::<Vec<_>>(),
        ["/in", "/out"]
    );
    assert!(listing(&out_path).iter().any(|l| l.ends_with(" /bin/app")));
    assert_eq!(
        refused(&root, &["--image", "x"]),
        format!(
            "gvmi-build: --image picks an image of an archive or layout; {} is a root directory",
            root.display()
        )
    );
    assert_eq!(
        refused(&root, &["--env", "NOEQUALS"]),
        "gvmi-build: --env \"NOEQUALS\" is not KEY=VALUE"
    );
}

#[test]
fn every_compression_gvmkit_build_offers_and_an_image_picked_by_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let two = tmp.path().join("two.tar");
    let layers = layers();
    oci::docker_archive(
        &two,
        &[
            (&["a:1"], config(), vec![layers[0].clone()]),
            (
                &["b:2"],
                config(),
                vec![layers[0].clone(), layers[1].clone()],
            ),
        ],
    );
    // b's id, from the name gvmi-build prints for it.
    let by_tag = convert(&two, &tmp.path().join("b.gvmi"), &["--image", "b:2"]);
    assert!(by_tag.status.success(), "{}", text(&by_tag.stderr));
    let err = text(&by_tag.stderr);
    let id = &err[err.find("(sha256:").unwrap() + 8..][..64];
    for (n, compression) in ["lzo", "gzip", "lz4", "xz", "zstd"].iter().enumerate() {
        let out_path = tmp.path().join(format!("{compression}.gvmi"));
        // Each compression with b picked by a different length of its digest.
        let wanted = format!("sha256:{}", &id[..12 + n * 10]);
        let out = convert(
            &two,
            &out_path,
            &["--image", &wanted, "--compression", compression],
        );
        assert!(out.status.success(), "{compression}: {}", text(&out.stderr));
        let super_block = Command::new("unsquashfs")
            .arg("-s")
            .arg(&out_path)
            .output()
            .unwrap();
        assert!(
            text(&super_block.stdout).contains(&format!("Compression {compression}")),
            "{}",
            text(&super_block.stdout)
        );
        let listing = listing(&out_path);
        assert!(
            listing.iter().any(|l| l.ends_with(" /var/cache/apt/fresh")),
            "{listing:?}"
        );
    }
}

#[test]
fn a_multi_platform_index_resolves_to_linux_amd64() {
    let tmp = tempfile::tempdir().unwrap();
    let layout = tmp.path().join("multi");
    let arm = serde_json::json!({"Env": ["ARCH=arm64"]});
    let amd = serde_json::json!({"Env": ["ARCH=amd64"]});
    let layers = layers();
    let ids = oci::oci_multi_platform(
        &layout,
        "app:1",
        &[
            ("arm64", arm, vec![layers[0].clone()]),
            ("amd64", amd, vec![layers[0].clone(), layers[1].clone()]),
        ],
    );
    let out_path = tmp.path().join("multi.gvmi");
    let out = convert(&layout, &out_path, &["--image", "app:1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let image = image_loader::gvmi::read_gvmi(&out_path).unwrap();
    assert_eq!(image.config.env, ["ARCH=amd64"]);
    assert!(text(&out.stderr).contains(&ids[1]), "{}", text(&out.stderr));
    // Only arm64: a clear error.
    let only_arm = tmp.path().join("arm");
    oci::oci_multi_platform(
        &only_arm,
        "app:1",
        &[("arm64", serde_json::json!({}), vec![layers[0].clone()])],
    );
    assert_eq!(
        refused(&only_arm, &[]),
        "gvmi-build: app:1 has no linux/amd64 image"
    );
}
