//! Strata patch: FUSE over io_uring (Linux 6.14+, `FUSE_OVER_IO_URING`).
//!
//! The kernel keeps one request queue per possible CPU and hands a request
//! to an entry of the queue of the CPU that issued it. An entry is a pair of
//! buffers registered with `IORING_OP_URING_CMD` on the `/dev/fuse` fd
//! (`FUSE_IO_URING_CMD_REGISTER`): a 288-byte header (`fuse_in_header` or
//! `fuse_out_header`, the operation's fixed argument, `fuse_uring_ent_in_out`)
//! and a payload of at least `max(8 KiB, max_write)`. A command completes
//! when a request is in the buffers; the answer goes back, and the next
//! request is asked for, with one `FUSE_IO_URING_CMD_COMMIT_AND_FETCH`.
//!
//! Layout chosen here: every entry has its own thread and its own small ring
//! (`ENTRIES_PER_QUEUE` per CPU, pinned to it). A thread busy with a slow
//! request (a large copy-up) therefore holds exactly one entry: the kernel
//! hands the CPU's next requests to the queue's other, idle, entries, and no
//! request ever waits behind another one in user space. Requests are served
//! on the thread that was woken for them, with one `io_uring_enter` per
//! request (commit the answer, wait for the next).
//!
//! What stays on `/dev/fuse`: FORGET, BATCH_FORGET and INTERRUPT (the
//! session's classic reader serves them), notifications, and every request
//! the kernel queued before the last queue got its entries.
//!
//! The pitfalls this module is built around:
//! - registration before the INIT reply gets EAGAIN: the ring is started by
//!   `Session::run`, always after the handshake;
//! - once `FUSE_OVER_IO_URING` is accepted, the kernel holds every request
//!   until each possible CPU's queue has an entry: [`probe`] checks before
//!   the flag is accepted that this process can create the ring, and a
//!   failed registration is an error of the session, never a silent wait;
//! - unmount completes the parked commands with `ENOTCONN`: each thread ends
//!   on the first failed command.
#![allow(unsafe_code)]

use std::io;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;
use parking_lot::Condvar;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::ReplyEmpty;
use crate::channel::Channel;
use crate::channel::ChannelSender;
use crate::ll::Operation;
use crate::passthrough::BackingId;
use crate::request::RequestWithSender;
use crate::session::SessionEventLoop;

const CMD_REGISTER: u32 = 1;
const CMD_COMMIT_AND_FETCH: u32 = 2;
/// `sizeof(struct fuse_uring_req_header)`: `in_out[128]`, `op_in[128]`,
/// `struct fuse_uring_ent_in_out` (32 bytes).
const HEADER_SZ: usize = 288;
const OP_IN_OFFSET: usize = 128;
const OP_IN_SZ: usize = 128;
const ENT_IN_OUT_OFFSET: usize = 256;
/// `sizeof(struct fuse_in_header)`, `sizeof(struct fuse_out_header)`.
const IN_HEADER_LEN: usize = 40;
const OUT_HEADER_LEN: usize = 16;
/// The payload starts on its own page, after the header.
const PAYLOAD_OFFSET: usize = 4096;
/// The kernel's `FUSE_MIN_READ_BUFFER`.
const MIN_PAYLOAD: usize = 8192;
/// Entries (and threads) per CPU queue: a request that blocks holds one of
/// them, the others keep serving that CPU.
pub(crate) const ENTRIES_PER_QUEUE: usize = 4;

const _: () = assert!(std::mem::size_of::<squeue::Entry128>() == 128);

/// Which transport served a session's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The classic loop: `read` and `writev` on `/dev/fuse`.
    DevFuse,
    /// FUSE over io_uring: per-CPU queues of registered entries.
    IoUring,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::DevFuse => "/dev/fuse",
            Transport::IoUring => "io_uring",
        })
    }
}

/// Strata patch: counts of what each transport of a session served.
#[derive(Debug, Default)]
pub struct TransportStats {
    ring_requests: AtomicU64,
    dev_requests: AtomicU64,
    ring_queues: AtomicUsize,
    ring_entries: AtomicUsize,
}

impl TransportStats {
    /// Requests answered through the io_uring queues.
    pub fn ring_requests(&self) -> u64 {
        self.ring_requests.load(Ordering::Relaxed)
    }
    /// Requests read from `/dev/fuse` (FORGETs included).
    pub fn dev_requests(&self) -> u64 {
        self.dev_requests.load(Ordering::Relaxed)
    }
    /// Queues (one per possible CPU) that got entries; 0 on `/dev/fuse`.
    pub fn ring_queues(&self) -> usize {
        self.ring_queues.load(Ordering::Relaxed)
    }
    /// The transport that serves the session: io_uring once every queue
    /// has its entries.
    pub fn transport(&self) -> Transport {
        if self.ring_entries.load(Ordering::Relaxed) > 0 {
            Transport::IoUring
        } else {
            Transport::DevFuse
        }
    }
    pub(crate) fn count_dev(&self) {
        self.dev_requests.fetch_add(1, Ordering::Relaxed);
    }
}

