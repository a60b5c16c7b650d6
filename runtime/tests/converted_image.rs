//! An image made here as image tools make them (an OCI layout and a `docker save` archive of
//! several layers, with whiteouts, an opaque directory, links, a setuid file, a large sparse file
//! and UTF-8 names), converted by gvmi-build, deployed and booted: the guest sees exactly the
//! merged tree, the image's Env, WorkingDir and User apply, and its VOLUMEs are the volumes.

use test_fixtures::oci::{self, Entry};
use test_harness::{finish, pid_of, sh, Activity};

/// The layers: a busybox base, an update that deletes and hides, an app layer.
fn layers() -> Vec<Vec<u8>> {
    let busybox = std::fs::read("/bin/busybox").expect("busybox-static (scripts/setup.sh)");
    let mut base = vec![
        Entry::File("bin/busybox", busybox, 0o755, 0),
        Entry::File(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".to_vec(),
            0o644,
            0,
        ),
        Entry::File("etc/group", b"root:x:0:\napp:x:1000:\n".to_vec(), 0o644, 0),
        Entry::File("etc/old.conf", b"old\n".to_vec(), 0o644, 0),
        Entry::File("var/cache/apt/pkgcache.bin", vec![1; 4096], 0o644, 0),
        Entry::File("usr/bin/tool", b"v1\n".to_vec(), 0o755, 0),
        Entry::Dir("tmp", 0o1777),
    ];
    for applet in [
        "bin/sh", "bin/ls", "bin/cat", "bin/stat", "bin/find", "bin/id", "bin/env", "bin/pwd",
        "bin/sort", "bin/grep", "bin/cut",
    ] {
        base.push(Entry::Symlink(applet, "busybox"));
    }
    vec![
        oci::layer(&base),
        oci::layer(&[
            Entry::File("etc/.wh.old.conf", Vec::new(), 0o644, 0),
            Entry::File("var/cache/apt/.wh..wh..opq", Vec::new(), 0o644, 0),
            Entry::File("var/cache/apt/fresh", b"new\n".to_vec(), 0o644, 0),
            Entry::File("usr/bin/tool", b"v2\n".to_vec(), 0o755, 0),
        ]),
        oci::layer(&[
            Entry::File("usr/bin/su", b"setuid\n".to_vec(), 0o4755, 0),
            Entry::HardLink("usr/bin/su-again", "usr/bin/su"),
            Entry::Symlink("usr/bin/t", "/usr/bin/tool"),
            Entry::File(
                "home/app/\u{e9}t\u{e9} \u{1f600}.txt",
                b"utf8\n".to_vec(),
                0o600,
                1000,
            ),
            Entry::Zeros("data/sparse.bin", 256 << 20),
            Entry::Dir("golem/work", 0o777),
        ]),
    ]
}

fn config() -> serde_json::Value {
    serde_json::json!({
        "Env": ["PATH=/usr/bin:/bin", "GREETING=hello"],
        "Cmd": ["/bin/sh"],
        "WorkingDir": "/golem/work",
        "Volumes": {"/golem/output": {}, "/golem/input": {}},
        "User": "1000:1000"
    })
}

/// What the guest must list: `stat -c '%n %A %u:%g %s %h'` of every path under these roots.
const EXPECTED: &str = "\
/data drwxr-xr-x 0:0
/data/sparse.bin -rw-r--r-- 0:0 268435456 1
/home drwxr-xr-x 0:0
/home/app drwxr-xr-x 0:0
/home/app/\u{e9}t\u{e9} \u{1f600}.txt -rw------- 1000:1000 5 1
/usr drwxr-xr-x 0:0
/usr/bin drwxr-xr-x 0:0
/usr/bin/su -rwsr-xr-x 0:0 7 2
/usr/bin/su-again -rwsr-xr-x 0:0 7 2
/usr/bin/t lrwxrwxrwx 0:0 13 1
/usr/bin/tool -rwxr-xr-x 0:0 3 1
/var drwxr-xr-x 0:0
/var/cache drwxr-xr-x 0:0
/var/cache/apt drwxr-xr-x 0:0
/var/cache/apt/fresh -rw-r--r-- 0:0 4 1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_converted_from_layers_boots_with_its_merged_tree_config_and_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let layers = layers();
    oci::oci_layout(&tmp.path().join("layout"), "app:1", &config(), &layers);
    oci::docker_archive(
        &tmp.path().join("docker.tar"),
        &[(&["app:1"], config(), layers)],
    );
    let from_layout = oci::convert(&tmp.path().join("layout"), &tmp.path().join("a.gvmi"));
    let from_docker = oci::convert(&tmp.path().join("docker.tar"), &tmp.path().join("b.gvmi"));
    // The same bytes whichever form the image came in (gvmi-build's output is reproducible).
    assert!(from_layout == from_docker, "the two conversions differ");

    let activity = Activity::deploy_image(&from_layout).await;
    let volumes: Vec<String> = activity.record()["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(volumes, ["/golem/input", "/golem/output"]);
    let (rt, mut events) = activity.start().await;
    let script = "find /data /home /usr /var | sort | while read -r p; do \
                  if [ -d \"$p\" ] && [ ! -L \"$p\" ]; then stat -c '%n %A %u:%g' \"$p\"; \
                  else stat -c '%n %A %u:%g %s %h' \"$p\"; fi; done; \
                  echo; id; pwd; env | sort | grep -E '^(GREETING|PATH)='; \
                  cat /usr/bin/tool /var/cache/apt/fresh /home/app/*.txt; \
                  ls /etc/old.conf 2>&1 | cut -d: -f2-; \
                  grep -c ' /golem/[a-z]* virtiofs ' /proc/mounts";
    let pid = pid_of(&rt, sh(script)).await;
    let (out, err, code) = finish(&mut events, pid).await;
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&err));
    let out = String::from_utf8(out).unwrap();
    let (tree, rest) = out.split_once("\n\n").unwrap();
    assert_eq!(format!("{tree}\n"), EXPECTED);
    assert_eq!(
        rest,
        "uid=1000(app) gid=1000(app) groups=1000(app)\n/golem/work\n\
         GREETING=hello\nPATH=/usr/bin:/bin\n\
         v2\nnew\nutf8\n \
         /etc/old.conf: No such file or directory\n2\n"
    );
    assert_eq!(activity.shut_down(&rt).await, 0);
    assert!(activity.leftovers().await.is_empty());
}
