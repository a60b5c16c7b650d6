//! # ya-runtime-vm
//!
//! The host side of the data flow, launched by yagna's exe-unit once per activity. [`cli`] is
//! the command line; [`deploy`] turns the task package (through `image-loader`) into a verified
//! image, the volume directories and a [`deployment`] record; `start` and `run` boot it (later
//! issues). Logs go to stderr; stdout carries only what the exe-unit reads.

pub mod agent;
pub mod api;
pub mod cli;
pub mod commands;
pub mod deploy;
pub mod deployment;
pub mod host;
pub mod network;
pub mod vm;
pub mod vm_spec;
