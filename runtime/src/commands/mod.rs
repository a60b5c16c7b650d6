//! The subcommands that use a deployment: `run` (one command in a fresh VM), `start` (the
//! runtime API for an activity), `test` (the installation's self-test), `offer-template`, and
//! the signals that end them in order.

pub mod offer;
pub mod run;
pub mod self_test;
pub mod signals;
pub mod start;
