//! rsrun-pause: PID 1 of a pod's PID namespace (Kubernetes' shareProcessNamespace shows it as
//! the pod's first process). It holds the namespace open, reaps the orphans reparented to it,
//! and exits 0 on SIGTERM or SIGINT. Freestanding (x86_64 Linux system calls only): a few KiB,
//! no libc in the pod's sandbox rootfs.
#![no_std]
#![no_main]

use core::arch::asm;

const SYS_RT_SIGACTION: usize = 13;
const SYS_RT_SIGPROCMASK: usize = 14;
const SYS_WAIT4: usize = 61;
const SYS_RT_SIGTIMEDWAIT: usize = 128;
const SYS_EXIT_GROUP: usize = 231;

const SIGINT: usize = 2;
const SIGTERM: usize = 15;
const SIGCHLD: usize = 17;
const SIG_BLOCK: usize = 0;
const WNOHANG: usize = 1;

/// The kernel's struct sigaction (x86_64).
#[repr(C)]
struct SigAction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// A raw system call with up to four arguments.
///
/// # Safety
/// The caller passes arguments valid for system call `n` (pointers to live memory of the
/// right size).
unsafe fn syscall4(n: usize, a1: usize, a2: usize, a3: usize, a4: usize) -> isize {
    let ret: isize;
    // SAFETY: the x86_64 Linux system call convention; rcx and r11 are clobbered by the
    // instruction, memory is only touched through the arguments the caller vouches for.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => ret, in("rdi") a1, in("rsi") a2,
             in("rdx") a3, in("r10") a4, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

fn exit(code: usize) -> ! {
    loop {
        // SAFETY: exit_group takes an integer and does not return.
        unsafe { syscall4(SYS_EXIT_GROUP, code, 0, 0, 0) };
    }
}

extern "C" fn ignore(_sig: i32) {}

#[no_mangle]
pub extern "C" fn _start() -> ! {
    // The init of a PID namespace gets only the signals it has a handler for: install one
    // (it never runs: the signals stay blocked and are taken with sigtimedwait).
    let set: u64 = (1 << (SIGINT - 1)) | (1 << (SIGTERM - 1)) | (1 << (SIGCHLD - 1));
    for sig in [SIGINT, SIGTERM, SIGCHLD] {
        let act = SigAction {
            handler: ignore as extern "C" fn(i32) as usize,
            flags: 0,
            restorer: 0,
            mask: set,
        };
        // SAFETY: `act` outlives the call; no old action is asked for; 8 is sizeof(sigset_t).
        unsafe { syscall4(SYS_RT_SIGACTION, sig, &act as *const _ as usize, 0, 8) };
    }
    // SAFETY: `set` outlives the call; 8 is the kernel's sigset size.
    unsafe {
        syscall4(
            SYS_RT_SIGPROCMASK,
            SIG_BLOCK,
            &set as *const _ as usize,
            0,
            8,
        )
    };
    loop {
        // SAFETY: `set` outlives the call; no siginfo, no timeout.
        let sig = unsafe { syscall4(SYS_RT_SIGTIMEDWAIT, &set as *const _ as usize, 0, 0, 8) };
        match sig as usize {
            SIGINT | SIGTERM => exit(0),
            SIGCHLD => loop {
                // SAFETY: no status or rusage pointers.
                let r = unsafe { syscall4(SYS_WAIT4, usize::MAX, 0, WNOHANG, 0) };
                if r <= 0 {
                    break;
                }
            },
            _ => {}
        }
    }
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    exit(2)
}
