//! The GVMI reader against real squashfs images made with mksquashfs, and against every way a
//! trailer or superblock can be broken.

use std::fs;
use std::path::Path;

use image_loader::gvmi::{parse_gvmi_bytes, read_gvmi, GvmiError, MAX_CONFIG_LEN};
use image_loader::{IdOrName, UserSpec};
use test_fixtures::images::{gvmi, sample_rootfs, squashfs, trailer, SAMPLE_CONFIG};

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn real_squashfs(dir: &Path) -> Vec<u8> {
    let root = sample_rootfs(dir).unwrap();
    squashfs(&root, &dir.join("fs.sqfs")).unwrap()
}

#[test]
fn reads_a_real_image() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = gvmi(dir.path(), "ok.gvmi", SAMPLE_CONFIG).unwrap();
    let img = read_gvmi(&dir.path().join("ok.gvmi")).unwrap();
    assert_eq!(img.file_len, bytes.len() as u64);
    assert!(img.squashfs_bytes > 96 && img.squashfs_bytes < img.file_len);
    assert_eq!(img.config.working_dir, "/golem/work");
    assert_eq!(img.config.cmd, ["/bin/sh"]);
    assert!(img.config.entrypoint.is_empty());
    assert!(img.config.env.iter().any(|e| e == "GREETING=hi"));
    assert_eq!(
        img.config.volume_paths().collect::<Vec<_>>(),
        ["/golem/input", "/golem/output"]
    );
    assert_eq!(img.config.user_spec().unwrap(), UserSpec::root());
}

#[test]
fn reads_user_forms_from_the_trailer() {
    let dir = tempfile::tempdir().unwrap();
    gvmi(dir.path(), "u.gvmi", r#"{"User":"app:100"}"#).unwrap();
    let img = read_gvmi(&dir.path().join("u.gvmi")).unwrap();
    assert_eq!(
        img.config.user_spec().unwrap(),
        UserSpec {
            user: IdOrName::Name("app".into()),
            group: Some(IdOrName::Id(100))
        }
    );
}

#[test]
fn missing_file() {
    let e = read_gvmi(Path::new("/nonexistent/x.gvmi")).unwrap_err();
    assert!(matches!(e, GvmiError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/x.gvmi"));
}

#[test]
fn shorter_than_a_trailer() {
    let dir = tempfile::tempdir().unwrap();
    for len in [0, 1, 11] {
        let p = write(dir.path(), "short", &vec![b'0'; len]);
        assert!(
            matches!(read_gvmi(&p), Err(GvmiError::TooShort { len: l }) if l == len as u64),
            "{len}"
        );
    }
}

#[test]
fn non_digit_length() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = real_squashfs(dir.path());
    bytes.extend_from_slice(&trailer(b"{}"));
    let n = bytes.len();
    bytes[n - 3] = b'x';
    let p = write(dir.path(), "bad-len", &bytes);
    let e = read_gvmi(&p).unwrap_err();
    assert!(matches!(e, GvmiError::BadLength { .. }), "{e}");
    // The squashfs alone ends in arbitrary bytes, not a length.
    let p = write(dir.path(), "plain", &real_squashfs(dir.path()));
    assert!(matches!(read_gvmi(&p), Err(GvmiError::BadLength { .. })));
}

#[test]
fn length_larger_than_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = real_squashfs(dir.path());
    bytes.extend_from_slice(&trailer(b"{}"));
    let n = bytes.len();
    bytes[n - 8..].copy_from_slice(format!("{:08}", n).as_bytes());
    let p = write(dir.path(), "long", &bytes);
    let e = read_gvmi(&p).unwrap_err();
    assert!(
        matches!(e, GvmiError::LengthTooLarge { json_len, len } if json_len == n as u64 && len == n as u64),
        "{e}"
    );
}

#[test]
fn config_larger_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = real_squashfs(dir.path());
    let big = MAX_CONFIG_LEN + 1;
    bytes.resize(bytes.len() + big as usize + 4, b' ');
    bytes.extend_from_slice(format!("{big:08}").as_bytes());
    let p = write(dir.path(), "big", &bytes);
    let e = read_gvmi(&p).unwrap_err();
    assert!(
        matches!(e, GvmiError::ConfigTooLarge { json_len } if json_len == big),
        "{e}"
    );
}

