//! `security.capability` answers from memory once a file is known to have
//! none (the kernel asks before every write and chown): setting one through
//! the mount must show at once, on every name of the file, and a write must
//! still drop it, as on any filesystem.

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use strata_tests::Layers;

/// A VFS_CAP_REVISION_2 value: cap_net_bind_service (bit 10), effective.
fn caps_value() -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(0x0200_0000u32 | 1).to_le_bytes());
    v.extend_from_slice(&(1u32 << 10).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

fn get_caps(p: &Path) -> Option<Vec<u8>> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 64];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::lgetxattr(
            cp.as_ptr(),
            c"security.capability".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        assert_eq!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::ENODATA)
        );
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

fn set_caps(p: &Path, v: &[u8]) {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            c"security.capability".as_ptr(),
            v.as_ptr().cast(),
            v.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

#[test]
fn capabilities_cached_absence_never_hides_a_new_one() {
    let m = Layers::new()
        .lower(|l| l.file("bin/tool", "#!/bin/sh\n").mode("bin/tool", 0o755))
        .mount_strata();
    let tool = m.join("bin/tool");
    let alias = m.join("bin/alias");
    // Known absent (asked twice: the second answer is the cached one).
    assert_eq!(get_caps(&tool), None);
    assert_eq!(get_caps(&tool), None);
    fs::hard_link(&tool, &alias).unwrap();
    assert_eq!(get_caps(&alias), None);
    set_caps(&tool, &caps_value());
    assert_eq!(get_caps(&tool), Some(caps_value()));
    assert_eq!(
        get_caps(&alias),
        Some(caps_value()),
        "the other name of the file"
    );
    // A write by an unprivileged writer drops them; as root the kernel
    // drops them too (capabilities, unlike set-id bits, always go).
    let mut f = OpenOptions::new().append(true).open(&tool).unwrap();
    f.write_all(b"exit 0\n").unwrap();
    drop(f);
    assert_eq!(get_caps(&tool), None, "a write must drop file capabilities");
}