/// The CPUs of a sysfs cpu list (`0-3,6`).
fn cpu_list(path: &str) -> io::Result<Vec<usize>> {
    let s = std::fs::read_to_string(path)?;
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{path}: cannot parse {s:?}"),
        )
    };
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        let a: usize = a.parse().map_err(|_| bad())?;
        let b: usize = b.parse().map_err(|_| bad())?;
        out.extend(a..=b);
    }
    Ok(out)
}

/// The number of queues the kernel expects: one per possible CPU
/// (`/sys/devices/system/cpu/possible`).
pub(crate) fn possible_cpus() -> io::Result<usize> {
    let cpus = cpu_list("/sys/devices/system/cpu/possible")?;
    Ok(cpus.iter().max().map_or(1, |m| m + 1))
}

/// Entries for queue `qid`: `ENTRIES_PER_QUEUE` for an online CPU, one for
/// a CPU that is possible but offline (it issues no request until it is
/// plugged in, and a VM may declare many more than it runs).
fn entries_for(qid: usize, online: &[usize]) -> usize {
    if online.is_empty() || online.contains(&qid) {
        ENTRIES_PER_QUEUE
    } else {
        1
    }
}

/// Strata patch: checks, before `FUSE_OVER_IO_URING` is accepted at INIT,
/// that this process can create an SQE128 ring that knows
/// `IORING_OP_URING_CMD` (io_uring may be disabled by sysctl
/// `kernel.io_uring_disabled` or a seccomp filter). Accepting the flag and
/// then failing to register would leave the mount holding every request.
pub fn probe() -> io::Result<()> {
    let ring: IoUring<squeue::Entry128> = IoUring::builder().build(2)?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe)?;
    if !probe.is_supported(opcode::UringCmd80::CODE) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring has no IORING_OP_URING_CMD",
        ));
    }
    possible_cpus()?;
    Ok(())
}

/// What the INIT handshake settled that the ring needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingParams {
    /// Bytes of each entry's payload buffer.
    pub(crate) payload_size: usize,
}

impl RingParams {
    pub(crate) fn new(max_write: u32, max_pages: u16) -> Self {
        let page = 4096usize;
        let need = MIN_PAYLOAD
            .max(max_write as usize)
            .max(max_pages as usize * page);
        RingParams {
            payload_size: need.div_ceil(page) * page,
        }
    }
}

/// One entry's header and payload, in one anonymous mapping: the header at
/// 0, the payload at `PAYLOAD_OFFSET` (pages are faulted in as used).
#[derive(Debug)]
struct EntryBuf {
    ptr: *mut u8,
    len: usize,
    payload_size: usize,
}

// SAFETY: the mapping is owned by the entry; access is serialized by the
// slot's state (see `Slot`).
unsafe impl Send for EntryBuf {}
// SAFETY: as above.
unsafe impl Sync for EntryBuf {}

impl EntryBuf {
    fn new(payload_size: usize) -> io::Result<Self> {
        let len = PAYLOAD_OFFSET + payload_size;
        // SAFETY: a fresh private anonymous mapping; nothing is aliased.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(EntryBuf {
            ptr: p.cast(),
            len,
            payload_size,
        })
    }

    fn header_ptr(&self) -> *mut u8 {
        self.ptr
    }

    fn payload_ptr(&self) -> *mut u8 {
        // SAFETY: PAYLOAD_OFFSET is inside the mapping.
        unsafe { self.ptr.add(PAYLOAD_OFFSET) }
    }
}

impl Drop for EntryBuf {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and no
        // borrow of it outlives the entry.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// The kernel owns the buffers (a command is parked or a request is
    /// being read out of them).
    Kernel,
    /// A request is being served: the next reply may write the buffers.
    Awaiting,
    /// The reply is in the buffers, ready to be committed.
    Replied,
}

/// An entry's buffers and who may touch them. The ring thread reads a
/// request only in `Kernel` state and commits only after `Replied`; a reply
/// writes the buffers only in `Awaiting` state, under the lock.
#[derive(Debug)]
struct Slot {
    buf: EntryBuf,
    state: Mutex<SlotState>,
    replied: Condvar,
    ch: ChannelSender,
}

