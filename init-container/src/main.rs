//! # init-container
//!
//! The guest side of the data flow: the kernel starts this static binary as PID 1 inside the VM.
//! It will mount the image's squashfs under an overlay, mount the volumes, and serve the agent
//! protocol over vsock (issue 3). Until then it refuses to run rather than pretend.

fn main() {
    eprintln!("init-container: not implemented yet");
    std::process::exit(1);
}
