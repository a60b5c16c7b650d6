//! # qemu-config
//!
//! Sits between `deploy`'s `deployment.json` and the QEMU process that `start` spawns: a typed
//! description of one VM (accelerator, machine, CPUs, memory, kernel and initramfs, the image
//! disk, vsock and virtio-fs devices) rendered to QEMU's argv. Pure code, tested with golden
//! command lines. The VM description lands with the host runtime (issue 4).
