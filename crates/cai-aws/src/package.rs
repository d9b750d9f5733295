//! The Lambda deployment zip for `provided.al2023`: one executable named `bootstrap`.
//!
//! Lambda's `provided.al2023` image has glibc 2.34 and little else, so a binary built on a
//! newer distribution may not start there. [`check_binary`] reads the ELF file and refuses
//! one for the wrong CPU, one that needs a glibc symbol version newer than 2.34, or one that
//! links a library the image lacks; a static binary (musl) always passes. The zip is
//! deterministic (fixed timestamps), so the same binary gives the same zip and the same
//! SHA-256, which names it in S3 and lets a re-deploy skip an unchanged upload.

use std::io::Write;
use std::path::{Path, PathBuf};

use goblin::elf::header::{EM_AARCH64, EM_X86_64};
use goblin::elf::Elf;
use sha2::{Digest, Sha256};

use cai_core::cost::Arch;

use crate::{Error, Result};

/// The newest glibc on `provided.al2023`.
pub const AL2023_GLIBC: (u32, u32) = (2, 34);

/// Shared libraries `provided.al2023` has (glibc's own and libgcc's).
pub const AL2023_LIBRARIES: [&str; 9] = [
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "libpthread.so.0",
    "libdl.so.2",
    "librt.so.1",
    "libutil.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
];

/// Lambda's limit on a function's unzipped code.
pub const MAX_UNZIPPED_BYTES: u64 = 250 * 1024 * 1024;

/// How a binary is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// No interpreter and no shared libraries: runs anywhere with the right CPU.
    Static,
    /// Dynamically linked against glibc.
    Dynamic {
        /// The program interpreter (`/lib64/ld-linux-x86-64.so.2`).
        interpreter: String,
        /// Shared libraries it needs.
        libraries: Vec<String>,
        /// The newest `GLIBC_x.y` symbol version it needs.
        max_glibc: Option<(u32, u32)>,
    },
}

/// What [`check_binary`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryInfo {
    /// The CPU it is built for.
    pub arch: Arch,
    /// How it is linked.
    pub linkage: Linkage,
    /// Size in bytes.
    pub bytes: u64,
    /// Whether it still carries debug sections (the `lambda` profile strips them).
    pub has_debug_info: bool,
}

impl BinaryInfo {
    /// One line for people: `x86_64, dynamic (glibc ≤ 2.34), 21.3 MB`.
    pub fn describe(&self) -> String {
        let link = match &self.linkage {
            Linkage::Static => "static".to_string(),
            Linkage::Dynamic { max_glibc, .. } => match max_glibc {
                Some((a, b)) => format!("dynamic, needs glibc {a}.{b}"),
                None => "dynamic".to_string(),
            },
        };
        format!(
            "{}, {link}, {:.1} MB{}",
            self.arch.lambda_name(),
            self.bytes as f64 / 1e6,
            if self.has_debug_info {
                ", with debug info"
            } else {
                ""
            }
        )
    }
}

/// A written deployment zip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Where it was written.
    pub path: PathBuf,
    /// The binary inside, as checked.
    pub binary: BinaryInfo,
    /// Size of the zip in bytes.
    pub zip_bytes: u64,
    /// SHA-256 of the zip, hex.
    pub sha256: String,
}

