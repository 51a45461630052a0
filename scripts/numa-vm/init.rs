//! `/init` of the emulated-NUMA guest (`scripts/numa-vm.sh`).
//!
//! Compiled by the script with plain `rustc` as a static binary (it needs
//! nothing but std and three libc calls), it mounts `/proc`, `/sys` and
//! `/dev`, runs every command listed in `/guest/commands` (one per line:
//! a program and its arguments, separated by spaces) with the kernel's
//! environment (the script passes `NODEREP_NUMA_GUEST=/guest/expect` on
//! the kernel command line, which selects the guest tests), prints one
//! `NODEREP-GUEST-RESULT:` line, and reports the overall status to qemu
//! through the `isa-debug-exit` device (port 0xf4: qemu exits with
//! `(status << 1) | 1`). The serial console is drained before that write,
//! or its last lines would be lost.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::process::Command;
use std::time::{Duration, Instant};

extern "C" {
    fn mount(
        source: *const std::ffi::c_char,
        target: *const std::ffi::c_char,
        fstype: *const std::ffi::c_char,
        flags: std::ffi::c_ulong,
        data: *const std::ffi::c_void,
    ) -> std::ffi::c_int;
    fn tcdrain(fd: std::ffi::c_int) -> std::ffi::c_int;
    fn sync();
}

fn mount_fs(fstype: &str, target: &str) {
    let _ = std::fs::create_dir_all(target);
    let (src, dst, ty) = (
        CString::new(fstype).unwrap(),
        CString::new(target).unwrap(),
        CString::new(fstype).unwrap(),
    );
    // SAFETY: all three strings are valid NUL-terminated C strings that
    // outlive the call; no mount data is passed.
    let rc = unsafe { mount(src.as_ptr(), dst.as_ptr(), ty.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        println!(
            "guest init: mounting {fstype} on {target} failed: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Drains the console, then asks qemu to exit with `status`.
fn exit_vm(status: u8) -> ! {
    let _ = std::io::stdout().flush();
    // SAFETY: tcdrain on fds 1 and 2 only waits for their output queues;
    // sync has no arguments.
    unsafe {
        tcdrain(1);
        tcdrain(2);
        sync();
    }
    std::thread::sleep(Duration::from_millis(300));
    if let Ok(mut port) = OpenOptions::new().write(true).open("/dev/port") {
        let _ = port.seek(SeekFrom::Start(0xf4));
        let _ = port.write_all(&[status]);
    }
    // Without the debug-exit device the kernel panics when init returns
    // and `panic=-1` with `-no-reboot` ends qemu.
    println!("guest init: isa-debug-exit did not stop the machine");
    std::process::exit(i32::from(status));
}

fn main() {
    mount_fs("proc", "/proc");
    mount_fs("sysfs", "/sys");
    mount_fs("devtmpfs", "/dev");
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    println!(
        "guest init: the kernel booted in {} s (guest clock)",
        uptime.split_whitespace().next().unwrap_or("?")
    );
    let commands = std::fs::read_to_string("/guest/commands").unwrap_or_default();
    let mut failed = Vec::new();
    let mut ran = 0;
    for line in commands.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut words = line.split_whitespace();
        let program = words.next().unwrap_or_default();
        println!("\n=== guest: {line}");
        let start = Instant::now();
        let status = Command::new(program)
            .args(words)
            .env("RUST_BACKTRACE", "1")
            .status();
        ran += 1;
        match status {
            Ok(s) if s.success() => {
                println!(
                    "=== guest: ok ({:.1} s): {line}",
                    start.elapsed().as_secs_f64()
                )
            }
            Ok(s) => {
                println!("=== guest: FAILED ({s}): {line}");
                failed.push(line.to_string());
            }
            Err(e) => {
                println!("=== guest: cannot run {program}: {e}");
                failed.push(line.to_string());
            }
        }
    }
    if ran == 0 {
        println!("guest init: /guest/commands lists nothing to run");
        failed.push("(nothing to run)".into());
    }
    if failed.is_empty() {
        println!("NODEREP-GUEST-RESULT: ok ({ran} commands)");
        exit_vm(0);
    }
    println!("NODEREP-GUEST-RESULT: FAILED: {}", failed.join(" | "));
    exit_vm(1);
}
