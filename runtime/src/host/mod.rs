//! Host resources a VM is made of, each owning what it creates and releasing it when dropped:
//! the runtime directory (kernel, initramfs, helpers), the VM's scratch directory (sockets),
//! scratch disks (nameless files), the vsock transport (the kernel's vhost-vsock or
//! vhost-device-vsock), one virtiofsd per host volume, the console's socket pair, and the helper
//! processes themselves (tied to the runtime's life).

pub mod console;
pub mod kernel_vsock;
pub mod process;
pub mod runtime_dir;
pub mod scratch_dir;
pub mod scratch_disk;
pub mod virtiofsd;
pub mod vsock;
