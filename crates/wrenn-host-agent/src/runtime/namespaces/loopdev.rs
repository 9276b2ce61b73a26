//! Attaching a disk image to a loop device (LOOP_CTL_GET_FREE +
//! LOOP_CONFIGURE) with autoclear, so the device detaches itself when its
//! last mount goes away.

use std::os::fd::AsFd;
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode};

const LOOP_CTL_ADD: Opcode = 0x4C80;
const LOOP_CTL_GET_FREE: Opcode = 0x4C82;
const LOOP_CONFIGURE: Opcode = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

struct GetFree;

// SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
unsafe impl Ioctl for GetFree {
    type Output = u32;
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        LOOP_CTL_GET_FREE
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        core::ptr::null_mut()
    }
    unsafe fn output_from_ptr(
        out: IoctlOutput,
        _: *mut core::ffi::c_void,
    ) -> rustix::io::Result<u32> {
        Ok(out as u32)
    }
}

struct Add(u32);

// SAFETY: LOOP_CTL_ADD takes the device number by value.
unsafe impl Ioctl for Add {
    type Output = ();
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        LOOP_CTL_ADD
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        self.0 as usize as *mut core::ffi::c_void
    }
    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut core::ffi::c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

struct Configure(LoopConfig);

// SAFETY: LOOP_CONFIGURE reads a struct loop_config, which LoopConfig mirrors.
unsafe impl Ioctl for Configure {
    type Output = ();
    const IS_MUTATING: bool = false;
    fn opcode(&self) -> Opcode {
        LOOP_CONFIGURE
    }
    fn as_ptr(&mut self) -> *mut core::ffi::c_void {
        (&mut self.0 as *mut LoopConfig).cast()
    }
    unsafe fn output_from_ptr(_: IoctlOutput, _: *mut core::ffi::c_void) -> rustix::io::Result<()> {
        Ok(())
    }
}

/// Attaches `image` to a free loop device; returns the device path and an
/// open descriptor of it. Autoclear detaches the device when its last user
/// goes away, so keep the descriptor until the device is mounted.
pub fn attach(image: &Path) -> std::io::Result<(String, std::os::fd::OwnedFd)> {
    use std::os::fd::AsRawFd;
    let file = rustix::fs::open(image, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty())?;
    let ctl = rustix::fs::open(
        "/dev/loop-control",
        OFlags::RDWR | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Sandboxes start in parallel: a host-wide lock from GET_FREE to
    // CONFIGURE keeps two of them from racing for one device.
    rustix::fs::flock(&ctl, rustix::fs::FlockOperation::LockExclusive)?;
    // SAFETY: GetFree matches the ioctl's contract.
    let first = unsafe { rustix::ioctl::ioctl(&ctl, GetFree) }?;
    // A device just released by a dying sandbox can read as free yet still
    // be claimed (EBUSY); then try the next numbers, adding devices as needed.
    for n in first..first + 256 {
        // SAFETY: Add matches the ioctl's contract.
        match unsafe { rustix::ioctl::ioctl(&ctl, Add(n)) } {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let path = format!("/dev/loop{n}");
        let open =
            || rustix::fs::open(path.as_str(), OFlags::RDWR | OFlags::CLOEXEC, Mode::empty());
        let dev = match open() {
            Ok(d) => d,
            Err(rustix::io::Errno::NOENT) => {
                // The node may not exist in this /dev yet; make it.
                let dev = rustix::fs::makedev(7, n);
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    path.as_str(),
                    rustix::fs::FileType::BlockDevice,
                    Mode::from_raw_mode(0o660),
                    dev,
                )?;
                open()?
            }
            Err(e) => return Err(e.into()),
        };
        // Direct I/O: the sandbox's file system caches its pages once, in
        // its own cgroup; without it the image file's pages are cached (and
        // written back) a second time, on the host's account. A backing
        // file system that cannot do it gets the device without.
        let configure = |flags: u32| {
            // SAFETY: all-zero is a valid loop_info64.
            let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
            info.lo_flags = flags;
            let cfg = LoopConfig {
                fd: file.as_fd().as_raw_fd() as u32,
                block_size: 0,
                info,
                reserved: [0; 8],
            };
            // SAFETY: Configure matches the ioctl's contract.
            unsafe { rustix::ioctl::ioctl(&dev, Configure(cfg)) }
        };
        let result = match configure(LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO) {
            Err(rustix::io::Errno::INVAL) => configure(LO_FLAGS_AUTOCLEAR),
            r => r,
        };
        match result {
            Ok(()) => return Ok((path, dev)),
            Err(rustix::io::Errno::BUSY) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(std::io::Error::other(
        "no usable loop device among 256 tried; is something else holding loop devices?",
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn attached_image_reads_back() {
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let img = std::env::temp_dir().join(format!("loop-{}.img", std::process::id()));
        let f = std::fs::File::create(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"MAGIC", 1024).unwrap();
        drop(f);
        let (_path, dev) = super::attach(&img).unwrap();
        let mut buf = [0u8; 5];
        let d = std::fs::File::from(dev);
        d.read_exact_at(&mut buf, 1024).unwrap();
        assert_eq!(&buf, b"MAGIC");
        drop(d); // autoclear detaches the device
        std::fs::remove_file(&img).unwrap();
    }
}
