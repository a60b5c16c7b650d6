//! # bench-gvmi-build
//!
//! `gvmi-build` on a generated multi-layer image (a `docker save` archive: text and incompressible
//! files, small and large, and a last layer that deletes and replaces), against `mksquashfs` alone
//! over the already-merged tree (unpacked from the result) in the same run, with the same
//! compression. Also the peak RSS of gvmi-build and of its mksquashfs, for a smaller image of the
//! same kind too, to show that memory does not follow the image's size.
//!
//! Usage: `bench-gvmi-build GVMI_BUILD WORK_DIR [MiB (1024)] [runs (2)]`; prints a markdown table.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A writer that hashes what it writes.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Deterministic bytes: incompressible (xorshift) or text-like (compressible ~3x).
struct Bytes {
    state: u64,
    text: bool,
}

impl Read for Bytes {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        const WORDS: &[&[u8]] = &[
            b"golem ",
            b"provider ",
            b"requestor ",
            b"image ",
            b"layer\n",
        ];
        let mut i = 0;
        while i < buf.len() {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            if self.text {
                let w = WORDS[(self.state % WORDS.len() as u64) as usize];
                let n = w.len().min(buf.len() - i);
                buf[i..i + n].copy_from_slice(&w[..n]);
                i += n;
            } else {
                let b = self.state.to_le_bytes();
                let n = b.len().min(buf.len() - i);
                buf[i..i + n].copy_from_slice(&b[..n]);
                i += n;
            }
        }
        Ok(buf.len())
    }
}

fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// Writes layer `index` of an image of `mib` MiB in `layers` layers to `path`; its diff_id.
fn write_layer(path: &Path, index: usize, layers: usize, mib: u64) -> io::Result<String> {
    let mut out = Hashing {
        inner: BufWriter::with_capacity(1 << 20, File::create(path)?),
        hash: Sha256::new(),
    };
    {
        let mut b = tar::Builder::new(&mut out);
        let per_layer = (mib << 20) / layers as u64;
        // 1000 small files, then 3 MiB files, half text and half incompressible.
        for i in 0..1000u64 {
            let size = 4096;
            let mut data = Bytes {
                state: i + 1,
                text: true,
            }
            .take(size);
            b.append_data(
                &mut file_header(size),
                format!("l{index}/small/{i:04}.txt"),
                &mut data,
            )?;
        }
        let big = 3u64 << 20;
        let count = per_layer.saturating_sub(1000 * 4096) / big;
        for i in 0..count {
            let mut data = Bytes {
                state: (index as u64) << 32 | (i + 7),
                text: i % 2 == 0,
            }
            .take(big);
            b.append_data(
                &mut file_header(big),
                format!("l{index}/big/{i:03}.bin"),
                &mut data,
            )?;
        }
        if index + 1 == layers && index > 0 {
            // The last layer deletes some of the first's files and hides a directory.
            for i in 0..100u64 {
                b.append_data(
                    &mut file_header(0),
                    format!("l0/small/.wh.{i:04}.txt"),
                    io::empty(),
                )?;
            }
            b.append_data(&mut file_header(0), "l0/big/.wh..wh..opq", io::empty())?;
        }
        b.finish()?;
    }
    out.flush()?;
    Ok(hex::encode(out.hash.finalize()))
}

/// A docker save archive of `mib` MiB in 4 layers at `path`.
fn make_archive(dir: &Path, mib: u64) -> io::Result<PathBuf> {
    let layers = 4;
    let mut diff_ids = Vec::new();
    let mut files = Vec::new();
    for i in 0..layers {
        let p = dir.join(format!("layer{i}.tar"));
        diff_ids.push(format!("sha256:{}", write_layer(&p, i, layers, mib)?));
        files.push(p);
    }
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], "Volumes": {"/out": {}}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))?;
    let id = hex::encode(Sha256::digest(&config));
    let archive = dir.join(format!("image-{mib}m.tar"));
    let mut b = tar::Builder::new(BufWriter::with_capacity(1 << 20, File::create(&archive)?));
    b.append_data(
        &mut file_header(config.len() as u64),
        format!("{id}.json"),
        config.as_slice(),
    )?;
    let mut names = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let name = format!("{i}/layer.tar");
        b.append_path_with_name(f, &name)?;
        names.push(name);
        std::fs::remove_file(f)?;
    }
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": format!("{id}.json"), "RepoTags": ["bench:1"], "Layers": names}
    ]))?;
    b.append_data(
        &mut file_header(manifest.len() as u64),
        "manifest.json",
        manifest.as_slice(),
    )?;
    b.into_inner()?.flush()?;
    Ok(archive)
}

