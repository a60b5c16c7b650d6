//! Prints the SHA3-256 of a file, computed with the loader's own hasher in one pass: the floor
//! that `scripts/bench-loader.sh` compares downloads against.
//!
//! Usage: `sha3sum <file>`

use std::io::Read;
use std::process::ExitCode;

use image_loader::HashAlgo;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: sha3sum <file>");
        return ExitCode::from(2);
    };
    let result = (|| {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = HashAlgo::Sha3_256.hasher();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        std::io::Result::Ok(hasher.finish())
    })();
    match result {
        Ok(d) => {
            println!("{} {path}", d.hex());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sha3sum: {path}: {e}");
            ExitCode::FAILURE
        }
    }
}