/// The reply path of a request that came through a ring entry.
#[derive(Debug, Clone)]
pub(crate) struct RingReply(Arc<Slot>);

impl RingReply {
    /// Writes `fuse_out_header` + arguments into the entry: the header into
    /// `in_out`, the rest into the payload, its length into
    /// `fuse_uring_ent_in_out.payload_sz`.
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let slot = &self.0;
        let mut state = slot.state.lock();
        if *state != SlotState::Awaiting {
            return Err(io::Error::other("ring entry is not waiting for a reply"));
        }
        let total: usize = data.iter().map(|d| d.len()).sum();
        if total < OUT_HEADER_LEN {
            return Err(io::Error::other("reply shorter than fuse_out_header"));
        }
        // SAFETY: in `Awaiting` state nobody else touches the buffers (the
        // ring thread waits for `Replied`, the kernel has handed them over),
        // and the lock is held.
        let (header, payload) = unsafe {
            (
                std::slice::from_raw_parts_mut(slot.buf.header_ptr(), HEADER_SZ),
                std::slice::from_raw_parts_mut(slot.buf.payload_ptr(), slot.buf.payload_size),
            )
        };
        let mut payload_len = total - OUT_HEADER_LEN;
        if payload_len > payload.len() {
            error!(
                "FUSE reply of {payload_len} bytes exceeds the ring's {} byte payload; answering EIO",
                payload.len()
            );
            let mut first = [0u8; OUT_HEADER_LEN];
            copy_prefix(data, &mut first);
            header[..OUT_HEADER_LEN].copy_from_slice(&first);
            header[4..8].copy_from_slice(&(-libc::EIO).to_ne_bytes());
            header[0..4].copy_from_slice(&(OUT_HEADER_LEN as u32).to_ne_bytes());
            payload_len = 0;
        } else {
            let mut at = 0usize;
            for d in data {
                let mut s: &[u8] = d;
                if at < OUT_HEADER_LEN {
                    let n = (OUT_HEADER_LEN - at).min(s.len());
                    header[at..at + n].copy_from_slice(&s[..n]);
                    at += n;
                    s = &s[n..];
                }
                if !s.is_empty() {
                    let off = at - OUT_HEADER_LEN;
                    payload[off..off + s.len()].copy_from_slice(s);
                    at += s.len();
                }
            }
        }
        let sz = ENT_IN_OUT_OFFSET + 16;
        header[sz..sz + 4].copy_from_slice(&(payload_len as u32).to_ne_bytes());
        *state = SlotState::Replied;
        slot.replied.notify_one();
        Ok(())
    }

    pub(crate) fn open_backing(&self, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<BackingId> {
        self.0.ch.open_backing(fd)
    }

    pub(crate) unsafe fn wrap_backing(&self, id: u32) -> BackingId {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.ch.wrap_backing(id) }
    }
}

