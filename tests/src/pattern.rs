//! Big files with a checkable pattern: 1 MiB blocks whose first 8 bytes
//! are the block index, so a torn, shifted or zero-filled copy shows.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

/// One mebibyte.
pub const MIB: usize = 1024 * 1024;

fn base_block() -> Vec<u8> {
    (0..MIB)
        .map(|j| (j.wrapping_mul(2_654_435_761) >> 13) as u8 | 1)
        .collect()
}

fn block(i: usize, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    b[..8].copy_from_slice(&(i as u64).to_le_bytes());
    b
}

/// Writes a file of `mib` pattern blocks.
pub fn write_pattern_file(path: &Path, mib: usize) {
    let base = base_block();
    let mut f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    for i in 0..mib {
        f.write_all(&block(i, &base)).expect("write pattern file");
    }
}

/// Checks that `path` holds `mib` pattern blocks, with the bytes in
/// `changed` (offset, value) overriding; returns the first difference.
pub fn check_pattern_file(path: &Path, mib: usize, changed: &[(usize, u8)]) -> Result<(), String> {
    let base = base_block();
    let mut f = File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    if len != (mib * MIB) as u64 {
        return Err(format!(
            "{} is {len} bytes, expected {}",
            path.display(),
            mib * MIB
        ));
    }
    let mut buf = vec![0u8; MIB];
    for i in 0..mib {
        f.read_exact(&mut buf)
            .map_err(|e| format!("read block {i}: {e}"))?;
        let mut want = block(i, &base);
        for &(off, b) in changed {
            if off / MIB == i {
                want[off % MIB] = b;
            }
        }
        if buf != want {
            let at = buf.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(format!(
                "{}: block {i} differs at byte {at}: {:#04x} instead of {:#04x}",
                path.display(),
                buf[at],
                want[at]
            ));
        }
    }
    Ok(())
}
