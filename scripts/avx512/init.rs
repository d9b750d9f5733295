//! /init for the Bochs guest of scripts/test-avx512.sh (built with
//! `rustc --target x86_64-unknown-linux-musl`, so it is static and needs no crates).
//! Mounts /proc, /sys and /dev, runs /test with the kernel command line's words after
//! `-- CAI-ARGS` (which the kernel hands to init as argv; leading `CAI_NAME=value` words
//! become /test's environment instead), prints `CAI-AVX512-EXIT <code>` on the console,
//! and powers the guest off. It never returns: if /init exits, the kernel panics.
use std::process::Command;

extern "C" {
    fn mount(
        src: *const u8,
        target: *const u8,
        fstype: *const u8,
        flags: u64,
        data: *const u8,
    ) -> i32;
    fn reboot(cmd: i32) -> i32;
    fn sync();
    fn tcdrain(fd: i32) -> i32;
}

fn mnt(fstype: &str, target: &str) {
    let t = format!("{target}\0");
    let f = format!("{fstype}\0");
    let _ = std::fs::create_dir_all(target);
    // SAFETY: NUL-terminated strings that outlive the call.
    unsafe { mount(f.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
}

fn main() {
    mnt("proc", "/proc");
    mnt("sysfs", "/sys");
    mnt("devtmpfs", "/dev");
    // The kernel also hands init the boot options it does not know (no5lvl, say): only the
    // words after the script's CAI-ARGS marker are the program's.
    let all: Vec<String> = std::env::args().skip(1).collect();
    let mut args: Vec<String> = match all.iter().position(|a| a == "CAI-ARGS") {
        Some(i) => all[i + 1..].to_vec(),
        None => all,
    };
    let vars = args
        .iter()
        .take_while(|a| a.starts_with("CAI_") && a.contains('='))
        .count();
    let env: Vec<(String, String)> = args
        .drain(..vars)
        .filter_map(|a| a.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    println!("CAI-AVX512-START /test {}", args.join(" "));
    let code = match Command::new("/test")
        .args(&args)
        .env_clear()
        .envs(env)
        .env("PATH", "/")
        .env("HOME", "/tmp")
        .env("TMPDIR", "/tmp")
        .env("RUST_BACKTRACE", "1")
        .env("RUST_TEST_THREADS", "1")
        .status()
    {
        Ok(s) => match s.code() {
            Some(c) => c,
            None => {
                use std::os::unix::process::ExitStatusExt;
                128 + s.signal().unwrap_or(0)
            }
        },
        Err(e) => {
            println!("init: cannot run /test: {e}");
            127
        }
    };
    println!("CAI-AVX512-EXIT {code}");
    // Power-off does not wait for the serial port to drain, so wait here (tcdrain on the
    // console) or the last lines are lost.
    // SAFETY: plain libc calls; LINUX_REBOOT_CMD_POWER_OFF.
    unsafe {
        tcdrain(1);
        sync();
        reboot(0x4321_fedc_u32 as i32);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