fn copy_prefix(data: &[IoSlice<'_>], out: &mut [u8]) {
    let mut at = 0;
    for d in data {
        if at == out.len() {
            break;
        }
        let n = (out.len() - at).min(d.len());
        out[at..at + n].copy_from_slice(&d[..n]);
        at += n;
    }
}

/// The 80-byte command area: `struct fuse_uring_cmd_req {flags, commit_id,
/// qid}`.
fn cmd_req(qid: u16, commit_id: u64) -> [u8; 80] {
    let mut c = [0u8; 80];
    c[8..16].copy_from_slice(&commit_id.to_ne_bytes());
    c[16..18].copy_from_slice(&qid.to_ne_bytes());
    c
}

/// A REGISTER command: `addr` points at the two iovecs, `len` must be 2
/// (a field the io-uring crate's `UringCmd80` does not set).
fn register_sqe(fd: i32, qid: u16, iov: &[libc::iovec; 2]) -> squeue::Entry128 {
    let e = opcode::UringCmd80::new(types::Fd(fd), CMD_REGISTER)
        .cmd(cmd_req(qid, 0))
        .addr(Some(iov.as_ptr() as u64))
        .build();
    // SAFETY: `Entry128` is `#[repr(C)]` over the 128 bytes of an SQE128
    // (asserted above); `len` is the u32 at offset 24 of `io_uring_sqe`.
    let mut raw: [u8; 128] = unsafe { std::mem::transmute(e) };
    raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
    // SAFETY: the same bytes back, with a valid `len`.
    unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
}

fn commit_sqe(fd: i32, qid: u16, commit_id: u64) -> squeue::Entry128 {
    opcode::UringCmd80::new(types::Fd(fd), CMD_COMMIT_AND_FETCH)
        .cmd(cmd_req(qid, commit_id))
        .build()
}

/// Pins the calling thread to `cpu`; a CPU this process may not use (a
/// cpuset, an offline CPU) leaves the thread unpinned.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET bounds-checks
    // against the set's size; sched_setaffinity(0) acts on this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return;
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            debug!(
                "io_uring queue {cpu}: not pinned: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// The ring's threads, started and registered.
#[derive(Debug)]
pub(crate) struct RingThreads {
    pub(crate) threads: Vec<JoinHandle<io::Result<()>>>,
}

/// Starts `ENTRIES_PER_QUEUE` threads for each possible CPU, each with its
/// ring and one registered entry. Returns once every entry is registered,
/// or the first error (then the mount cannot be served: the caller ends the
/// session).
pub(crate) fn start<FS: Filesystem + 'static>(
    make_loop: impl Fn(String) -> SessionEventLoop<FS>,
    ch: &Channel,
    params: RingParams,
    stats: Arc<TransportStats>,
) -> io::Result<RingThreads> {
    let queues = possible_cpus()?;
    let qmax = u16::try_from(queues).map_err(|_| io::Error::other("too many CPUs"))?;
    let (tx, rx) = mpsc::channel::<io::Result<()>>();
    let online = cpu_list("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut threads = Vec::with_capacity(queues * ENTRIES_PER_QUEUE);
    for qid in 0..qmax {
        for slot in 0..entries_for(qid as usize, &online) {
            let name = format!("fuse-uring-{qid}.{slot}");
            let se = make_loop(name.clone());
            let ch = ch.clone();
            let tx = tx.clone();
            let stats = stats.clone();
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(move || serve_entry(se, ch, qid, params, tx, stats))?;
            threads.push(t);
        }
    }
    drop(tx);
    for _ in 0..threads.len() {
        match rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("io_uring thread ended before registering")),
        }
    }
    stats.ring_queues.store(queues, Ordering::Relaxed);
    stats.ring_entries.store(threads.len(), Ordering::Relaxed);
    Ok(RingThreads { threads })
}

