//! The bpf(2) system call, as far as the sockmap engine needs it: two
//! sockhash maps, one `sk_skb` program assembled here, attaching it, and the
//! map updates per connection.
//!
//! No C toolchain, no BPF compiler and no loader library: the program is
//! sixteen instructions, written out below with the kernel's instruction
//! encoding, and the system call takes a plain `#[repr(C)]` struct per command.
//! Every `unsafe` in this module is one `syscall(SYS_bpf, ...)` on such a
//! struct, which lives on the stack for the duration of the call.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

// Commands, map and program types, attach types and helper numbers from the
// kernel's UAPI (`include/uapi/linux/bpf.h`); they never change once released.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;

const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_STREAM_VERDICT: u32 = 5;

const BPF_FUNC_GET_SOCKET_COOKIE: i32 = 46;
const BPF_FUNC_SK_REDIRECT_HASH: i32 = 72;

/// `map_fd` in a `ld_imm64` instruction's source register: the immediate is a
/// map's file descriptor, which the verifier turns into the map.
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// The verdicts of an `sk_skb` program.
const SK_DROP: i32 = 0;

/// One instruction: opcode, destination and source registers (4 bits each),
/// offset, immediate.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

// Opcodes used: class | size/op | source.
const MOV64_X: u8 = 0x07 | 0xb0 | 0x08; // BPF_ALU64 | BPF_MOV | BPF_X
const MOV64_K: u8 = 0x07 | 0xb0; // BPF_ALU64 | BPF_MOV | BPF_K
const ADD64_K: u8 = 0x07; // BPF_ALU64 | BPF_ADD | BPF_K
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const STX_DW: u8 = 0x7b; // BPF_STX | BPF_MEM | BPF_DW
const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
const JEQ_K: u8 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

