//! # image-loader
//!
//! The first step of the runtime's data flow: `deploy` hands it the `--task-package` text and
//! gets back a verified local file and the image's configuration.
//!
//! - [`reference`]: the accepted reference forms (path, `file://`, `http(s)://`,
//!   `hash:<algo>:<hex>:<url>`).
//! - [`loader`]: local checks and downloads, streamed through the hasher into a [`cache`], resumed
//!   with HTTP `Range` after an interruption, published only once verified.
//! - [`gvmi`]: the bounded reader of the GVMI trailer and squashfs superblock, yielding the
//!   [`container_config`].

pub mod cache;
pub mod container_config;
pub mod digest;
mod download;
pub mod error;
pub mod gvmi;
pub mod loader;
mod progress;
pub mod reference;
mod sink;

pub use cache::Cache;
pub use container_config::{ContainerConfig, IdOrName, UserSpec};
pub use digest::{Digest, HashAlgo};
pub use error::LoadError;
pub use gvmi::{read_gvmi, GvmiError, GvmiImage};
pub use loader::{Loader, LocalPackage};
pub use reference::PackageRef;