fn serve_entry<FS: Filesystem>(
    se: SessionEventLoop<FS>,
    ch: Channel,
    qid: u16,
    params: RingParams,
    ready: mpsc::Sender<io::Result<()>>,
    stats: Arc<TransportStats>,
) -> io::Result<()> {
    let setup = || -> io::Result<(IoUring<squeue::Entry128>, Arc<Slot>)> {
        let ring: IoUring<squeue::Entry128> = IoUring::builder().build(2)?;
        let buf = EntryBuf::new(params.payload_size)?;
        let slot = Arc::new(Slot {
            buf,
            state: Mutex::new(SlotState::Kernel),
            replied: Condvar::new(),
            ch: ch.sender(),
        });
        Ok((ring, slot))
    };
    let (mut ring, slot) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Ok(());
        }
    };
    let fd = std::os::fd::AsFd::as_fd(&ch).as_raw_fd();
    let iov = [
        libc::iovec {
            iov_base: slot.buf.header_ptr().cast(),
            iov_len: HEADER_SZ,
        },
        libc::iovec {
            iov_base: slot.buf.payload_ptr().cast(),
            iov_len: slot.buf.payload_size,
        },
    ];
    // Register, and see whether the kernel refused at once (a parked
    // command completes only when a request arrives).
    let reg = register_sqe(fd, qid, &iov);
    // SAFETY: the iovecs and the buffers they point at outlive the command
    // (they live until this function returns, after the ring is gone).
    let pushed = unsafe { ring.submission().push(&reg) };
    if pushed.is_err() {
        let _ = ready.send(Err(io::Error::other("io_uring submission queue full")));
        return Ok(());
    }
    if let Err(e) = submit_retrying(&ring, 0) {
        let _ = ready.send(Err(e));
        return Ok(());
    }
    // A completion already: either the kernel refused the entry, or (the
    // ring being ready) a request is in it.
    let mut early = ring.completion().next().map(|cqe| cqe.result());
    if let Some(res) = early {
        if res < 0 && res != -libc::EINTR && res != -libc::EAGAIN {
            let err = io::Error::from_raw_os_error(-res);
            let _ = ready.send(Err(io::Error::new(
                err.kind(),
                format!("FUSE io_uring REGISTER on queue {qid}: {err}"),
            )));
            return Ok(());
        }
    }
    let _ = ready.send(Ok(()));
    drop(ready);
    // Pinned only now: moving to a busy CPU can take milliseconds, which
    // the mount need not wait for (the queue is chosen by `qid`, not by
    // where this thread runs).
    pin_to(qid as usize);

    let mut req_buf: Vec<u8> = Vec::with_capacity(IN_HEADER_LEN + OP_IN_SZ + 4096);
    let mut last = reg;
    loop {
        let res = match early.take() {
            Some(res) => res,
            None => {
                submit_retrying(&ring, 1)?;
                let Some(cqe) = ring.completion().next() else {
                    continue;
                };
                cqe.result()
            }
        };
        if res == -libc::EINTR || res == -libc::EAGAIN {
            // SAFETY: as for the first push; `last` is the same command.
            if unsafe { ring.submission().push(&last) }.is_err() {
                return Err(io::Error::other("io_uring submission queue full"));
            }
            continue;
        }
        if res < 0 {
            // ENOTCONN (unmount), ECONNABORTED, ENODEV: the session ended.
            let err = io::Error::from_raw_os_error(-res);
            match -res {
                libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV | libc::ECANCELED => {
                    debug!("io_uring queue {qid}: {err}; ending");
                    return Ok(());
                }
                _ => {
                    warn!("io_uring queue {qid}: {err}; ending");
                    return Err(err);
                }
            }
        }
        // A request is in the buffers: copy it out as `/dev/fuse` would
        // have delivered it (header, fixed argument, payload).
        let commit_id = {
            let _guard = slot.state.lock();
            // SAFETY: `Kernel` state: the kernel has finished writing the
            // buffers (the completion says so) and no reply is pending.
            let header = unsafe { std::slice::from_raw_parts(slot.buf.header_ptr(), HEADER_SZ) };
            let ent = &header[ENT_IN_OUT_OFFSET..ENT_IN_OUT_OFFSET + 32];
            let commit_id = u64::from_ne_bytes(ent[8..16].try_into().expect("8 bytes"));
            let payload_sz = u32::from_ne_bytes(ent[16..20].try_into().expect("4 bytes")) as usize;
            let payload_sz = payload_sz.min(slot.buf.payload_size);
            let in_len = u32::from_ne_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
            let op_len = in_len
                .saturating_sub(IN_HEADER_LEN + payload_sz)
                .min(OP_IN_SZ);
            // SAFETY: as above; payload_sz is bounded by the buffer.
            let payload = unsafe { std::slice::from_raw_parts(slot.buf.payload_ptr(), payload_sz) };
            req_buf.clear();
            req_buf.extend_from_slice(&header[..IN_HEADER_LEN]);
            req_buf.extend_from_slice(&header[OP_IN_OFFSET..OP_IN_OFFSET + op_len]);
            req_buf.extend_from_slice(payload);
            let total = req_buf.len() as u32;
            req_buf[0..4].copy_from_slice(&total.to_ne_bytes());
            commit_id
        };
        stats.ring_requests.fetch_add(1, Ordering::Relaxed);
        *slot.state.lock() = SlotState::Awaiting;
        let reply = crate::reply::ReplySender::Ring(RingReply(slot.clone()));
        let mut destroy = false;
        match RequestWithSender::with_reply(ch.sender(), reply, &req_buf) {
            Some(req) => {
                if let Ok(Operation::Destroy(_)) = req.request.operation() {
                    req.reply::<ReplyEmpty>().ok();
                    destroy = true;
                } else {
                    req.dispatch(&se);
                }
            }
            None => {
                error!("io_uring queue {qid}: cannot parse a request; answering EIO");
                let unique = u64::from_ne_bytes(req_buf[8..16].try_into().expect("8 bytes"));
                let hdr = crate::ll::fuse_abi::fuse_out_header {
                    len: OUT_HEADER_LEN as u32,
                    error: -libc::EIO,
                    unique,
                };
                let _ = RingReply(slot.clone())
                    .send(&[IoSlice::new(zerocopy::IntoBytes::as_bytes(&hdr))]);
            }
        }
        {
            let mut state = slot.state.lock();
            while *state != SlotState::Replied {
                slot.replied.wait(&mut state);
            }
            *state = SlotState::Kernel;
        }
        last = commit_sqe(fd, qid, commit_id);
        // SAFETY: the buffers stay registered and alive (see above).
        if unsafe { ring.submission().push(&last) }.is_err() {
            return Err(io::Error::other("io_uring submission queue full"));
        }
        if destroy {
            submit_retrying(&ring, 0)?;
            return Ok(());
        }
    }
}

/// `io_uring_enter`: submit what is queued and wait for `want` completions,
/// again after a signal.
fn submit_retrying(ring: &IoUring<squeue::Entry128>, want: usize) -> io::Result<usize> {
    loop {
        match ring.submit_and_wait(want) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            r => return r,
        }
    }
}
