//! The loader against a real HTTP server on loopback: pinned and unpinned downloads, wrong
//! hashes, dropped connections resumed with Range, 404, concurrent fetches, local packages.

use std::path::Path;
use std::sync::Arc;

use image_loader::{Cache, HashAlgo, LoadError, Loader, PackageRef};
use test_fixtures::http::{Drop, Resource, Server};

const SIZE: usize = 3 * 1024 * 1024 + 123;

fn payload() -> Vec<u8> {
    (0..SIZE).map(|i| (i * 31 % 251) as u8).collect()
}

fn sha3_hex(data: &[u8]) -> String {
    let mut h = HashAlgo::Sha3_256.hasher();
    h.update(data);
    h.finish().hex()
}

fn pinned(server: &Server, path: &str, hex: &str) -> PackageRef {
    PackageRef::parse(&format!("hash:sha3:{hex}:{}", server.url(path))).unwrap()
}

/// A server with the test payload at `/img.gvmi` (ranges, no ETag, no drops).
async fn serve_payload() -> (Server, Vec<u8>) {
    let server = Server::start("127.0.0.1:0").await.unwrap();
    let data = payload();
    server.put("/img.gvmi", Resource::bytes(data.clone()));
    (server, data)
}

/// Fetches `path` pinned to the digest of `data` into a new cache; keeps the cache alive.
async fn fetch_pinned_fresh(
    server: &Server,
    path: &str,
    data: &[u8],
) -> (tempfile::TempDir, image_loader::LocalPackage) {
    let cache = tempfile::tempdir().unwrap();
    let got = Loader::new(cache.path())
        .unwrap()
        .fetch(&pinned(server, path, &sha3_hex(data)))
        .await
        .unwrap();
    (cache, got)
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test]
async fn good_hash_lands_in_the_cache_once() {
    let (server, data) = serve_payload().await;
    let cache = tempfile::tempdir().unwrap();
    let loader = Loader::new(cache.path()).unwrap();
    let r = pinned(&server, "/img.gvmi", &sha3_hex(&data));
    let got = loader.fetch(&r).await.unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(got.digest.unwrap().hex(), sha3_hex(&data));
    assert!(got.path.starts_with(cache.path()));
    assert!(files_in(&cache.path().join("partial")).is_empty());
    // A second fetch is served from the cache.
    let again = loader.fetch(&r).await.unwrap();
    assert_eq!(again.path, got.path);
    assert_eq!(server.stats("/img.gvmi").requests, 1);
}

#[tokio::test]
async fn wrong_hash_names_both_digests_and_keeps_nothing() {
    let (server, data) = serve_payload().await;
    let cache = tempfile::tempdir().unwrap();
    let loader = Loader::new(cache.path()).unwrap();
    let wrong = sha3_hex(b"something else");
    let e = loader
        .fetch(&pinned(&server, "/img.gvmi", &wrong))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, LoadError::HashMismatch { .. }), "{msg}");
    assert!(
        msg.contains(&wrong) && msg.contains(&sha3_hex(&data)),
        "{msg}"
    );
    assert!(!msg.contains('\n'));
    assert!(files_in(&cache.path().join("partial")).is_empty());
    assert!(files_in(&cache.path().join("images")).is_empty());
}

#[tokio::test]
async fn dropped_connection_is_resumed_with_range() {
    let server = Server::start("127.0.0.1:0").await.unwrap();
    let data = payload();
    let mut res = Resource::bytes(data.clone());
    res.etag = Some("\"v1\"".into());
    res.drop = Some(Drop {
        after_bytes: SIZE as u64 / 2,
        times: 2,
    });
    server.put("/img.gvmi", res);
    let (_cache, got) = fetch_pinned_fresh(&server, "/img.gvmi", &data).await;
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    let stats = server.stats("/img.gvmi");
    assert_eq!(stats.requests, 3, "{stats:?}");
    assert_eq!(stats.range_requests, 2, "{stats:?}");
    // Resumed, not restarted: the body went over the wire once.
    assert_eq!(stats.body_bytes, SIZE as u64, "{stats:?}");
}