#[test]
fn crc_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = real_squashfs(dir.path());
    let sq = bytes.len();
    bytes.extend_from_slice(&trailer(SAMPLE_CONFIG.as_bytes()));
    // Flip one byte of the JSON.
    bytes[sq + 4 + 10] ^= 0x01;
    let p = write(dir.path(), "crc", &bytes);
    let e = read_gvmi(&p).unwrap_err();
    assert!(matches!(e, GvmiError::CrcMismatch { .. }), "{e}");
    // And one byte of the stored CRC.
    let mut bytes = real_squashfs(dir.path());
    bytes.extend_from_slice(&trailer(SAMPLE_CONFIG.as_bytes()));
    bytes[sq] ^= 0x80;
    let p = write(dir.path(), "crc2", &bytes);
    assert!(matches!(read_gvmi(&p), Err(GvmiError::CrcMismatch { .. })));
}

#[test]
fn json_that_is_not_a_container_config() {
    let dir = tempfile::tempdir().unwrap();
    for (i, json) in [&b"[1,2]"[..], b"not json", b"{\"Env\":\"A=1\"}", b"null"]
        .iter()
        .enumerate()
    {
        let mut bytes = real_squashfs(dir.path());
        bytes.extend_from_slice(&trailer(json));
        let p = write(dir.path(), &format!("json{i}"), &bytes);
        let e = read_gvmi(&p).unwrap_err();
        assert!(matches!(e, GvmiError::NotContainerConfig(_)), "{e}");
        assert!(!e.to_string().contains('\n'));
    }
}

#[test]
fn missing_squashfs_magic() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = real_squashfs(dir.path());
    bytes[0] = b'X';
    bytes.extend_from_slice(&trailer(b"{}"));
    let p = write(dir.path(), "magic", &bytes);
    assert!(matches!(read_gvmi(&p), Err(GvmiError::NotSquashfs)));
    // A trailer with nothing (or too little) in front of it.
    let p = write(dir.path(), "bare", &trailer(b"{}"));
    assert!(matches!(read_gvmi(&p), Err(GvmiError::NotSquashfs)));
}

#[test]
fn unsupported_squashfs_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = real_squashfs(dir.path());
    bytes[28] = 3;
    bytes.extend_from_slice(&trailer(b"{}"));
    let p = write(dir.path(), "v3", &bytes);
    let e = read_gvmi(&p).unwrap_err();
    assert!(
        matches!(e, GvmiError::SquashfsVersion { major: 3, .. }),
        "{e}"
    );
}

#[test]
fn squashfs_overlapping_the_trailer() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = real_squashfs(dir.path());
    let sq = bytes.len() as u64;
    bytes.extend_from_slice(&trailer(b"{}"));
    // Claim the squashfs runs into the trailer.
    bytes[40..48].copy_from_slice(&(sq + 1).to_le_bytes());
    let p = write(dir.path(), "overlap", &bytes);
    let e = read_gvmi(&p).unwrap_err();
    assert!(
        matches!(e, GvmiError::SquashfsOverlapsTrailer { bytes_used, trailer_start } if bytes_used == sq + 1 && trailer_start == sq),
        "{e}"
    );
    // Truncating the padded squashfs below bytes_used is caught as well.
    let mut bytes = real_squashfs(dir.path());
    let used = u64::from_le_bytes(bytes[40..48].try_into().unwrap());
    bytes.truncate(used as usize - 1);
    bytes.extend_from_slice(&trailer(b"{}"));
    let p = write(dir.path(), "cut", &bytes);
    assert!(matches!(
        read_gvmi(&p),
        Err(GvmiError::SquashfsOverlapsTrailer { .. })
    ));
}

#[test]
fn memory_and_file_readers_agree() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = gvmi(dir.path(), "ok.gvmi", SAMPLE_CONFIG).unwrap();
    assert_eq!(
        parse_gvmi_bytes(&bytes).unwrap(),
        read_gvmi(&dir.path().join("ok.gvmi")).unwrap()
    );
}
