//! One run per results location: a second run is refused naming the first (engine, host,
//! pid, start time); a stale lease (a killed run's) is taken over; `--resume` right after a
//! kill on the same machine works. On local disk and on the S3 test server (moto).

use std::path::Path;

use serde_json::{json, Value};

use crate::s3::S3Server;
use crate::util::{fixtures, partitioned, Dir};

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn this_host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| std::env::var("HOSTNAME").unwrap_or_else(|_| "unknown".into()))
}

/// A lease as another run leaves it, last renewed `age_s` seconds ago.
fn lease(host: &str, pid: u32, age_s: f64) -> Value {
    let t = now() - age_s;
    json!({
        "engine": "slurm", "host": host, "pid": pid, "started_at": t - 60.0,
        "renewed_at": t, "stale_after_s": 120.0, "token": "someone-else",
    })
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The pid of a process that has exited.
fn dead_pid() -> u32 {
    let mut c = std::process::Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    pid
}

/// Refused while another run holds it, taken over once stale, freed at the end;
/// `put_lease` writes `lease.json`, `has_lease` looks for it.
fn check(
    d: &Dir,
    cai: &dyn Fn(&[&str]) -> std::process::Output,
    data: &str,
    res: &str,
    put_lease: &dyn Fn(Value),
    has_lease: &dyn Fn() -> bool,
    has_plan: &dyn Fn() -> bool,
) {
    let model = fixtures().model.display().to_string();
    let run = ["run", "--data", data, "--results", res, "--model", &model];
    put_lease(lease("node-7", 4242, 5.0));
    let out = cai(&run);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    for want in [
        "is in use by another run",
        "engine slurm on host node-7, pid 4242, started ",
        " UTC",
        "lease.json",
        "120 s after its last renewal",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert!(!has_plan(), "a refused run writes nothing");

    // Not renewed for longer than its stale time: the next run takes it over.
    put_lease(lease("node-7", 4242, 1_000.0));
    let out = cai(&run);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("took over the stale lease of engine slurm on host node-7"),
        "{err}"
    );
    assert!(!has_lease(), "released at the end");

    // A killed run on this machine: its process is gone, so `--resume` goes on at once.
    put_lease(lease(&this_host(), dead_pid(), 1.0));
    let out = cai(&["run", "--resume", "--results", res]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!has_lease());
    let _ = d;
}

#[test]
fn a_second_run_is_refused_and_a_stale_lease_taken_over_on_disk() {
    let d = partitioned();
    let res = d.path("res");
    std::fs::create_dir_all(&res).unwrap();
    let put = |v: Value| std::fs::write(res.join("lease.json"), v.to_string()).unwrap();
    let has = || res.join("lease.json").exists();
    let plan = || Path::new(&res).join("plan.json").exists();
    check(
        &d,
        &|a| d.cai(a),
        &d.s("parts"),
        &d.s("res"),
        &put,
        &has,
        &plan,
    );
}

#[test]
fn a_second_run_is_refused_and_a_stale_lease_taken_over_on_s3() {
    let Some(moto) = S3Server::moto() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI: python3 with moto[server] is required for the S3 lease test"
        );
        return;
    };
    let d = partitioned();
    moto.py("s3.create_bucket(Bucket='lease')", &[]);
    let cai = |args: &[&str]| {
        moto.command(env!("CARGO_BIN_EXE_cai"))
            .args(args)
            .current_dir(d.tmp.path())
            .output()
            .expect("run cai")
    };
    // The data goes up as it is.
    let out = cai(&[
        "partition",
        "--input",
        &fixtures().dataset.display().to_string(),
        "--size",
        crate::util::SIZE,
        "--out",
        "s3://lease/parts",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let put = |v: Value| {
        moto.py(
            "s3.put_object(Bucket='lease', Key='res/lease.json', Body=sys.argv[1].encode())",
            &[&v.to_string()],
        );
    };
    let exists = |key: &str| {
        moto.py(
            "r = s3.list_objects_v2(Bucket='lease', Prefix=sys.argv[1])\nprint(r.get('KeyCount', 0))",
            &[key],
        )
        .trim()
            != "0"
    };
    check(
        &d,
        &cai,
        "s3://lease/parts",
        "s3://lease/res",
        &put,
        &|| exists("res/lease.json"),
        &|| exists("res/plan.json"),
    );
}
