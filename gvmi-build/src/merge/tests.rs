use super::*;
use proptest::prelude::*;

/// One entry of a test layer.
#[derive(Debug, Clone)]
enum E {
    Dir(&'static str, u32),
    File(&'static str, &'static [u8]),
    Mode(&'static str, &'static [u8], u32, u64),
    Sym(&'static str, &'static str),
    Hard(&'static str, &'static str),
    Chr(&'static str, u32, u32),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(7);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
            E::File(p, data) => {
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Mode(p, data, mode, uid) => {
                h.set_mode(*mode);
                h.set_uid(*uid);
                h.set_gid(*uid);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Sym(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Hard(p, t) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Chr(p, major, minor) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_size(0);
                h.set_device_major(*major).unwrap();
                h.set_device_minor(*minor).unwrap();
                b.append_data(&mut h, p, io::empty()).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// What one entry of the merged tar is, in a form easy to compare.
fn describe(e: &mut tar::Entry<'_, &[u8]>) -> String {
    let h = e.header();
    let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
    let mode = h.mode().unwrap();
    let kind = match h.entry_type() {
        tar::EntryType::Directory => "d".to_string(),
        tar::EntryType::Symlink => format!(
            "l->{}",
            String::from_utf8_lossy(&e.link_name_bytes().unwrap())
        ),
        tar::EntryType::Link => format!(
            "h->{}",
            String::from_utf8_lossy(&e.link_name_bytes().unwrap())
        ),
        tar::EntryType::Char => format!(
            "c{}:{}",
            h.device_major().unwrap().unwrap(),
            h.device_minor().unwrap().unwrap()
        ),
        _ => {
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            format!("f={data}")
        }
    };
    format!("{path} {kind} {mode:o} {}", e.header().uid().unwrap())
}

/// Merges the layers, returning the merged tar's entries in order.
fn merge(layers: &[Vec<u8>]) -> Result<Vec<String>, MergeError> {
    let mut plan = Plan::new();
    for l in layers {
        plan.add_layer(l.as_slice())?;
    }
    plan.check()?;
    let mut out = tar::Builder::new(Vec::new());
    plan.write_dirs(&mut out)?;
    for (i, l) in layers.iter().enumerate() {
        plan.write_layer(i, l.as_slice(), &mut out)?;
    }
    let bytes = out.into_inner().unwrap();
    let mut archive = tar::Archive::new(bytes.as_slice());
    Ok(archive
        .entries()
        .unwrap()
        .map(|e| describe(&mut e.unwrap()))
        .collect())
}

#[test]
fn later_layers_replace_and_whiteouts_delete() {
    let l1 = layer(&[
        E::Dir("etc", 0o755),
        E::File("etc/a", b"one"),
        E::File("etc/b", b"gone"),
        E::Dir("var/cache", 0o700),
        E::File("var/cache/x", b"hidden"),
        E::File("bin", b"a file, later a dir"),
    ]);
    let l2 = layer(&[
        E::File("etc/a", b"two"),
        E::File("etc/.wh.b", b""),
        E::File("var/cache/.wh..wh..opq", b""),
        E::File("var/cache/y", b"kept"),
        E::Dir("bin", 0o750),
        E::File("bin/sh", b"shell"),
    ]);
    assert_eq!(
        merge(&[l1, l2]).unwrap(),
        [
            "bin d 750 0",
            "etc d 755 0",
            "var d 755 0",
            "var/cache d 700 0",
            "etc/a f=two 644 0",
            "var/cache/y f=kept 644 0",
            "bin/sh f=shell 644 0",
        ]
    );
}

#[test]
fn a_file_over_a_directory_drops_the_directory_s_tree() {
    let l1 = layer(&[E::Dir("opt/app", 0o755), E::File("opt/app/bin", b"x")]);
    let l2 = layer(&[E::Sym("opt/app", "/usr/lib/app")]);
    assert_eq!(
        merge(&[l1, l2]).unwrap(),
        ["opt d 755 0", "opt/app l->/usr/lib/app 777 0"]
    );
}

#[test]
fn a_whiteout_keeps_what_its_own_layer_adds_and_an_opaque_dir_keeps_its_own_layer() {
    let l1 = layer(&[E::File("d/old", b"1"), E::File("d/x", b"1")]);
    let l2 = layer(&[
        E::File("d/new", b"2"),
        E::File("d/.wh..wh..opq", b""),
        E::File("d/.wh.nothing-there", b""),
    ]);
    assert_eq!(merge(&[l1, l2]).unwrap(), ["d d 755 0", "d/new f=2 644 0"]);
}

#[test]
fn a_layer_that_hides_and_fills_a_directory_keeps_what_it_adds_under_a_parent() {
    // Found by the property test below: the whiteout of a/c after this layer's own a/c/d.
    let l1 = layer(&[E::File("a/c/old", b"1"), E::Dir("a/c/d", 0o700)]);
    let l2 = layer(&[E::Dir("a/c/d", 0o755), E::File("a/.wh.c", b"")]);
    assert_eq!(
        merge(&[l1, l2]).unwrap(),
        ["a d 755 0", "a/c d 755 0", "a/c/d d 755 0"]
    );
}

#[test]
fn modes_owners_devices_and_links_come_through() {
    let l1 = layer(&[
        E::Mode("usr/bin/su", b"su", 0o4755, 0),
        E::Mode("home/u/\u{00fc}ber \u{1f600}.txt", b"u", 0o600, 1000),
        E::Hard("usr/bin/su2", "usr/bin/su"),
        E::Chr("dev/null", 1, 3),
        E::Sym("etc/mtab", "/proc/mounts"),
    ]);
    assert_eq!(
        merge(&[l1]).unwrap(),
        [
            "dev d 755 0",
            "etc d 755 0",
            "home d 755 0",
            "home/u d 755 0",
            "usr d 755 0",
            "usr/bin d 755 0",
            "usr/bin/su f=su 4755 0",
            "home/u/\u{00fc}ber \u{1f600}.txt f=u 600 1000",
            "usr/bin/su2 h->usr/bin/su 644 0",
            "dev/null c1:3 666 0",
            "etc/mtab l->/proc/mounts 777 0",
        ]
    );
}

#[test]
fn traversal_and_writes_through_links_are_refused() {
    let err = |layers: &[Vec<u8>]| merge(layers).unwrap_err().to_string();
    // The tar crate refuses to write a `..` path, so this layer is made by hand.
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..9].copy_from_slice(b"../escape");
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    let mut dotdot = h.as_bytes().to_vec();
    dotdot.extend_from_slice(&[0u8; 1024]);
    assert_eq!(
        err(&[dotdot]),
        "layer 1: \"../escape\" leaves the image (a `..` component)"
    );
    let through = layer(&[E::Sym("lib", "/tmp"), E::File("lib/x", b"x")]);
    assert_eq!(
        err(&[through]),
        "layer 1: \"lib/x\" is written through \"lib\", which is not a directory"
    );
    let dangling = layer(&[E::Hard("a", "nowhere")]);
    assert_eq!(
        err(&[dangling]),
        "layer 1: the hard link \"a\" to \"nowhere\": the target is not in the image"
    );
    let l1 = layer(&[E::File("t", b"old"), E::Hard("l", "t")]);
    let l2 = layer(&[E::File("t", b"new")]);
    assert_eq!(
        err(&[l1, l2]),
        "layer 1: the hard link \"l\" to \"t\": the target is replaced by a later layer"
    );
}

#[test]
fn a_lower_layer_link_is_replaced_by_a_directory_above() {
    let l1 = layer(&[E::Sym("lib", "usr/lib")]);
    let l2 = layer(&[E::File("lib/x", b"x")]);
    assert_eq!(
        merge(&[l1, l2]).unwrap(),
        ["lib d 755 0", "lib/x f=x 644 0"]
    );
}

#[test]
fn a_layer_that_is_not_a_tar_is_an_error() {
    let e = merge(&[vec![0x42; 700]]).unwrap_err().to_string();
    assert!(e.starts_with("layer 1: not a readable tar"), "{e}");
}

proptest! {
    /// Whatever the layers hold, the merge never panics, never writes a path twice, and writes
    /// every directory before anything inside it.
    #[test]
    fn merges_are_well_formed(
        layers in proptest::collection::vec(
            proptest::collection::vec((0usize..6, 0usize..4, 0usize..4), 0..12), 1..4)
    ) {
        const NAMES: [&str; 6] = ["a", "b", "a/c", "a/.wh.c", "b/.wh..wh..opq", "a/c/d"];
        let built: Vec<Vec<u8>> = layers
            .iter()
            .map(|l| {
                let entries: Vec<E> = l
                    .iter()
                    .map(|&(n, kind, _)| match kind {
                        0 => E::Dir(NAMES[n], 0o755),
                        1 => E::File(NAMES[n], b"x"),
                        2 => E::Sym(NAMES[n], "/x"),
                        _ => E::Hard(NAMES[n], "b"),
                    })
                    .collect();
                layer(&entries)
            })
            .collect();
        if let Ok(out) = merge(&built) {
            let paths: Vec<String> = out
                .iter()
                .map(|l| l.split(' ').next().unwrap().trim_end_matches('/').to_string())
                .collect();
            let mut unique = paths.clone();
            unique.sort();
            unique.dedup();
            prop_assert_eq!(unique.len(), paths.len(), "{:?}", out);
            for (i, p) in paths.iter().enumerate() {
                for a in ancestors(p) {
                    let at = paths.iter().position(|q| q == a);
                    prop_assert!(at.is_some_and(|j| j < i), "{} before {}: {:?}", a, p, out);
                }
            }
        }
    }
}