#[tokio::test]
async fn server_without_ranges_restarts_from_zero() {
    let server = Server::start("127.0.0.1:0").await.unwrap();
    let data = payload();
    let mut res = Resource::bytes(data.clone());
    res.ranges = false;
    res.drop = Some(Drop {
        after_bytes: 1000,
        times: 1,
    });
    server.put("/img.gvmi", res);
    let (_cache, got) = fetch_pinned_fresh(&server, "/img.gvmi", &data).await;
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    assert_eq!(server.stats("/img.gvmi").requests, 2);
}

#[tokio::test]
async fn partial_file_from_an_earlier_run_is_resumed() {
    let (server, data) = serve_payload().await;
    let cache_dir = tempfile::tempdir().unwrap();
    let hex = sha3_hex(&data);
    let cache = Cache::open(cache_dir.path()).unwrap();
    let key = format!("sha3-256-{hex}");
    std::fs::write(cache.partial_path(&key), &data[..SIZE / 3]).unwrap();
    let loader = Loader::new(cache_dir.path()).unwrap();
    let got = loader
        .fetch(&pinned(&server, "/img.gvmi", &hex))
        .await
        .unwrap();
    assert_eq!(std::fs::read(&got.path).unwrap(), data);
    let stats = server.stats("/img.gvmi");
    assert_eq!(stats.range_requests, 1);
    assert_eq!(stats.body_bytes, (SIZE - SIZE / 3) as u64);
}

#[tokio::test]
async fn corrupt_partial_file_fails_the_hash_and_is_removed() {
    let (server, data) = serve_payload().await;
    let cache_dir = tempfile::tempdir().unwrap();
    let hex = sha3_hex(&data);
    let cache = Cache::open(cache_dir.path()).unwrap();
    let partial = cache.partial_path(&format!("sha3-256-{hex}"));
    std::fs::write(&partial, vec![0u8; 1000]).unwrap();
    let loader = Loader::new(cache_dir.path()).unwrap();
    let r = pinned(&server, "/img.gvmi", &hex);
    assert!(matches!(
        loader.fetch(&r).await,
        Err(LoadError::HashMismatch { .. })
    ));
    assert!(!partial.exists());
    // The next attempt starts clean and succeeds.
    assert!(loader.fetch(&r).await.is_ok());
}

#[tokio::test]
async fn not_found_is_a_clear_error_without_retries() {
    let server = Server::start("127.0.0.1:0").await.unwrap();
    let cache = tempfile::tempdir().unwrap();
    let loader = Loader::new(cache.path()).unwrap();
    let url = server.url("/missing.gvmi");
    let e = loader
        .fetch(&PackageRef::parse(&url).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, LoadError::HttpStatus { .. }), "{e}");
    assert!(
        e.to_string().contains("404") && e.to_string().contains(&url),
        "{e}"
    );
    assert_eq!(server.stats("/missing.gvmi").requests, 1);
}

#[tokio::test]
async fn unreachable_server_gives_up() {
    // Bind and drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let loader = Loader::new(cache.path()).unwrap();
    let r = PackageRef::parse(&format!("http://127.0.0.1:{port}/x.gvmi")).unwrap();
    let e = loader.fetch(&r).await.unwrap_err();
    // Five failures in a row without progress, as documented.
    assert!(matches!(e, LoadError::GaveUp { attempts: 5, .. }), "{e}");
}

