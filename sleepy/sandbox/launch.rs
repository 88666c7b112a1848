//! sleepy's step launcher, the first program inside bubblewrap: it lowers the step's resource limits, drops to the
//! leased uid with no capabilities (when given one, as root), sets no_new_privs, then execs the step. One exec where
//! util-linux's `setpriv` and `prlimit` took two (sleepy/sandbox/launcher.py builds it; BENCHMARKS.md measures it).
//!
//! usage: launch [--uid=N] [--as=BYTES] [--cpu=SECONDS] [--fsize=BYTES] [--core=BYTES] [--nproc=N] -- PROGRAM ARGS...
//! Any failure ends it with status 127 and one line on stderr, before the step starts.
use std::ffi::CString;
use std::os::raw::{c_char, c_int, c_ulong};

extern "C" {
    fn setrlimit(resource: c_int, rlim: *const [u64; 2]) -> c_int;
    fn setgroups(size: usize, list: *const u32) -> c_int;
    fn setresgid(r: u32, e: u32, s: u32) -> c_int;
    fn setresuid(r: u32, e: u32, s: u32) -> c_int;
    fn prctl(option: c_int, a2: c_ulong, a3: c_ulong, a4: c_ulong, a5: c_ulong) -> c_int;
    fn capset(header: *mut [u32; 2], data: *const [u32; 6]) -> c_int;
    fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int;
}

const RLIMIT_CPU: c_int = 0;
const RLIMIT_FSIZE: c_int = 1;
const RLIMIT_CORE: c_int = 4;
const RLIMIT_NPROC: c_int = 6;
const RLIMIT_AS: c_int = 9;
const PR_CAPBSET_DROP: c_int = 24;
const PR_SET_NO_NEW_PRIVS: c_int = 38;

fn fail(what: &str) -> ! {
    eprintln!("sleepy launch: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(127)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let split = args.iter().position(|a| a == "--").unwrap_or_else(|| fail("no -- before the program"));
    let mut uid: Option<u32> = None;
    for opt in &args[..split] {
        let (key, value) = opt.split_once('=').unwrap_or_else(|| fail("an option without a value"));
        let n: u64 = value.parse().unwrap_or_else(|_| fail("a value that is not a number"));
        let resource = match key {
            "--uid" => { uid = Some(n as u32); continue; }
            "--as" => RLIMIT_AS,
            "--cpu" => RLIMIT_CPU,
            "--fsize" => RLIMIT_FSIZE,
            "--core" => RLIMIT_CORE,
            "--nproc" => RLIMIT_NPROC,
            _ => fail("an unknown option"),
        };
        if unsafe { setrlimit(resource, &[n, n]) } != 0 { fail(key) }
    }
    if let Some(uid) = uid {
        let mut cap = 0;
        while unsafe { prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) } == 0 { cap += 1 }  // every cap the kernel knows
        if cap < 32 { fail("dropping the bounding set") }
        unsafe {
            if setgroups(0, std::ptr::null()) != 0 { fail("setgroups") }
            if setresgid(uid, uid, uid) != 0 { fail("setresgid") }
            if setresuid(uid, uid, uid) != 0 { fail("setresuid") }
            let mut header = [0x2008_0522u32, 0];  // _LINUX_CAPABILITY_VERSION_3, this process
            if capset(&mut header, &[0; 6]) != 0 { fail("capset") }  // effective, permitted, inheritable: none
        }
    }
    if unsafe { prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 { fail("no_new_privs") }
    let argv: Vec<CString> = args[split + 1..].iter().map(|a| CString::new(a.as_str()).unwrap()).collect();
    if argv.is_empty() { fail("no program") }
    let mut ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    unsafe { execvp(ptrs[0], ptrs.as_ptr()) };
    fail(&args[split + 1])
}
