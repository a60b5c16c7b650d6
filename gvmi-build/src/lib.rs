//! # gvmi-build
//!
//! The requestor's side of the GVMI format: a container image in, a `.gvmi` out, without a Docker
//! daemon. Data flow: the input ([`source`]: an OCI layout directory or archive, a `docker save` /
//! `podman save` archive) resolves to one image's config and layers ([`image`]); the layers are
//! merged as an engine would apply them ([`merge`]) and streamed as one tar into `mksquashfs -tar`
//! ([`squashfs`]); the image's config becomes the trailer gvmkit-build writes ([`trailer`]).
//! A plain root directory skips the first steps. The runtime's own reader
//! (`image_loader::gvmi`) reads the result.

pub mod convert;
pub mod image;
pub mod merge;
pub mod source;
pub mod squashfs;
pub mod trailer;
