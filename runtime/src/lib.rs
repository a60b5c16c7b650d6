//! # ya-runtime-vm
//!
//! The host side of the data flow, launched by yagna's exe-unit once per activity. [`cli`] is
//! the command line; [`deploy`] turns the task package (through `image-loader`) into a verified
//! image, the volume directories and a [`deployment`] record; `start` and `run` boot it (later
//! issues). Logs go to stderr; stdout carries only what the exe-unit reads.

pub mod agent;
pub mod api;
pub mod cli;
pub mod console;
pub mod deploy;
pub mod deployment;
pub mod kernel_vsock;
pub mod offer;
pub mod run;
pub mod runtime_dir;
pub mod scratch;
pub mod scratch_disk;
pub mod self_test;
pub mod signals;
pub mod start;
pub mod virtiofsd;
pub mod vm;
pub mod volume_override;
pub mod volumes;
