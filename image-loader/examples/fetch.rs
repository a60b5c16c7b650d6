//! Fetches one package reference into a cache directory and prints the local path and digest.
//! Used by `scripts/bench-loader.sh`; handy for trying references by hand.
//!
//! Usage: `fetch <reference> <cache-dir>`

use std::process::ExitCode;

use image_loader::{Loader, PackageRef};

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [reference, cache] = args.as_slice() else {
        eprintln!("usage: fetch <reference> <cache-dir>");
        return ExitCode::from(2);
    };
    let result = async {
        let package = PackageRef::parse(reference)?;
        Loader::new(cache)?.fetch(&package).await
    }
    .await;
    match result {
        Ok(p) => {
            let digest = p.digest.map(|d| d.to_string()).unwrap_or_default();
            println!("{} {digest}", p.path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fetch: {e}");
            ExitCode::FAILURE
        }
    }
}
