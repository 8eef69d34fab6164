// `rusage <log> <program> [args...]`: runs <program> as a child (fork and
// exec through std::process), waits for it with wait4(2) and appends one
// line to <log>:
//   <program> <arg1> wall_us=<> user_us=<> sys_us=<> minflt=<> majflt=<> nvcsw=<> nivcsw=<> status=<>
// then exits with the child's status. The timing-breakdown scenario uses it
// to split a script run into CPU time, page faults and waiting. Built by
// tests/xen/run with rustc alone (static musl, no crates).
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::Instant;

#[repr(C)]
#[derive(Default)]
struct Timeval {
    sec: i64,
    usec: i64,
}

#[repr(C)]
#[derive(Default)]
struct Rusage {
    utime: Timeval,
    stime: Timeval,
    maxrss: i64,
    ixrss: i64,
    idrss: i64,
    isrss: i64,
    minflt: i64,
    majflt: i64,
    nswap: i64,
    inblock: i64,
    oublock: i64,
    msgsnd: i64,
    msgrcv: i64,
    nsignals: i64,
    nvcsw: i64,
    nivcsw: i64,
}

extern "C" {
    fn wait4(pid: i32, status: *mut i32, options: i32, rusage: *mut Rusage) -> i32;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: rusage <log> <program> [args...]");
        std::process::exit(2);
    }
    let start = Instant::now();
    let child = match Command::new(&args[1]).args(&args[2..]).spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("rusage: {}: {e}", args[1]);
            std::process::exit(127);
        }
    };
    let mut status = 0i32;
    let mut usage = Rusage::default();
    // SAFETY: wait4 on our own child with valid out-pointers.
    let pid = unsafe { wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    let us = |t: &Timeval| t.sec * 1_000_000 + t.usec;
    let line = format!(
        "{} {} wall_us={} user_us={} sys_us={} minflt={} majflt={} nvcsw={} nivcsw={} status={}\n",
        args[1],
        args.get(2).map_or("-", String::as_str),
        wall.as_micros(),
        us(&usage.utime),
        us(&usage.stime),
        usage.minflt,
        usage.majflt,
        usage.nvcsw,
        usage.nivcsw,
        status
    );
    if let Ok(mut log) = std::fs::OpenOptions::new().append(true).create(true).open(&args[0]) {
        let _ = log.write_all(line.as_bytes());
    }
    let code = if pid < 0 {
        1
    } else {
        let st = std::process::ExitStatus::from_raw(status);
        st.code().unwrap_or(128 + st.signal().unwrap_or(0))
    };
    std::process::exit(code);
}
