use crate::session::MAX_WRITE_SIZE;

/// Size of the buffer for reading a request from the kernel. Since the kernel may send
/// up to `MAX_WRITE_SIZE` bytes in a write request, we use that value plus some extra space.
const BUFFER_SIZE: usize = MAX_WRITE_SIZE + 4096;

/// The buffer a worker reads requests into.
///
/// Strata patch: the buffer is an anonymous mapping rather than a zeroed
/// `Vec`. Its pages are zero and faulted in only as requests reach them,
/// whereas `calloc` of 16 MiB from a thread's malloc arena clears it up
/// front, page faults and all, before the worker answers its first request
/// (which the time a mount takes until its first answer showed). A mapping
/// is page aligned, which `fuse_in_header` needs.
#[derive(Debug)]
pub(crate) struct FuseReadBuf {
    ptr: std::ptr::NonNull<u8>,
}

// SAFETY: the mapping is owned by the buffer and only reached through
// `&mut self`.
unsafe impl Send for FuseReadBuf {}

impl FuseReadBuf {
    /// Maps a new buffer of `BUFFER_SIZE` bytes.
    pub(crate) fn new() -> Self {
        // SAFETY: a fresh private anonymous mapping; no memory is aliased.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                BUFFER_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            std::alloc::handle_alloc_error(
                std::alloc::Layout::from_size_align(BUFFER_SIZE, 4096).expect("valid layout"),
            );
        }
        Self {
            ptr: std::ptr::NonNull::new(p.cast()).expect("mmap returned a non-null address"),
        }
    }

    /// Returns the buffer, aligned for `fuse_in_header`.
    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is BUFFER_SIZE bytes of initialized (zero or
        // written) memory, owned by self and borrowed mutably here.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), BUFFER_SIZE) }
    }
}

impl Drop for FuseReadBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this size and is no
        // longer borrowed.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), BUFFER_SIZE);
        }
    }
}
