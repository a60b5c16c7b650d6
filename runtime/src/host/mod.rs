//! Host resources a VM is made of, each owning what it creates and releasing it when dropped:
//! the runtime directory (kernel, initramfs, helpers), the VM's scratch directory (sockets),
//! scratch disks (nameless files), the vsock transport (the kernel's vhost-vsock or
//! vhost-device-vsock), one virtiofsd per host volume, the bounded tails of the console and of
//! every helper's stderr, and the helper processes themselves (tied to the runtime's life).

pub mod frame_relay;
pub mod kernel_vsock;
pub mod net_socket;
pub mod output_tail;
pub mod process;
pub mod runtime_dir;
pub mod scratch_dir;
pub mod scratch_disk;
pub mod virtiofsd;
pub mod vsock;