/// VmHWM of `pid` in KiB (0 once it is gone).
fn hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Runs `cmd`; its wall time and the peak RSS (KiB) of it and of its children, sampled.
fn timed(mut cmd: Command) -> (Duration, u64, u64) {
    let start = Instant::now();
    let mut child = cmd.stdout(Stdio::null()).spawn().expect("spawn");
    let (mut own, mut kids) = (0, 0);
    loop {
        own = own.max(hwm_kib(child.id()));
        for k in children(child.id()) {
            kids = kids.max(hwm_kib(k));
        }
        if let Some(status) = child.try_wait().expect("wait") {
            assert!(status.success(), "{cmd:?} failed: {status}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (start.elapsed(), own, kids)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(bin), Some(work)) = (args.first(), args.get(1)) else {
        eprintln!("usage: bench-gvmi-build GVMI_BUILD WORK_DIR [MiB] [runs]");
        std::process::exit(2);
    };
    let mib: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let runs: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(2);
    let work = Path::new(work);
    std::fs::create_dir_all(work).expect("work dir");

    let small = make_archive(work, mib / 4).expect("the small image");
    let archive = make_archive(work, mib).expect("the image");
    let out = work.join("out.gvmi");
    let tree = work.join("merged");
    let plain = work.join("plain.sqfs");

    // The small image: gvmi-build's memory only.
    let (_, small_rss, small_mksquashfs) = timed({
        let mut c = Command::new(bin);
        c.arg(&small).arg("-o").arg(&out);
        c
    });
    std::fs::remove_file(&small).ok();

    let (mut ours, mut alone) = (Vec::new(), Vec::new());
    let (mut rss, mut mksquashfs_rss) = (0, 0);
    for run in 0..runs {
        let (took, own, kids) = timed({
            let mut c = Command::new(bin);
            c.arg(&archive).arg("-o").arg(&out);
            c
        });
        ours.push(took);
        rss = rss.max(own);
        mksquashfs_rss = mksquashfs_rss.max(kids);
        if run == 0 {
            let status = Command::new("unsquashfs")
                .args(["-no-progress", "-quiet", "-d"])
                .arg(&tree)
                .arg(&out)
                .stdout(Stdio::null())
                .status()
                .expect("unsquashfs");
            assert!(status.success(), "unsquashfs failed");
        }
        let (took, _, _) = timed({
            let mut c = Command::new("mksquashfs");
            c.arg(&tree)
                .arg(&plain)
                .args(["-noappend", "-quiet", "-no-progress", "-comp", "lzo"]);
            c
        });
        alone.push(took);
    }
    let input = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
    let output = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let (o, a) = (median(ours), median(alone));
    println!("| measure | figure | reference | ratio |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| convert a {mib} MiB docker archive, 4 layers, lzo (median of {runs}) | {:.2} s ({:.0} MiB in, {:.0} MiB out) | mksquashfs alone over the merged tree: {:.2} s | {:.2} |",
        o.as_secs_f64(),
        input as f64 / 1048576.0,
        output as f64 / 1048576.0,
        a.as_secs_f64(),
        o.as_secs_f64() / a.as_secs_f64()
    );
    println!(
        "| peak RSS of gvmi-build | {:.1} MiB for {mib} MiB | {:.1} MiB for {} MiB | |",
        rss as f64 / 1024.0,
        small_rss as f64 / 1024.0,
        mib / 4
    );
    println!(
        "| peak RSS of its mksquashfs | {:.1} MiB for {mib} MiB | {:.1} MiB for {} MiB | |",
        mksquashfs_rss as f64 / 1024.0,
        small_mksquashfs as f64 / 1024.0,
        mib / 4
    );
}
