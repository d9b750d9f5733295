//! Run the real `cai` binary in a temporary directory.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// A temporary working directory with the shared fixtures (model, dataset) copied in.
pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    /// Run `cai args…` here.
    pub fn cai(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_cai"))
            .args(args)
            .current_dir(self.tmp.path())
            .env("CAI_QUIET", "")
            .env_remove("CAI_QUIET")
            .output()
            .expect("run cai")
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cai(args);
        assert!(
            out.status.success(),
            "cai {args:?} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Shared fixtures made once per test binary: a seeded model and a 300-galaxy dataset.
pub struct Fixtures {
    _dir: tempfile::TempDir,
    pub model: PathBuf,
    pub dataset: PathBuf,
}

/// The cai crate's directory when run: `cargo test` sets CARGO_MANIFEST_DIR for the test
/// process, and a test binary reused from another checkout through a shared target dir would
/// otherwise look in that checkout (the compile-time value is the fallback outside cargo).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("model.safetensors");
        let dataset = dir.path().join("galaxies.safetensors");
        let run = |args: &[&str]| {
            let out = Command::new(env!("CARGO_BIN_EXE_cai"))
                .args(args)
                .output()
                .expect("run cai");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "model",
            "init",
            "--seed",
            "3",
            "--out",
            &model.display().to_string(),
        ]);
        run(&[
            "synth",
            "--galaxies",
            "300",
            "--seed",
            "5",
            "--out",
            &dataset.display().to_string(),
        ]);
        Fixtures {
            _dir: dir,
            model,
            dataset,
        }
    })
}

/// 1.2 MB partitions hold 61 galaxies: the 300-galaxy fixture makes 5 partitions.
pub const SIZE: &str = "1.2MB";

/// A fresh directory with the fixture dataset partitioned into `parts/`.
pub fn partitioned() -> Dir {
    let d = Dir::new();
    d.ok(&[
        "partition",
        "--input",
        &fixtures().dataset.display().to_string(),
        "--size",
        SIZE,
        "--out",
        &d.s("parts"),
    ]);
    d
}

/// Parse a JSON file, naming it on failure.
pub fn read_json(path: PathBuf) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path:?}: {e}")))
        .unwrap()
}

/// Whether the tests run under CI (`CI=true`), where a missing tool fails a test.
pub(crate) fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Say why a test cannot run here (`what` is missing) and return; under CI, fail instead:
/// `.ci/run` installs every tool the tests need, so nothing passes there by skipping.
pub(crate) fn unavailable(test: &str, what: &str) {
    assert!(
        !under_ci(),
        "CI is set but {what} is not available (.ci/run installs it), so {test} cannot run"
    );
    eprintln!("NOTE: skipping {test}: {what} is not available");
}

/// Read up to the end of an HTTP head; returns the head and any bytes read past it.
pub(crate) async fn read_head(
    s: &mut tokio::net::TcpStream,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((buf, rest));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The `Content-Length` of an HTTP head (0 when absent): for the fault proxies.
pub(crate) fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}