impl Package {
    /// The S3 key name for this zip: `cai-lambda-<arch>-<first 16 hex of sha256>.zip`.
    pub fn key_name(&self) -> String {
        format!(
            "cai-lambda-{}-{}.zip",
            self.binary.arch.lambda_name(),
            &self.sha256[..16]
        )
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::Binary {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Parse `GLIBC_2.34` into `(2, 34)`.
fn glibc_version(name: &str) -> Option<(u32, u32)> {
    let v = name.strip_prefix("GLIBC_")?;
    let mut it = v.split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next().map_or(Some(0), |m| m.parse().ok())?;
    Some((major, minor))
}

/// Check that `bytes` (the file at `path`) is an ELF executable for `arch` that can run on
/// `provided.al2023`; describe it.
pub fn check_binary(path: &Path, bytes: &[u8], arch: Arch) -> Result<BinaryInfo> {
    let elf = Elf::parse(bytes).map_err(|e| bad(path, format!("not an ELF executable ({e})")))?;
    let found = match elf.header.e_machine {
        EM_X86_64 => Arch::X86_64,
        EM_AARCH64 => Arch::Arm64,
        m => {
            return Err(bad(
                path,
                format!("built for ELF machine {m}, not x86_64 or arm64"),
            ))
        }
    };
    if found != arch {
        return Err(bad(
            path,
            format!(
                "built for {}, but the package is for {} (build for the other target: scripts/aws/build.sh {})",
                found.lambda_name(),
                arch.lambda_name(),
                arch.lambda_name()
            ),
        ));
    }
    if !elf.is_64 || elf.entry == 0 {
        return Err(bad(path, "not a 64-bit executable"));
    }
    let libraries: Vec<String> = elf.libraries.iter().map(|s| s.to_string()).collect();
    let linkage = match elf.interpreter {
        None if libraries.is_empty() => Linkage::Static,
        interp => {
            let missing: Vec<&String> = libraries
                .iter()
                .filter(|l| !AL2023_LIBRARIES.contains(&l.as_str()))
                .collect();
            if !missing.is_empty() {
                return Err(bad(
                    path,
                    format!(
                        "links {missing:?}, which provided.al2023 does not have (build static, e.g. --target {}-unknown-linux-musl)",
                        if arch == Arch::X86_64 { "x86_64" } else { "aarch64" }
                    ),
                ));
            }
            let mut max_glibc = None;
            if let Some(verneed) = &elf.verneed {
                for need in verneed.iter() {
                    for aux in need.iter() {
                        let name = elf.dynstrtab.get_at(aux.vna_name).unwrap_or("");
                        if let Some(v) = glibc_version(name) {
                            max_glibc = max_glibc.max(Some(v));
                        }
                    }
                }
            }
            if let Some(v) = max_glibc {
                if v > AL2023_GLIBC {
                    return Err(bad(
                        path,
                        format!(
                            "needs glibc {}.{}, but provided.al2023 has {}.{} (build on an older system, or static with musl)",
                            v.0, v.1, AL2023_GLIBC.0, AL2023_GLIBC.1
                        ),
                    ));
                }
            }
            Linkage::Dynamic {
                interpreter: interp.unwrap_or("").to_string(),
                libraries,
                max_glibc,
            }
        }
    };
    let has_debug_info = elf.section_headers.iter().any(|s| {
        elf.shdr_strtab
            .get_at(s.sh_name)
            .is_some_and(|n| n.starts_with(".debug_info"))
    });
    let info = BinaryInfo {
        arch,
        linkage,
        bytes: bytes.len() as u64,
        has_debug_info,
    };
    if info.bytes > MAX_UNZIPPED_BYTES {
        return Err(bad(
            path,
            format!(
                "is {:.0} MB; Lambda takes at most 250 MB unzipped (build with --profile lambda, which strips it)",
                info.bytes as f64 / 1e6
            ),
        ));
    }
    Ok(info)
}

/// Check `binary` for `arch` and write the deployment zip to `out` (atomically: a temporary
/// file beside it, renamed when complete).
pub fn package(binary: &Path, arch: Arch, out: &Path) -> Result<Package> {
    let io = |path: &Path, source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let bytes = std::fs::read(binary).map_err(|e| io(binary, e))?;
    let info = check_binary(binary, &bytes, arch)?;

    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(|e| io(dir, e))?;
    let zip_err = |source| Error::Zip {
        path: out.display().to_string(),
        source,
    };
    let mut zip = zip::ZipWriter::new(tmp.as_file());
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(9))
        .unix_permissions(0o755)
        .last_modified_time(zip::DateTime::default())
        .large_file(false);
    zip.start_file("bootstrap", options).map_err(zip_err)?;
    zip.write_all(&bytes).map_err(|e| io(out, e))?;
    zip.finish().map_err(zip_err)?;

    let written = std::fs::read(tmp.path()).map_err(|e| io(tmp.path(), e))?;
    let sha256 = hex::encode(Sha256::digest(&written));
    tmp.persist(out).map_err(|e| io(out, e.error))?;
    // NamedTempFile makes 0600 files; a deployment zip is an ordinary file to share.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(out, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| io(out, e))?;
    }
    Ok(Package {
        path: out.to_path_buf(),
        binary: info,
        zip_bytes: written.len() as u64,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glibc_versions_parse() {
        assert_eq!(glibc_version("GLIBC_2.34"), Some((2, 34)));
        assert_eq!(glibc_version("GLIBC_2.2.5"), Some((2, 2)));
        assert_eq!(glibc_version("GLIBC_PRIVATE"), None);
        assert_eq!(glibc_version("GCC_3.0"), None);
    }

    #[test]
    fn garbage_is_not_a_binary() {
        let e = check_binary(Path::new("x"), b"#!/bin/sh\necho hi\n", Arch::X86_64)
            .expect_err("a script is not an ELF binary");
        assert!(e.to_string().contains("not an ELF"), "{e}");
    }

    /// The test binary itself: an ELF for this machine's CPU, refused for the other one.
    #[test]
    fn this_test_binary_is_checked() {
        let exe = std::env::current_exe().expect("current exe");
        let bytes = std::fs::read(&exe).expect("read exe");
        let (mine, other) = if cfg!(target_arch = "aarch64") {
            (Arch::Arm64, Arch::X86_64)
        } else {
            (Arch::X86_64, Arch::Arm64)
        };
        let e = check_binary(&exe, &bytes, other).expect_err("wrong arch");
        assert!(e.to_string().contains("built for"), "{e}");
        // Whether it passes the glibc check depends on the build machine; either way the
        // answer names the reason.
        match check_binary(&exe, &bytes, mine) {
            Ok(info) => assert_eq!(info.arch, mine),
            Err(e) => assert!(e.to_string().contains("glibc"), "{e}"),
        }
    }

    #[test]
    fn zip_holds_an_executable_bootstrap_and_is_deterministic() {
        let exe = std::env::current_exe().expect("current exe");
        let bytes = std::fs::read(&exe).expect("read exe");
        let arch = if cfg!(target_arch = "aarch64") {
            Arch::Arm64
        } else {
            Arch::X86_64
        };
        if check_binary(&exe, &bytes, arch).is_err() {
            eprintln!("skipped: this machine's glibc is newer than al2023's");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let a = package(&exe, arch, &dir.path().join("a.zip")).expect("package a");
        let b = package(&exe, arch, &dir.path().join("b.zip")).expect("package b");
        assert_eq!(a.sha256, b.sha256);
        assert!(a.key_name().starts_with("cai-lambda-"));
        let f = std::fs::File::open(&a.path).expect("open zip");
        let mut z = zip::ZipArchive::new(f).expect("read zip");
        assert_eq!(z.len(), 1);
        let entry = z.by_name("bootstrap").expect("bootstrap entry");
        assert_eq!(entry.unix_mode().map(|m| m & 0o777), Some(0o755));
        assert_eq!(entry.size(), bytes.len() as u64);
    }
}