#[tokio::test]
async fn a_package_over_the_size_limit_is_refused_whether_announced_or_not() {
    let (server, data) = serve_payload().await;
    let cache = tempfile::tempdir().unwrap();
    let loader = Loader::new(cache.path())
        .unwrap()
        .with_max_package_bytes(1 << 20);
    let e = loader
        .fetch(&pinned(&server, "/img.gvmi", &sha3_hex(&data)))
        .await
        .unwrap_err();
    assert!(
        matches!(e, LoadError::TooLarge { limit, .. } if limit == 1 << 20),
        "{e}"
    );
    assert_eq!(server.stats("/img.gvmi").requests, 1);
    assert!(files_in(&cache.path().join("partial")).is_empty());
    assert!(files_in(&cache.path().join("images")).is_empty());

    // A server that announces no length and never stops.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let head = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
                if conn.write_all(head).await.is_err() {
                    return;
                }
                let chunk = vec![0u8; 64 * 1024];
                while conn.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let endless = PackageRef::parse(&format!(
        "hash:sha3:{}:http://{addr}/endless.gvmi",
        sha3_hex(b"x")
    ))
    .unwrap();
    let e = loader.fetch(&endless).await.unwrap_err();
    assert!(matches!(e, LoadError::TooLarge { .. }), "{e}");
    assert!(files_in(&cache.path().join("partial")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetches_download_once() {
    let (server, data) = serve_payload().await;
    let cache = tempfile::tempdir().unwrap();
    let r = Arc::new(pinned(&server, "/img.gvmi", &sha3_hex(&data)));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (r, dir) = (r.clone(), cache.path().to_path_buf());
            tokio::spawn(async move { Loader::new(dir).unwrap().fetch(&r).await })
        })
        .collect();
    let mut paths = Vec::new();
    for t in tasks {
        paths.push(t.await.unwrap().unwrap().path);
    }
    paths.dedup();
    assert_eq!(paths.len(), 1);
    assert_eq!(std::fs::read(&paths[0]).unwrap(), data);
    assert_eq!(server.stats("/img.gvmi").requests, 1);
}

#[tokio::test]
async fn unpinned_url_is_revalidated_with_its_etag() {
    let server = Server::start("127.0.0.1:0").await.unwrap();
    let data = payload();
    let mut res = Resource::bytes(data.clone());
    res.etag = Some("\"one\"".into());
    server.put("/img.gvmi", res.clone());
    let cache = tempfile::tempdir().unwrap();
    let loader = Loader::new(cache.path()).unwrap();
    let r = PackageRef::parse(&server.url("/img.gvmi")).unwrap();
    let first = loader.fetch(&r).await.unwrap();
    assert_eq!(first.digest.as_ref().unwrap().hex(), sha3_hex(&data));
    let second = loader.fetch(&r).await.unwrap();
    assert_eq!(second, first);
    assert_eq!(server.stats("/img.gvmi").not_modified, 1);
    // New content under the same URL replaces the entry.
    let mut changed = data.clone();
    changed[0] ^= 1;
    res.body = test_fixtures::http::Body::Bytes(changed.clone().into());
    res.etag = Some("\"two\"".into());
    server.put("/img.gvmi", res);
    let third = loader.fetch(&r).await.unwrap();
    assert_eq!(std::fs::read(&third.path).unwrap(), changed);
    assert_eq!(third.digest.unwrap().hex(), sha3_hex(&changed));
}

#[tokio::test]
async fn local_packages() {
    let dir = tempfile::tempdir().unwrap();
    let data = payload();
    let file = dir.path().join("img.gvmi");
    std::fs::write(&file, &data).unwrap();
    let cache = dir.path().join("cache");
    let loader = Loader::new(&cache).unwrap();

    let plain = loader
        .fetch(&PackageRef::parse(file.to_str().unwrap()).unwrap())
        .await
        .unwrap();
    assert_eq!(plain.path, file.canonicalize().unwrap());
    assert!(plain.digest.is_none());
    let via_url = loader
        .fetch(&PackageRef::parse(&format!("file://{}", file.display())).unwrap())
        .await
        .unwrap();
    assert_eq!(via_url.path, plain.path);
    let pinned_ok = format!("hash:sha3:{}:{}", sha3_hex(&data), file.display());
    assert!(loader
        .fetch(&PackageRef::parse(&pinned_ok).unwrap())
        .await
        .is_ok());
    let pinned_bad = format!("hash:sha3:{}:{}", sha3_hex(b"x"), file.display());
    assert!(matches!(
        loader.fetch(&PackageRef::parse(&pinned_bad).unwrap()).await,
        Err(LoadError::HashMismatch { .. })
    ));
    let missing = loader
        .fetch(&PackageRef::parse("/nonexistent/img.gvmi").unwrap())
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("does not exist"), "{missing}");
    let dir_err = loader
        .fetch(&PackageRef::parse(dir.path().to_str().unwrap()).unwrap())
        .await
        .unwrap_err();
    assert!(
        dir_err.to_string().contains("not a regular file"),
        "{dir_err}"
    );
    // Local packages never create the cache.
    assert!(!cache.exists());
}