/// The stream-verdict program. In C it would read:
///
/// ```c
/// int verdict(struct __sk_buff *skb) {
///     if (skb->len == 0)
///         return SK_DROP;
///     __u64 key = bpf_get_socket_cookie(skb);
///     return bpf_sk_redirect_hash(skb, &peers, &key, 0);
/// }
/// ```
///
/// `peers` maps each socket's cookie to the socket its bytes go to; flags 0
/// sends them out of that socket (egress). An empty buffer is a bare FIN: it
/// has nothing to forward, and a zero-length redirect would make the kernel's
/// send path report EPIPE on the peer; user space forwards the FIN itself,
/// once the bytes before it are through.
fn program(peers: RawFd) -> [Insn; 16] {
    [
        insn(MOV64_X, 6, 1, 0, 0),                       // r6 = skb
        insn(LDX_W, 0, 6, 0, 0),                         // r0 = skb->len (offset 0)
        insn(JEQ_K, 0, 0, 11, 0),                        // if r0 == 0 goto drop
        insn(MOV64_X, 1, 6, 0, 0),                       // r1 = skb
        insn(CALL, 0, 0, 0, BPF_FUNC_GET_SOCKET_COOKIE), // r0 = cookie
        insn(STX_DW, 10, 0, -8, 0),                      // *(u64 *)(fp - 8) = r0
        insn(LD_IMM64, 2, BPF_PSEUDO_MAP_FD, 0, peers),  // r2 = &peers
        insn(0, 0, 0, 0, 0),                             //   (second half of ld_imm64)
        insn(MOV64_X, 1, 6, 0, 0),                       // r1 = skb
        insn(MOV64_X, 3, 10, 0, 0),                      // r3 = fp
        insn(ADD64_K, 3, 0, 0, -8),                      // r3 = &key
        insn(MOV64_K, 4, 0, 0, 0),                       // r4 = 0 (egress)
        insn(CALL, 0, 0, 0, BPF_FUNC_SK_REDIRECT_HASH),  // r0 = verdict
        insn(EXIT, 0, 0, 0, 0),                          // return r0
        insn(MOV64_K, 0, 0, 0, SK_DROP),                 // drop: r0 = SK_DROP
        insn(EXIT, 0, 0, 0, 0),                          // return r0
    ]
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is the `#[repr(C)]` attribute struct for `cmd`, valid and
    // exclusively ours for the call; every pointer inside it points to memory
    // that outlives the call (the callers keep it on their stack). The kernel
    // reads `size_of::<T>()` bytes and treats anything past them as zero.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// A new file descriptor the kernel returned.
fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the bpf(2) call just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn name(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let n = s.len().min(15);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

/// A sockhash map keyed by a u64 socket cookie, its values sockets.
pub(super) struct SockHash(OwnedFd);

impl SockHash {
    pub(super) fn new(label: &str, max_entries: u32) -> io::Result<SockHash> {
        let mut attr = MapCreate {
            map_type: BPF_MAP_TYPE_SOCKHASH,
            key_size: 8,
            value_size: 8,
            max_entries,
            map_name: name(label),
            ..MapCreate::default()
        };
        bpf(BPF_MAP_CREATE, &mut attr).and_then(owned).map(SockHash)
    }

    /// Puts socket `fd` under `key`. Fails with `EOPNOTSUPP` for a socket that
    /// is not established (one that received a FIN, say), `E2BIG` when the map
    /// is full.
    pub(super) fn insert(&self, key: u64, fd: RawFd) -> io::Result<()> {
        let value = fd as u64;
        let mut attr = MapElem {
            map_fd: self.0.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            value: &value as *const u64 as u64,
            ..MapElem::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(drop)
    }

    /// Removes `key`; a key that is not there is no error.
    pub(super) fn remove(&self, key: u64) -> io::Result<()> {
        let mut attr = MapElem {
            map_fd: self.0.as_raw_fd() as u32,
            key: &key as *const u64 as u64,
            ..MapElem::default()
        };
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r.map(drop),
        }
    }
}

/// Why the program did not load: the error, and the verifier's log.
pub(super) struct LoadError {
    pub(super) error: io::Error,
    pub(super) log: String,
}

/// Loads the verdict program that redirects by `peers` and attaches it as the
/// stream verdict of `joined`: every socket put into `joined` has its received
/// bytes redirected from then on.
pub(super) fn load_and_attach(
    peers: &SockHash,
    joined: &SockHash,
) -> Result<OwnedFd, (&'static str, LoadError)> {
    let insns = program(peers.0.as_raw_fd());
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 4096];
    let mut attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_SKB,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: name("sniroute_relay"),
        ..ProgLoad::default()
    };
    let prog = match bpf(BPF_PROG_LOAD, &mut attr).and_then(owned) {
        Ok(prog) => prog,
        Err(error) => {
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let log = String::from_utf8_lossy(&log[..end]).trim().to_owned();
            return Err(("loading the sk_skb program", LoadError { error, log }));
        }
    };
    let mut attr = ProgAttach {
        target_fd: joined.0.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_SK_SKB_STREAM_VERDICT,
        ..ProgAttach::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr).map_err(|error| {
        (
            "attaching the program as stream verdict",
            LoadError {
                error,
                log: String::new(),
            },
        )
    })?;
    Ok(prog)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instructions_are_eight_bytes_and_jumps_land_on_the_drop_branch() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        let p = program(3);
        // The jump at index 2 skips 11 instructions: to index 14, `r0 = SK_DROP`.
        assert_eq!(p[2].code, JEQ_K);
        let target = 2 + 1 + p[2].off as usize;
        assert_eq!(p[target].code, MOV64_K);
        assert_eq!(p[target].imm, SK_DROP);
        // Registers: dst in the low nibble, src in the high one.
        assert_eq!(p[6].regs, (BPF_PSEUDO_MAP_FD << 4) | 2);
        assert_eq!(p[6].imm, 3);
        assert_eq!(p[p.len() - 1].code, EXIT);
    }
}
